package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/store"
)

// BenchmarkUIOverview renders the fleet overview of 1,000 devices that
// each reported an app with two services (what one live update costs the
// server per open page, every 2 s, when something changed or not).
func BenchmarkUIOverview(b *testing.B) {
	dir := b.TempDir()
	st, err := store.Open(ctx, "", dir)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	path, err := server.Bootstrap(ctx, st, dir, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	tok, _ := os.ReadFile(path)
	f, err := st.CreateFleet(ctx, "lab", store.NewSecret("bp"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		d, err := st.CreateDevice(ctx, f.ID, fmt.Sprintf("robot-%04d", i), store.NewSecret("bd"))
		if err != nil {
			b.Fatal(err)
		}
		state, _ := json.Marshal(release.CurrentState{Agent: release.AgentInfo{Name: d.Name, Version: "v1", Arch: "arm64"},
			Apps: map[string]release.AppState{"robot": {Release: "sha256:" + strings.Repeat("a", 64), Version: "v1.4.0", Phase: release.PhaseIdle,
				Services: map[string]release.ServiceState{"nav": {State: "running", Health: "healthy"}, "db": {State: "running"}}}},
			Disk: &release.Disk{StateDirFree: 1 << 34}, Reported: time.Now()})
		if _, err := st.SetDeviceState(ctx, d.ID, state, store.AnyVersion); err != nil {
			b.Fatal(err)
		}
	}
	hs := httptest.NewServer(server.New(st, server.Options{}).Handler())
	defer hs.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(hs.URL + "/ui/login")
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(hs.URL + "/ui/login")
	var csrf string
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "berth_login" {
			csrf = ck.Value
		}
	}
	resp, err = c.PostForm(hs.URL+"/ui/login", url.Values{"token": {strings.TrimSpace(string(tok))}, "csrf": {csrf}})
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("login: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	b.ResetTimer()
	var n int64
	for b.Loop() {
		resp, err := c.Get(hs.URL + "/ui/?fleet=lab")
		if err != nil || resp.StatusCode != 200 {
			b.Fatal(err, resp.Status)
		}
		buf := make([]byte, 1<<20)
		for {
			m, err := resp.Body.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		resp.Body.Close()
	}
	b.ReportMetric(float64(n)/float64(b.N), "bytes/page")
}
