package berthtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser is a headless Chromium (Debian's chromium package) driven over
// the DevTools protocol with chromedp, for the dashboard's tests. It runs
// as root here, so without the sandbox, in a temporary profile; cleanup
// stops it. Without chromium a test skips, or fails when CI=true.
type Browser struct {
	ctx context.Context // a chromedp context: the browser's one tab
}

// NewBrowser starts Chromium at the given window size.
func NewBrowser(t testing.TB, width, height int) *Browser {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("headless Chromium is needed for the dashboard's tests (CI): apt-get install chromium")
		}
		t.Skip("headless Chromium not found (apt-get install chromium); the dashboard's browser tests are skipped")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(width, height),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()      // closes the tab and the browser
		cancelAlloc() // and waits for the process to end
	})
	if err := chromedp.Do(ctx); err != nil { // starts it
		t.Fatalf("start %s: %v", path, err)
	}
	return &Browser{ctx: ctx}
}

// Do runs actions, failing the test on an error or after a minute.
func (b *Browser) Do(t testing.TB, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %s: %v\npage:\n%s", what, err, b.Text(t))
	}
}

// Eval evaluates a JavaScript expression and returns its value as text.
func (b *Browser) Eval(t testing.TB, expr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr))
	if err != nil {
		t.Fatalf("browser: evaluate %s: %v", expr, err)
	}
	return fmt.Sprint(v)
}

// Text is the page's visible text.
func (b *Browser) Text(t testing.TB) string {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
	return s
}

// Await waits until the JavaScript expression is true, without touching
// the page (no reload): the page must change by itself.
func (b *Browser) Await(t testing.TB, what, expr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b.Eval(t, "!!("+expr+")") == "true" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("browser: the page never showed %s within %s; it shows:\n%s", what, timeout, b.Text(t))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Click clicks the first element selector matches, once it exists. It
// finds the element and clicks it in one step in the page, so a live
// update replacing the element in between cannot leave a stale one.
func (b *Browser) Click(t testing.TB, what, selector string) {
	t.Helper()
	sel, _ := json.Marshal(selector)
	b.Await(t, what, fmt.Sprintf(`(() => { const e = document.querySelector(%s); if (!e) return false; e.click(); return true })()`, sel), time.Minute)
}

// Screenshot writes a PNG of the whole page to path.
func (b *Browser) Screenshot(t testing.TB, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Viewport sets the page's size, as a phone (mobile) or a laptop.
func (b *Browser) Viewport(t testing.TB, width, height int64, mobile bool) {
	t.Helper()
	opts := []chromedp.EmulateViewportOption{chromedp.EmulateScale(1)}
	if mobile {
		opts = []chromedp.EmulateViewportOption{chromedp.EmulateScale(2), chromedp.EmulateMobile}
	}
	b.Do(t, "viewport", chromedp.EmulateViewport(width, height, opts...))
}
