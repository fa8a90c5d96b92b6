// Command hello is berth's example app: a small web service that counts its
// visitors in a file on a named volume (so you can see data survive updates
// and rollbacks) and answers its own healthcheck (`/app -check`), which is
// how a FROM-scratch image gets a healthcheck without a shell.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	check := flag.Bool("check", false, "healthcheck: exit 0 if the server on -listen answers")
	flag.Parse()
	if *check {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1" + (*listen)[strings.LastIndex(*listen, ":"):] + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, "unhealthy:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello from berth"
	}
	counter := filepath.Join(os.Getenv("DATA_DIR"), "visits")
	var mu sync.Mutex
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		b, _ := os.ReadFile(counter)
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		n++
		err := os.WriteFile(counter, []byte(strconv.Itoa(n)), 0o644)
		mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%s! You are visitor %d. (version %s)\n", greeting, n, os.Getenv("APP_VERSION"))
	})
	log.Printf("hello serving on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
