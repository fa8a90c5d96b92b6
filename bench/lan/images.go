package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const imageRepo = "lanapp-bench"

// The app the image carries: a small static HTTP server with a healthcheck
// probe. S1 changes the line marked below.
const appSource = `// Command lanapp is the app of berth's LAN benchmark image.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

const version = "%s" // S1 changes this line

func main() {
	check := flag.Bool("check", false, "healthcheck: exit 0 if /healthz answers 200")
	flag.Parse()
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if *check {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Println("unhealthy:", err)
			os.Exit(1)
		}
		return
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "lanapp", version) })
	log.Printf("lanapp %%s on 127.0.0.1:%%s", version, port)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}
`

const dockerfile = `FROM scratch
LABEL berth.bench=lan
# layer 1: system libraries
COPY sys/ /
# layer 2: language runtime and packages
COPY runtime/ /
# layer 3: the compiled app
COPY app/ /
ENV PORT=8080
HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD ["/app", "-check"]
ENTRYPOINT ["/app"]
`

// The file S2 edits, inside layer 2, and the one S3 changes in layer 1.
const (
	s2File = "runtime/usr/local/go/src/net/http/server.go"
	s3File = "sys/etc/robot-release"
)

type images struct {
	tags  []string // per scenario
	ids   []string
	stats []*imageStat
}

func tag(k int) string { return fmt.Sprintf("%s:s%d", imageRepo, k) }

// buildImages builds the four scenario images on the host engine from a
// context under dir.
func buildImages(ctx context.Context, cfg *config, dir string) (*images, error) {
	ctxDir := filepath.Join(dir, "context")
	src := filepath.Join(dir, "appsrc")
	for _, d := range []string{ctxDir, src, filepath.Join(ctxDir, "app")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	addCleanup("remove the build context", func() { os.RemoveAll(dir) })
	addCleanup("remove the benchmark images from the host engine", removeHostImages)
	for k := range scenarioNames {
		if _, err := run(ctx, "docker", "image", "inspect", tag(k)); err == nil {
			return nil, fmt.Errorf("the host engine has %s already: another bench/lan run? (docker rmi %s)", tag(k), tag(k))
		}
	}

	logf("copying the image's files into the build context %s", ctxDir)
	if err := fillContext(ctx, cfg, ctxDir); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(ctxDir, s3File), []byte("ROBOT_IMAGE_BUILD=1\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module lanapp\n\ngo 1.22\n"), 0o644); err != nil {
		return nil, err
	}
	buildApp := func(version string) error {
		if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(fmt.Sprintf(appSource, version)), 0o644); err != nil {
			return err
		}
		_, err := runIn(ctx, src, []string{"CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local"},
			"go", "build", "-o", filepath.Join(ctxDir, "app", "app"), ".")
		return err
	}
	im := &images{}
	build := func(k int) error {
		t0 := time.Now()
		if _, err := runIn(ctx, "", []string{"DOCKER_BUILDKIT=0"}, "docker", "build", "--force-rm", "-q", "-t", tag(k), ctxDir); err != nil {
			return err
		}
		out, err := run(ctx, "docker", "image", "inspect", "-f", "{{.ID}} {{json .RootFS.Layers}}", tag(k))
		if err != nil {
			return err
		}
		id, layersJSON, _ := strings.Cut(strings.TrimSpace(out), " ")
		var layers []string
		if err := json.Unmarshal([]byte(layersJSON), &layers); err != nil {
			return err
		}
		im.tags = append(im.tags, tag(k))
		im.ids = append(im.ids, id)
		im.stats = append(im.stats, &imageStat{Scenario: scenarioNames[k], Tag: tag(k), ID: id, DiffIDs: layers})
		logf("built %s (%s, %d layers) in %.0fs", tag(k), id[:19], len(layers), time.Since(t0).Seconds())
		return nil
	}

	// S0: the first image.
	if err := buildApp("v0"); err != nil {
		return nil, err
	}
	if err := build(0); err != nil {
		return nil, err
	}
	// S1: one line of the app changed, the binary rebuilt.
	if err := buildApp("v1"); err != nil {
		return nil, err
	}
	if err := build(1); err != nil {
		return nil, err
	}
	// S2: one source file edited inside the big layer 2; layer 3 is rebuilt on top.
	f, err := os.OpenFile(filepath.Join(ctxDir, s2File), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("S2 edits %s: %w", s2File, err)
	}
	_, err = f.WriteString("\n// edited by berth's bench/lan (scenario S2)\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if err := build(2); err != nil {
		return nil, err
	}
	// S3: one small file of layer 1 changed; layers 2 and 3 rebuilt from files with new mtimes
	// and the same contents (as a fresh checkout, package install or build gives).
	if err := os.WriteFile(filepath.Join(ctxDir, s3File), []byte("ROBOT_IMAGE_BUILD=2\n"), 0o644); err != nil {
		return nil, err
	}
	stamp := fmt.Sprintf("@%d", time.Now().Unix())
	for _, d := range []string{"runtime", "app"} {
		if _, err := run(ctx, "find", filepath.Join(ctxDir, d), "-exec", "touch", "-h", "-d", stamp, "{}", "+"); err != nil {
			return nil, err
		}
	}
	if err := build(3); err != nil {
		return nil, err
	}
	return im, checkLayers(im)
}

// checkLayers makes sure each scenario changed the layers it should.
func checkLayers(im *images) error {
	d := func(k, l int) string { return im.stats[k].DiffIDs[l] }
	for k := range im.stats {
		if n := len(im.stats[k].DiffIDs); n != 3 {
			return fmt.Errorf("%s has %d layers, want 3", im.tags[k], n)
		}
	}
	want := []struct {
		k, l int
		same bool
		why  string
	}{
		{1, 0, true, "S1 keeps layer 1"}, {1, 1, true, "S1 keeps layer 2"}, {1, 2, false, "S1 changes the app layer"},
		{2, 0, true, "S2 keeps layer 1"}, {2, 1, false, "S2 changes layer 2"},
		{3, 0, false, "S3 changes layer 1"}, {3, 1, false, "S3 rebuilds layer 2 with new mtimes"}, {3, 2, false, "S3 rebuilds layer 3 with new mtimes"},
	}
	for _, w := range want {
		if (d(w.k, w.l) == d(w.k-1, w.l)) != w.same {
			return fmt.Errorf("image check failed: %s (layer %d of s%d vs s%d)", w.why, w.l+1, w.k, w.k-1)
		}
	}
	return nil
}

// fillContext copies real files of this machine into the context.
func fillContext(ctx context.Context, cfg *config, ctxDir string) error {
	sys := filepath.Join(ctxDir, "sys")
	rt := filepath.Join(ctxDir, "runtime")
	libDir := "/usr/lib/x86_64-linux-gnu"
	copyInto := func(dst string, srcs ...string) error {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		var have []string
		for _, s := range srcs {
			if _, err := os.Lstat(s); err == nil {
				have = append(have, s)
			} else {
				logf("skipping %s: %v", s, err)
			}
		}
		if len(have) == 0 {
			return nil
		}
		_, err := run(ctx, "cp", append([]string{"-a"}, append(have, dst+"/")...)...)
		return err
	}
	if err := os.MkdirAll(filepath.Join(sys, "etc"), 0o755); err != nil {
		return err
	}
	if cfg.small {
		if err := copyInto(filepath.Join(sys, libDir), filepath.Join(libDir, "gconv")); err != nil {
			return err
		}
		for _, d := range []string{"net", "crypto"} {
			if err := copyInto(filepath.Join(rt, "usr/local/go/src"), filepath.Join("/usr/local/go/src", d)); err != nil {
				return err
			}
		}
		return nil
	}
	// Layer 1: the shared libraries of /usr/lib/x86_64-linux-gnu (the top level, without the two
	// LLVMs), the Mesa drivers and gconv.
	ents, err := os.ReadDir(libDir)
	if err != nil {
		return err
	}
	var libs []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || !strings.Contains(n, ".so") || strings.HasPrefix(n, "libLLVM") {
			continue
		}
		libs = append(libs, filepath.Join(libDir, n))
	}
	sort.Strings(libs)
	libs = append(libs, filepath.Join(libDir, "dri"), filepath.Join(libDir, "gconv"))
	if err := copyInto(filepath.Join(sys, libDir), libs...); err != nil {
		return err
	}
	// Layer 2: the Go toolchain, Python's libraries, and Go module sources (the "packages").
	if err := copyInto(filepath.Join(rt, "usr/local"), "/usr/local/go"); err != nil {
		return err
	}
	if err := copyInto(filepath.Join(rt, "usr/lib"), "/usr/lib/python3", "/usr/lib/python3.11"); err != nil {
		return err
	}
	modcache, err := run(ctx, "go", "env", "GOMODCACHE")
	if err != nil {
		return err
	}
	modcache = strings.TrimSpace(modcache)
	return copyInto(filepath.Join(rt, "opt/gomod"), filepath.Join(modcache, "github.com"), filepath.Join(modcache, "google.golang.org"))
}

// removeHostImages removes the benchmark's images (every tag, the registry
// ones too) and the classic builder's intermediate images from the host engine.
func removeHostImages() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, _ := run(ctx, "docker", "images", "--format", "{{.Repository}}:{{.Tag}}")
	var refs []string
	for _, ref := range strings.Fields(out) {
		repo, _, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], ":")
		if repo == imageRepo {
			refs = append(refs, ref)
		}
	}
	if len(refs) > 0 {
		if _, err := run(ctx, "docker", append([]string{"rmi", "-f"}, refs...)...); err != nil {
			logf("%v", err)
		}
	}
	// Intermediate images of the classic builder carry the label and go with their child; any left
	// (an interrupted build) go here.
	out, _ = run(ctx, "docker", "images", "-a", "-q", "--filter", "label=berth.bench=lan")
	if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := run(ctx, "docker", append([]string{"rmi", "-f"}, ids...)...); err != nil {
			logf("%v", err)
		}
	}
}
