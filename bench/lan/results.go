package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type results struct {
	Started      time.Time         `json:"started"`
	Finished     time.Time         `json:"finished,omitempty"`
	Machine      map[string]string `json:"machine"`
	Config       map[string]any    `json:"config"`
	BuildSeconds float64           `json:"build_seconds"`
	Images       []*imageStat      `json:"images"`
	Runs         []measurement     `json:"runs"`
	Dev          []*devResult      `json:"dev,omitempty"`
	Targets      []targetResult    `json:"targets"`
}

type targetResult struct {
	Link     string  `json:"link"`
	Target   string  `json:"target"`
	Measured string  `json:"measured"`
	Limit    string  `json:"limit"`
	Ratio    float64 `json:"ratio"` // measured / limit: ≤ 1 passes
	Pass     bool    `json:"pass"`
}

func (res *results) find(link, sc, m string) *measurement {
	for i := range res.Runs {
		x := &res.Runs[i]
		if x.Link == link && x.Scenario == sc && x.Method == m {
			return x
		}
	}
	return nil
}

func (res *results) image(sc string) *imageStat {
	for _, s := range res.Images {
		if s.Scenario == sc {
			return s
		}
	}
	return nil
}

func (res *results) evaluate() {
	res.Targets = nil
	add := func(link, target string, measured, limit float64, ms, ls string) {
		res.Targets = append(res.Targets, targetResult{Link: link, Target: target, Measured: ms, Limit: ls, Ratio: measured / limit, Pass: measured <= limit})
	}
	for _, link := range []string{"loopback", "slow"} {
		ok := func(x *measurement) bool { return x != nil && x.Kind == "measured" }
		for _, sc := range []string{"S1", "S2"} {
			if b := res.find(link, sc, "berth"); ok(b) {
				add(link, sc+" berth bytes on the wire ≤ 64 KiB", float64(b.WireBytes), 64<<10, human(b.WireBytes), "64 KiB")
			}
		}
		if b := res.find(link, "S3", "berth"); ok(b) {
			if im := res.image("S3"); im != nil && im.Change != nil {
				lim := 1.5 * float64(im.Change.Total)
				add(link, "S3 berth bytes ≤ 1.5 × (zstd new contents + zstd changed headers)", float64(b.WireBytes), lim,
					human(b.WireBytes), fmt.Sprintf("%s (1.5 × %s)", human(int64(lim)), human(im.Change.Total)))
			}
		}
		if b, g := res.find(link, "S0", "berth"), res.find(link, "S0", "registry"); b != nil && g != nil && b.Kind != "estimated" && g.Kind != "estimated" {
			lim := 0.9 * float64(g.WireBytes)
			add(link, "S0 berth bytes ≤ 0.9 × registry bytes", float64(b.WireBytes), lim, human(b.WireBytes), fmt.Sprintf("%s (0.9 × %s)", human(int64(lim)), human(g.WireBytes)))
		}
		// Issue 14's time targets: registry = push + pull + start + healthy.
		frac := map[string]float64{"S0": 1, "S1": 1, "S2": 0.6, "S3": 0.6}
		if link == "slow" {
			frac["S2"], frac["S3"] = 0.25, 0.25
		}
		for _, sc := range scenarioNames {
			b, g := res.find(link, sc, "berth"), res.find(link, sc, "registry")
			if ok(b) && ok(g) {
				lim := g.Seconds * frac[sc]
				add(link, fmt.Sprintf("%s berth time ≤ %g × registry", sc, frac[sc]), b.Seconds, lim,
					fmt.Sprintf("%.1f s", b.Seconds), fmt.Sprintf("%.1f s (%g × %.1f s)", lim, frac[sc], g.Seconds))
			}
		}
	}
}

func writeResults(cfg *config, res *results) error {
	res.evaluate()
	stamp := res.Started.Format("2006-01-02-1504")
	if err := os.MkdirAll(cfg.outDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	jp := filepath.Join(cfg.outDir, "results-"+stamp+".json")
	if err := os.WriteFile(jp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	md := report(cfg, res)
	mp := filepath.Join(cfg.outDir, "results-"+stamp+".md")
	if err := os.WriteFile(mp, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	logf("wrote %s and %s", jp, mp)
	return nil
}

func secs(x *measurement) string {
	if x == nil {
		return "—"
	}
	switch x.Kind {
	case "measured":
		return fmt.Sprintf("%.1f", x.Seconds)
	default:
		return fmt.Sprintf("≥ %.0f (est.)", x.EstSeconds)
	}
}

func bytesCell(x *measurement) string {
	if x == nil {
		return "—"
	}
	s := fmt.Sprintf("%s (%d)", human(x.WireBytes), x.WireBytes)
	if x.Kind == "unshaped" {
		s += " ¹"
	} else if x.Kind == "estimated" {
		s += " ²"
	}
	return s
}

func report(cfg *config, res *results) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## LAN transfer (bench/lan) — %s\n\n", res.Started.Format("2006-01-02 15:04 UTC"))
	m := res.Machine
	w("Machine: %s CPUs (%s), kernel %s, Docker %s (host storage %s; robot dockerd %s), %s, docker-registry %s, %s, tree %s.\n\n",
		m["cpus"], m["cpu"], m["kernel"], m["docker"], m["host_storage_driver"], cfg.storage, m["go"], m["docker_registry"], m["openssh"], m["tree"])

	w("### The image\n\n| Scenario | Image | Layers (uncompressed tar) | Total | What changed vs the previous image | zstd new contents + zstd changed headers | docker save: first byte / all |\n|---|---|---|---|---|---|---|\n")
	for _, im := range res.Images {
		var ls []string
		for _, l := range im.Layers {
			ls = append(ls, fmt.Sprintf("%s (%d files)", mb(l.TarBytes), l.Files))
		}
		ch := "—"
		tot := "—"
		if c := im.Change; c != nil {
			ch = fmt.Sprintf("%d new files (%s), %d changed headers (%s)", c.NewFiles, human(c.NewContentBytes), c.ChangedHeaders, human(c.ChangedHeaderBytes))
			tot = fmt.Sprintf("%s + %s = **%s**", human(c.NewContentZstd), human(c.ChangedHeaderZstd), human(c.Total))
		}
		w("| %s | %s | %s | %s | %s | %s | %.1f s / %.1f s |\n", im.Scenario, im.Tag, strings.Join(ls, " + "), mb(im.TarBytes), ch, tot, im.SaveFirstByteSeconds, im.SaveSeconds)
	}
	w("\nBuilding the four images took %.0f s.\n\n", res.BuildSeconds)

	for _, link := range cfg.links {
		title := "plain veth (\"loopback\")"
		if link == "slow" {
			title = fmt.Sprintf("veth shaped with tbf %d Mbit/s on both ends (no delay: this kernel has no netem)", cfg.rateMbit)
		}
		w("### Link: %s\n\n", title)
		w("Bytes on the wire (tx+rx at the host's veth) and end-to-end seconds.\n\n")
		w("| Scenario | berth bytes | berth s | registry bytes | registry s | save\\|gzip\\|ssh bytes | save s |\n|---|---|---|---|---|---|---|\n")
		any1, any2 := false, false
		for _, sc := range scenarioNames {
			b, g, s := res.find(link, sc, "berth"), res.find(link, sc, "registry"), res.find(link, sc, "save")
			if b == nil && g == nil && s == nil {
				continue
			}
			for _, x := range []*measurement{b, g, s} {
				if x != nil && x.Kind == "unshaped" {
					any1 = true
				}
				if x != nil && x.Kind == "estimated" {
					any2 = true
				}
			}
			w("| %s | %s | %s | %s | %s | %s | %s |\n", sc, bytesCell(b), secs(b), bytesCell(g), secs(g), bytesCell(s), secs(s))
		}
		if any1 {
			w("\n¹ run over the unshaped veth to set up the slow-link robot (bytes exact; time: the bytes at %d Mbit/s, a lower bound).", cfg.rateMbit)
		}
		if any2 {
			w("\n² not run over the slow link; bytes from the loopback run (same image, same empty robot); time: the bytes at %d Mbit/s, a lower bound.", cfg.rateMbit)
		}
		w("\n\nberth, from `berth deploy --json` (changed: uncompressed bytes of the pieces the robot lacked; sent: what berth wrote into the exchange, before SSH). The transfer streams: engine, read, send and the robot's loads overlap, so each is given as the time from the deploy's start at which it ended, except load (the robot's own time loading, ahead and at the end):\n\n")
		w("| Scenario | source | changed | sent | of which indexes / question / deltas | pieces (delta files) | layers loaded (ahead) | engine done | read done | send done | robot load | transfer done | switch + health | total |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, sc := range scenarioNames {
			x := res.find(link, sc, "berth")
			if x == nil || x.Berth == nil {
				continue
			}
			s := x.Berth
			idx, pieces := human(s.IndexBytes)+" / "+human(s.AskBytes)+" / "+human(s.DeltaBytes), fmt.Sprintf("%d (%d)", s.PiecesSent, s.DeltaFiles)
			if len(s.Progress) > 0 { // -progress: from the text summary, which has neither
				idx, pieces = "—", "—"
			}
			w("| %s | %s | %s | %s | %s | %s | %d of %d (%d) | %.1f s | %.1f s | %.1f s | %.1f s | %.1f s | %.1f s | %.1f s |\n", sc, s.Source, human(s.BytesChanged), human(s.BytesSent),
				idx, pieces, s.LayersNeeded, s.Layers, s.PartialLoads, s.SaveSeconds, s.ReadSeconds, s.SendSeconds, s.LoadSeconds, s.DoneSeconds, x.Seconds-s.DoneSeconds, x.Seconds)
		}
		w("\nBaselines: registry = `docker push` on the host through the tunnel, `docker pull` on the robot, container started and healthy; save = `docker save | gzip -%d | ssh docker load`, container started and healthy.\n\n", cfg.gzipLevel)
		w("| Scenario | registry push | pull | start+healthy | save\\|gzip\\|ssh\\|load | start+healthy |\n|---|---|---|---|---|---|\n")
		for _, sc := range scenarioNames {
			g, s := res.find(link, sc, "registry"), res.find(link, sc, "save")
			if g == nil && s == nil {
				continue
			}
			ph := func(x *measurement, k string) string {
				if x == nil || x.Kind == "estimated" {
					return "—"
				}
				if v, ok := x.Phases[k]; ok {
					return fmt.Sprintf("%.1f s", v)
				}
				return "—"
			}
			w("| %s | %s | %s | %s | %s | %s |\n", sc, ph(g, "push"), ph(g, "pull"), ph(g, "start"), ph(s, "save_gzip_ssh_load"), ph(s, "start"))
		}
		w("\n")
	}

	if len(res.Dev) > 0 {
		w("### berth dev on examples/robot\n\nFrom saving a one-line change in the sensor (a Go service) to the new release committed, healthy, on the robot; `berth dev --local-go-image` (BuildKit's or the classic builder's cache keeps the Go module and build cache layers), the robot's engine of its own behind the link. Each change's split: detect (polling every 300 ms, then 200 ms without another write), build, push (streamed), switch (stop, start, health gate, commit).\n\n")
		w("| Link | median | detect | build | push | switch | wire | all runs (s) | first build and deploy |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, d := range res.Dev {
			var all []string
			for _, r := range d.Runs {
				all = append(all, fmt.Sprintf("%.1f", r.Seconds))
			}
			m := d.Median
			w("| %s | **%.1f s** | %.1f s | %.1f s | %.1f s | %.1f s | %s | %s | %.0f s |\n", d.Link, m.Seconds, m.DetectSeconds, m.BuildSeconds, m.PushSeconds, m.SwitchSeconds, human(m.WireBytes), strings.Join(all, ", "), d.Setup)
		}
		w("\n")
	}
	w("### Targets\n\n| Link | Target | Measured | Limit | Measured / limit | |\n|---|---|---|---|---|---|\n")
	for _, t := range res.Targets {
		v := "**missed**"
		if t.Pass {
			v = "met"
		}
		w("| %s | %s | %s | %s | %.2f | %s |\n", t.Link, t.Target, t.Measured, t.Limit, t.Ratio, v)
	}
	w("\n")
	return b.String()
}
