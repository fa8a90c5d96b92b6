package berthtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/berth-robotics/berth/internal/release"
)

// TestDashboard: the web dashboard in a real headless Chromium, over a
// real berth server, while a real berthd in fleet mode deploys on the real
// engine. Log in with the admin's token; watch the device appear and go
// healthy without a reload; start a rollout from the releases page and
// pause it, then abort it, from the rollout's page; see a rollback's reason
// on the device's page while its logs follow live. With
// BERTH_SCREENSHOTS=DIR it writes PNGs of the main pages there, at a
// laptop's and a phone's width (docs/screenshots comes from this).
func TestDashboard(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	b := NewBrowser(t, 1280, 900)
	srv := env.NewServer(t)
	port := FreePort(t)
	key := srv.CreateFleet(t, "lab")
	shots := os.Getenv("BERTH_SCREENSHOTS")
	shot := func(name string) {
		if shots != "" {
			b.Screenshot(t, filepath.Join(shots, name+".png"))
		}
	}

	b.Do(t, "open the server", chromedp.Navigate(srv.URL+"/"))
	if shots != "" {
		b.Do(t, "login page", chromedp.WaitVisible(chromedp.CSS("#token")))
		shot("login")
	}
	b.Do(t, "log in",
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), srv.Token),
		chromedp.Submit(chromedp.CSS("#token")),
	)
	b.Await(t, "the fleet overview", `document.querySelector(".counts") && document.querySelector("#live[data-connected]")`, 15*time.Second)
	b.Eval(t, "window.notReloaded = true")

	compose := func(version string, extra ...string) string {
		path := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, path, strings.Replace(web(port, version, extra...), "${IMG_A}", env.Images["a"], 1))
		return path
	}
	rel1 := createRelease(t, srv, compose("1"), "v1")
	if out, err := srv.Berth(t, "release", "assign", rel1, "--fleet", "lab", "--all"); err != nil {
		t.Fatal(err, out)
	}
	robot := env.NewFleetDevice(t, srv.URL, key)
	row := fmt.Sprintf(`document.querySelector('tr[data-device=%q]')`, robot.Name)
	b.Await(t, "the robot online, running its release, healthy",
		row+` && `+row+`.textContent.includes("online") && `+row+`.textContent.includes("running") && `+row+`.textContent.includes("web: healthy")`,
		2*time.Minute)
	if b.Eval(t, "window.notReloaded === true") != "true" {
		t.Fatal("the overview was reloaded; it should update in place")
	}

	// A device that registered and went quiet: a rollout's stage waits on
	// it, so the rollout is still running when the page pauses it. A
	// keyboard user on the robot's link keeps the focus there while the
	// new device's row is drawn in.
	b.Eval(t, "("+row+`.querySelector("a").focus(), true)`)
	register(t, srv, key, "robot-quiet")
	b.Await(t, "the quiet device listed", `document.querySelector('tr[data-device="robot-quiet"]')`, 15*time.Second)
	if got := b.Eval(t, `document.activeElement === `+row+`.querySelector("a")`); got != "true" {
		t.Errorf("a live update moved the keyboard focus off the robot's link, to %s", b.Eval(t, "document.activeElement.outerHTML.slice(0, 120)"))
	}
	accessible(t, b, "overview")
	shot("overview")

	rel2 := createRelease(t, srv, compose("2"), "v2")
	b.Do(t, "the releases page", chromedp.Navigate(srv.URL+"/ui/fleets/lab/releases"))
	form := fmt.Sprintf(`article[data-release=%q] form.rollout-form`, rel2)
	b.Click(t, "start a rollout of v2", form+" button")
	b.Await(t, "the rollout running", `document.querySelector('[data-status="running"]') && document.querySelector("#live[data-connected]")`, 15*time.Second)
	b.Await(t, "a stage under way", `document.querySelector(".stages li.current svg.bar")`, 15*time.Second)
	rollout := b.Eval(t, "location.pathname")
	b.Do(t, "give a reason", chromedp.SendKeys(chromedp.CSS("#pause-reason"), "looking at the canary"))
	b.Click(t, "pause it", "#pause")
	b.Await(t, "the rollout paused, and why",
		`document.querySelector('[data-status="paused"]') && document.body.innerText.includes("paused by user:admin: looking at the canary") && document.body.innerText.includes("Rollout paused")`,
		15*time.Second)
	accessible(t, b, "rollout")
	shot("rollout")
	// The canary (the robot, the one online) finishes its switch first.
	robot.Await(t, "app", 90*time.Second, "on v2", func(a release.AppState) bool { return a.FleetRelease == rel2 && a.Phase == release.PhaseIdle })
	// The reason ends in a word with no place to break, a digest: on a
	// phone it must wrap all the same (checked below).
	b.Do(t, "give a reason", chromedp.SendKeys(chromedp.CSS("#abort-reason"), "the canary's image sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"))
	b.Click(t, "abort it", "#abort")
	b.Await(t, "the rollout aborted, and why", `document.querySelector('[data-status="aborted"]') && document.body.innerText.includes("sha256:9f86d081884c")`, 15*time.Second)
	if shots != "" {
		b.Do(t, "the releases page", chromedp.Navigate(srv.URL+"/ui/fleets/lab/releases"))
		b.Await(t, "the releases", `document.querySelector("#live[data-connected]")`, 15*time.Second)
		accessible(t, b, "releases")
		shot("releases")
	}

	// An unhealthy release pinned on the robot: it rolls back, and the
	// device's page says why while the new container's lines arrive.
	robot.Await(t, "app", 90*time.Second, "back on v1", func(a release.AppState) bool { return a.FleetRelease == rel1 && a.Phase == release.PhaseIdle })
	b.Do(t, "the fleet page", chromedp.Navigate(srv.URL+"/ui/"))
	b.Click(t, "the device page", fmt.Sprintf(`tr[data-device=%q] a`, robot.Name))
	b.Await(t, "the device's services", `document.querySelector('[data-app="app"] tr[data-service="web"]') && document.querySelector("#live[data-connected]")`, 15*time.Second)
	b.Await(t, "its logs", `document.querySelector("#logs").textContent.includes("serving on")`, 30*time.Second)
	b.Eval(t, "window.notReloaded = true")
	serving := `[...document.querySelectorAll("#logs li")].filter(l => l.textContent.includes("serving on")).length`
	b.Eval(t, "window.servingBefore = "+serving)
	rel3 := createRelease(t, srv, compose("3", `      UNHEALTHY: "1"`), "v3")
	if out, err := srv.Berth(t, "device", "pin", robot.Name, "--fleet", "lab", "--release", rel3); err != nil {
		t.Fatal(err, out)
	}
	b.Await(t, "the rollback and its reason",
		`document.querySelector('[data-app="app"]').textContent.includes("rolled back") && document.querySelector('[data-app="app"] .reason').textContent.includes("unhealthy")`,
		2*time.Minute)
	// The agent's own account of it, shipped with the device's logs,
	// stays among the device's events after the state moves on.
	b.Await(t, "the agent's rollback event",
		`[...document.querySelectorAll(".events li")].some(li => li.querySelector(".kind").textContent == "agent" && li.textContent.includes("rolling back"))`,
		30*time.Second)
	// The releases kept to roll back to, as the robot reports them.
	b.Await(t, "the kept releases", `[...document.querySelectorAll('[data-app="app"] dt')].some(d => d.textContent == "Kept")`, 30*time.Second)
	// The old release starts again after the rollback: its first line
	// arrives on the open page.
	b.Await(t, "new log lines, live", serving+" > window.servingBefore", 30*time.Second)
	if b.Eval(t, "window.notReloaded === true") != "true" {
		t.Fatal("the device page was reloaded; it should update in place")
	}
	accessible(t, b, "device")
	shot("device")

	device := b.Eval(t, "location.pathname")
	b.Do(t, "the audit log", chromedp.Navigate(srv.URL+"/ui/audit"))
	b.Await(t, "the audit log", `document.querySelector("#live[data-connected]")`, 15*time.Second)
	accessible(t, b, "audit")
	shot("audit")

	// On a phone no page is wider than the screen: tables become cards,
	// long words wrap.
	b.Viewport(t, 390, 844, true)
	for _, p := range []struct{ name, path string }{
		{"overview-phone", "/ui/"}, {"device-phone", device}, {"rollouts-phone", "/ui/fleets/lab/rollouts"},
		{"rollout-phone", rollout}, {"releases-phone", "/ui/fleets/lab/releases"}, {"audit-phone", "/ui/audit"},
	} {
		b.Do(t, p.name, chromedp.Navigate(srv.URL+p.path))
		b.Await(t, p.name, `document.querySelector("#live[data-connected]")`, 15*time.Second)
		// clientWidth is the layout viewport's width (390); a phone zooms
		// out to show a wider page, so innerWidth would grow with it.
		if got := b.Eval(t, `document.documentElement.scrollWidth + " " + document.documentElement.clientWidth`); func() bool {
			var sw, w int
			_, err := fmt.Sscan(got, &sw, &w)
			return err != nil || w != 390 || sw > w
		}() {
			t.Errorf("%s: the page is %s px wide (scroll width, viewport): wider than the phone", p.name, got)
		}
		switch p.name {
		case "overview-phone", "device-phone":
			time.Sleep(500 * time.Millisecond)
			shot(p.name)
		case "rollouts-phone":
			time.Sleep(500 * time.Millisecond)
			shot("rollout-phone") // the README's name
		}
	}
}

// createRelease makes a release of app "app" in fleet "lab" from a Compose
// file with `berth release create` (uploading its images; more flags
// after) and returns its ID.
func createRelease(t *testing.T, srv *Server, compose, version string, flags ...string) string {
	t.Helper()
	out, err := srv.Berth(t, append([]string{"release", "create", "-f", compose, "--fleet", "lab", "--app", "app", "--version", version, "--json"}, flags...)...)
	if err != nil {
		t.Fatal(err, out)
	}
	var rel struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rel); err != nil || rel.ID == "" {
		t.Fatalf("release create --json: %v\n%s", err, out)
	}
	return rel.ID
}

// register registers a device by hand, as an agent would, and leaves it.
func register(t *testing.T, srv *Server, key, name string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"provisioning_key": key, "name": name, "arch": "amd64", "agent_version": "test"})
	resp, err := http.Post(srv.URL+"/v1/register", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("register %s: %s", name, resp.Status)
	}
}

// accessible checks what a page must have for screen readers and keyboards:
// a language, one h1, a label for every field, alt text on every image, a
// skip link to the main content.
func accessible(t *testing.T, b *Browser, page string) {
	t.Helper()
	got := b.Eval(t, `JSON.stringify({
		lang: document.documentElement.lang,
		h1: document.querySelectorAll("h1").length,
		unlabelled: [...document.querySelectorAll("input:not([type=hidden]), select, textarea")]
			.filter(el => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")).map(el => el.name || el.id),
		noAlt: document.querySelectorAll("img:not([alt])").length,
		skip: !!document.querySelector('a.skip[href="#main"]') && !!document.getElementById("main"),
	})`)
	var a struct {
		Lang       string
		H1         int
		Unlabelled []string
		NoAlt      int
		Skip       bool
	}
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatalf("%s: %v: %s", page, err, got)
	}
	if a.Lang != "en" || a.H1 != 1 || len(a.Unlabelled) > 0 || a.NoAlt > 0 || !a.Skip {
		t.Errorf("%s page: %+v; want lang en, one h1, every field labelled, alt on images, a skip link", page, a)
	}
}
