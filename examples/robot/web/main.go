// Command web is the robot's web UI: one page showing the planner's command
// and the versions running, refreshed every second.
package main

import (
	"encoding/json"
	"flag"
	"html/template"
	"log"
	"net/http"
	"os"
	"time"
)

var version = "dev" // set by -ldflags -X main.version=… from the build arg BERTH_VERSION

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1"><title>{{.Title}}</title>
<style>body{font-family:sans-serif;margin:2em} .speed{font-size:3em} .stop{color:#b00}</style></head>
<body><h1>{{.Title}}</h1>
{{if .Err}}<p class="stop">planner unreachable: {{.Err}}</p>{{else}}
<p class="speed{{if eq .Plan.SpeedMS 0.0}} stop{{end}}">{{printf "%.2f" .Plan.SpeedMS}} m/s</p>
<p>{{.Plan.Reason}} — obstacle at {{printf "%.2f" .Plan.RangeM}} m (reading #{{.Plan.Reading}})</p>{{end}}
<p><small>web {{.Version}} · planner {{.Plan.Version}} · sensor {{.Plan.SensorVersion}}</small></p>
</body></html>
`))

type plan struct {
	SpeedMS       float64 `json:"speed_m_s"`
	Reason        string  `json:"reason"`
	RangeM        float64 `json:"range_m"`
	Reading       int64   `json:"reading"`
	Version       string  `json:"version"`
	SensorVersion string  `json:"sensor_version"`
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
	planner := env("PLANNER_URL", "http://planner:8080/plan")
	title := env("ROBOT_NAME", "robot")
	c := http.Client{Timeout: time.Second}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		data := struct {
			Title, Version, Err string
			Plan                plan
		}{Title: title, Version: version}
		resp, err := c.Get(planner)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&data.Plan)
			resp.Body.Close()
		}
		if err != nil {
			data.Err = err.Error()
		}
		_ = page.Execute(w, data)
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	log.Printf("web %s: serving %s, planner at %s", version, *listen, planner)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
