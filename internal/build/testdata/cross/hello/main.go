// Command hello is the smallest program a cross build can make.
package main

func main() { println("hello") }
