// Command testapp is the program inside berth's test images: one static
// binary whose behaviour the Compose file picks with flags and environment,
// so tests can build every image they need FROM scratch, offline.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	check := flag.Bool("check", false, "healthcheck probe: exit 0 if /healthz answers 200")
	exit := flag.Int("exit", -1, "exit at once with this code")
	oneshot := flag.Bool("oneshot", false, "record a boot, then exit 0 (a migration job)")
	require := flag.String("require", "", "refuse to start (exit 3) unless this URL answers 200")
	lock := flag.Bool("lock", false, "hold flock on /run/berth/update.lock while /run/berth/hold exists")
	handover := flag.Duration("handover-after", -1, "create $BERTH_HANDOVER_FILE after this long")
	startDelay := flag.Duration("start-delay", 0, "wait this long before serving (healthy later)")
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM, as many real programs do: a stop takes the whole grace period")
	flag.Parse()
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	port := env("PORT", "8080")
	if *check {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Println("probe failed:", err, statusOf(resp))
			os.Exit(1)
		}
		return
	}
	if *exit >= 0 {
		fmt.Println("exiting at once with code", *exit)
		os.Exit(*exit)
	}
	record()
	if *oneshot {
		fmt.Println("one-shot job done")
		return
	}
	if *require != "" {
		resp, err := http.Get(*require)
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Println("required", *require, "is not up:", err, statusOf(resp))
			os.Exit(3)
		}
		fmt.Println("required", *require, "is up")
	}
	if *lock {
		go holdLock()
	}
	if *handover >= 0 {
		go func() {
			time.Sleep(*handover)
			if err := os.WriteFile(os.Getenv("BERTH_HANDOVER_FILE"), nil, 0o644); err != nil {
				log.Print(err)
			}
		}()
	}
	time.Sleep(*startDelay)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if os.Getenv("UNHEALTHY") != "" {
			http.Error(w, "configured unhealthy", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "version=%s\n", os.Getenv("VERSION"))
	})
	http.HandleFunc("/data", func(w http.ResponseWriter, _ *http.Request) {
		b, err := os.ReadFile(filepath.Join(os.Getenv("DATA_DIR"), "boots"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	fmt.Println("serving on", port, "version", os.Getenv("VERSION"))
	log.Fatal(http.ListenAndServe(":"+port, nil))
}

// record appends "VERSION" to $DATA_DIR/boots, so tests can see data survive.
func record() {
	dir := os.Getenv("DATA_DIR")
	if dir == "" {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, "boots"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintln(f, os.Getenv("VERSION"))
	f.Close()
}

func holdLock() {
	for {
		if _, err := os.Stat("/run/berth/hold"); err == nil {
			f, err := os.OpenFile("/run/berth/update.lock", os.O_RDWR|os.O_CREATE, 0o666)
			if err != nil {
				log.Fatal(err)
			}
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
				log.Fatal(err)
			}
			fmt.Println("holding the update lock")
			for {
				if _, err := os.Stat("/run/berth/hold"); err != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			f.Close()
			fmt.Println("released the update lock")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func statusOf(r *http.Response) string {
	if r == nil {
		return ""
	}
	return r.Status
}
