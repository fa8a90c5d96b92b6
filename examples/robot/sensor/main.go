// Command sensor publishes a simulated range sensor's readings over HTTP,
// corrected by a calibration offset kept on a named volume, so that the
// calibration survives every update and rollback of the robot's software.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

var version = "dev" // set by -ldflags -X main.version=… from the build arg BERTH_VERSION

// Reading is one measurement.
type Reading struct {
	Seq     int64     `json:"seq"`
	RangeM  float64   `json:"range_m"`
	At      time.Time `json:"at"`
	Sensor  string    `json:"sensor"`
	Version string    `json:"version"`
}

type calibration struct {
	OffsetM   float64 `json:"offset_m"`
	WrittenBy string  `json:"written_by"`
}

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	check := flag.Bool("check", false, "healthcheck: exit 0 if the server on :8080 answers")
	showVersion := flag.Bool("version", false, "print the version")
	flag.Parse()
	if *showVersion {
		os.Stdout.WriteString(version + "\n")
		return
	}
	if *check {
		healthcheck()
	}
	name := env("SENSOR_NAME", "front-range")
	rate, _ := strconv.ParseFloat(env("SENSOR_RATE_HZ", "10"), 64)
	if rate <= 0 {
		rate = 10
	}
	cal := loadCalibration(env("CALIBRATION_FILE", "/data/calibration.json"))
	log.Printf("sensor %s %s: %.0f Hz, calibration offset %.3f m", name, version, rate, cal.OffsetM)

	var mu sync.Mutex
	var last Reading
	go func() {
		for seq := int64(1); ; seq++ {
			t := time.Now()
			// an obstacle that comes and goes, 0.5 to 4.5 m away
			r := 2.5 + 2*math.Sin(float64(t.UnixMilli())/3000) + cal.OffsetM
			mu.Lock()
			last = Reading{Seq: seq, RangeM: math.Round(r*1000) / 1000, At: t.UTC(), Sensor: name, Version: version}
			mu.Unlock()
			time.Sleep(time.Duration(float64(time.Second) / rate))
		}
	}()
	http.HandleFunc("/reading", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		r := last
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r)
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		ok := last.Seq > 0
		mu.Unlock()
		if !ok {
			http.Error(w, "no reading yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}

// loadCalibration reads the calibration file, writing a default one first
// when the volume is new.
func loadCalibration(path string) calibration {
	var c calibration
	b, err := os.ReadFile(path)
	if err == nil && json.Unmarshal(b, &c) == nil {
		return c
	}
	c = calibration{OffsetM: 0.05, WrittenBy: version}
	b, _ = json.MarshalIndent(c, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			log.Printf("calibration: cannot write the default: %v", err)
		}
	}
	return c
}

func healthcheck() {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://127.0.0.1:8080/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		os.Exit(1)
	}
	os.Exit(0)
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
