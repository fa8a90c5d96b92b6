// Command planner follows the sensor's readings and plans the robot's speed:
// full speed when the way is clear, slowing down near an obstacle, stopped
// inside the stop distance.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"math"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

var version = "dev" // set by -ldflags -X main.version=… from the build arg BERTH_VERSION

// Plan is the planner's current command.
type Plan struct {
	SpeedMS  float64   `json:"speed_m_s"`
	Reason   string    `json:"reason"`
	RangeM   float64   `json:"range_m"`
	Reading  int64     `json:"reading"`
	At       time.Time `json:"at"`
	Version  string    `json:"version"`
	Upstream string    `json:"sensor_version"`
}

type reading struct {
	Seq     int64     `json:"seq"`
	RangeM  float64   `json:"range_m"`
	At      time.Time `json:"at"`
	Version string    `json:"version"`
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
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1:8080/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		os.Exit(0)
	}
	sensor := env("SENSOR_URL", "http://sensor:8080/reading")
	stop := number("STOP_DISTANCE_M", 0.8)
	maxSpeed := number("MAX_SPEED_M_S", 1.5)
	log.Printf("planner %s: following %s, stop at %.2f m, max %.2f m/s", version, sensor, stop, maxSpeed)

	var mu sync.Mutex
	var plan Plan
	go func() {
		c := http.Client{Timeout: time.Second}
		for ; ; time.Sleep(200 * time.Millisecond) {
			resp, err := c.Get(sensor)
			if err != nil {
				log.Printf("sensor: %v", err)
				continue
			}
			var r reading
			err = json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if err != nil {
				log.Printf("sensor: %v", err)
				continue
			}
			p := Plan{RangeM: r.RangeM, Reading: r.Seq, At: time.Now().UTC(), Version: version, Upstream: r.Version}
			switch {
			case r.RangeM <= stop:
				p.Reason = "obstacle inside the stop distance"
			case r.RangeM < 3*stop:
				p.SpeedMS, p.Reason = math.Round(maxSpeed*(r.RangeM-stop)/(2*stop)*100)/100, "slowing for an obstacle"
			default:
				p.SpeedMS, p.Reason = maxSpeed, "clear"
			}
			mu.Lock()
			plan = p
			mu.Unlock()
		}
	}()
	http.HandleFunc("/plan", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		p := plan
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p)
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		fresh := time.Since(plan.At) < 5*time.Second
		mu.Unlock()
		if !fresh {
			http.Error(w, "no fresh reading from the sensor", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func number(k string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(k), 64); err == nil {
		return v
	}
	return def
}
