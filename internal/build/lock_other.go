//go:build !unix

package build

func lockMachine(string) (func(), error) { return func() {}, nil }
