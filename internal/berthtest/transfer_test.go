package berthtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// flakyDevice passes calls to a real agent, but can drop the link after some
// batches or damage a piece on the way.
type flakyDevice struct {
	*localapi.Client
	dropAfter int // batches that go through before the link "drops" (-1: never)
	corrupt   bool
	batches   int
}

var errLinkDown = errors.New("link down")

func (f *flakyDevice) PutPieces(ctx context.Context, frames []byte) (*localapi.PutPiecesResponse, error) {
	if f.dropAfter >= 0 && f.batches >= f.dropAfter {
		return nil, errLinkDown
	}
	f.batches++
	if f.corrupt {
		// Damage the last piece's data inside the batch (the batch's own
		// zstd checksum would catch damage of the compressed bytes).
		f.corrupt = false
		var fs []transfer.Frame
		if err := transfer.DecodeFrames(frames, func(fr transfer.Frame) error {
			fs = append(fs, fr)
			return nil
		}); err != nil {
			return nil, err
		}
		fs[len(fs)-1].Data[0] ^= 0xff
		frames = transfer.NewBatch()
		for _, fr := range fs {
			frames = transfer.AppendFrame(frames, fr)
		}
	}
	return f.Client.PutPieces(ctx, frames)
}

// bigImage builds an image with an 8 MiB incompressible layer, saves it to
// an archive and removes it from the engine (so the device must load it); it
// returns the archive and the image's tag.
func bigImage(t *testing.T, env *Env) (string, string) {
	return sizedImage(t, env, 8<<20)
}

// sizedImage is bigImage with a layer of size bytes.
func sizedImage(t *testing.T, env *Env, size int) (string, string) {
	t.Helper()
	dir := t.TempDir()
	payload := make([]byte, size)
	rand.Read(payload)
	write(t, filepath.Join(dir, "payload"), string(payload))
	write(t, filepath.Join(dir, "Dockerfile"), "FROM "+env.Images["a"]+"\nCOPY payload /payload\n")
	tag := "berthtest/big:" + randomID()
	if out, err := docker("build", "-q", "-t", tag, dir); err != nil {
		t.Fatal(err, out)
	}
	archive := filepath.Join(dir, "image.tar")
	if out, err := docker("save", "-o", archive, tag); err != nil {
		t.Fatal(err, out)
	}
	id, _ := docker("image", "inspect", "-f", "{{.Id}}", tag)
	docker("rmi", tag)
	t.Cleanup(func() { docker("rmi", "-f", strings.TrimSpace(id)) })
	return archive, tag
}

func pushWith(t *testing.T, dev transfer.Device, cache *content.Store, archive string) (*transfer.Summary, error) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := &transfer.Sender{Store: cache, Device: dev, BatchBytes: 1 << 20}
	return s.Push(context.Background(), io.Reader(f))
}

// TestPushResumesAndRejectsDamage: a link dropped mid-transfer keeps what
// arrived, and the rerun sends only the rest; a piece damaged on the way is
// refused by the device and sent again by the next run.
func TestPushResumesAndRejectsDamage(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	archive, _ := bigImage(t, env)
	cache, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	cl := robot.Client()
	defer cl.Close()

	_, err = pushWith(t, &flakyDevice{Client: cl, dropAfter: 3}, cache, archive)
	if !errors.Is(err, errLinkDown) || !strings.Contains(err.Error(), "run the command again") {
		t.Fatalf("dropped link: %v", err)
	}
	_, err = pushWith(t, &flakyDevice{Client: cl, dropAfter: -1, corrupt: true}, cache, archive)
	if err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("damaged piece: %v", err)
	}
	sum, err := pushWith(t, &flakyDevice{Client: cl, dropAfter: -1}, cache, archive)
	if err != nil {
		t.Fatal(err)
	}
	// 3 batches of ~1 MiB arrived in the first run, more in the second: the
	// last run sends what is left, including the damaged piece again.
	if sum.BytesChanged >= 8<<20-3<<20 || sum.PiecesSent == 0 {
		t.Fatalf("rerun sent %d bytes of changes in %d pieces; want only what had not arrived", sum.BytesChanged, sum.PiecesSent)
	}
	if sum.LayersNeeded != 1 || sum.BytesLoaded < 8<<20 {
		t.Fatalf("load: %+v", sum)
	}
	t.Logf("after a drop and a damaged batch, the rerun sent %d pieces (%d KiB changed)", sum.PiecesSent, sum.BytesChanged>>10)
}

// TestPushRefusedWhenTheDeviceIsFull: the device's free space (with its
// margin) cannot take the image: nothing is sent and the numbers are given.
func TestPushRefusedWhenTheDeviceIsFull(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	robot.MustDeploy(t, "app", web(port, "1"))
	archive, _ := bigImage(t, env)
	// Demand more free space than the disk has: any push is too big.
	var st struct{ free uint64 }
	info, err := robot.Client().ContentInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.free = info.StateFree
	robot.Kill(t)
	write(t, filepath.Join(robot.StateDir, "config.json"), fmt.Sprintf(`{"settle": "1s", "min_free_mb": %d}`, (st.free>>20)+1024))
	robot.Start(t)
	out, err := robot.Berth(t, "push", archive)
	if err == nil {
		t.Fatalf("push to a full device went through:\n%s", out)
	}
	Contains(t, out, "nothing was sent", "MiB free")
	layers, _ := os.ReadDir(filepath.Join(robot.StateDir, "content", "layers"))
	if len(layers) != 0 {
		t.Errorf("content arrived on a full device: %d layers", len(layers))
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("the running release answers %q", got)
	}
}

// TestTwoLaptopsAtOnce: two laptops push and deploy different apps to one
// device at the same moment, each with its own cache: both succeed. Then the
// same app twice at once: one release is committed, the other deploy either
// waited and went through or was refused as busy, and the app ends with one
// whole release.
func TestTwoLaptopsAtOnce(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	type laptop struct{ app, archive, tag, port, cache string }
	var ls []*laptop
	for _, app := range []string{"nav", "arm"} {
		archive, tag := bigImage(t, env)
		ls = append(ls, &laptop{app: app, archive: archive, tag: tag, port: FreePort(t), cache: t.TempDir()})
	}
	compose := func(l *laptop, version string) string {
		return strings.Replace(web(l.port, version), "${IMG_A}", l.tag, 1)
	}
	var wg sync.WaitGroup
	outs := make([]string, len(ls))
	for i, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := robot.BerthEnv(t, []string{"BERTH_CACHE=" + l.cache}, "push", l.archive)
			if err != nil {
				outs[i] = fmt.Sprintf("push: %v\n%s", err, out)
				return
			}
			if out, err := robot.Deploy(t, l.app, compose(l, "1")); err != nil {
				outs[i] = fmt.Sprintf("deploy: %v\n%s", err, out)
			}
		}()
	}
	wg.Wait()
	for i, l := range ls {
		if outs[i] != "" {
			t.Fatalf("laptop deploying %s: %s", l.app, outs[i])
		}
		if got, _ := Get("http://127.0.0.1:" + l.port + "/"); got != "version=1\n" {
			t.Errorf("%s answers %q", l.app, got)
		}
	}

	// The same app from both laptops at once.
	nav := ls[0]
	errs := make([]error, 2)
	for i, v := range []string{"2", "3"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := robot.Deploy(t, nav.app, compose(nav, v))
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if !strings.Contains(err.Error(), "busy") {
			t.Errorf("the second deploy of one app failed without saying the app is busy: %v", err)
		}
	}
	if ok == 0 {
		t.Fatalf("neither deploy of the same app went through: %v", errs)
	}
	a := robot.AwaitHealthy(t, nav.app)
	if n := len(robot.Containers(t, nav.app)); n != 1 {
		t.Errorf("%s has %d containers after two deploys at once", nav.app, n)
	}
	got, _ := Get("http://127.0.0.1:" + nav.port + "/")
	if got != "version=2\n" && got != "version=3\n" {
		t.Errorf("%s answers %q after two deploys at once (release %s)", nav.app, got, a.Release)
	}
}

// TestPushOverSSHCutAndResumed: the SSH link dies in the middle of a real
// push (the robot's sshd serving the connection is killed once pieces have
// started to arrive): the command fails saying to run it again, and the rerun
// sends only what had not arrived.
func TestPushOverSSHCutAndResumed(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	sshd := env.NewSSHD(t)
	if out, err := robot.BerthSSH(t, sshd, "status", "--accept-new-host-key"); err != nil {
		t.Fatal(err, out)
	}
	const size = 96 << 20
	archive, tag := sizedImage(t, env, size)
	cache := t.TempDir()
	pushCmd := func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, filepath.Join(env.Bin, "berth"), "push", archive, "--json", "--to", sshd.Target(robot))
		cmd.Env = append(os.Environ(), "HOME="+sshd.Home, "BERTH_CACHE="+cache)
		return cmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cmd := pushCmd(ctx)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pieces := filepath.Join(robot.StateDir, "content", "pieces")
	cut := false
	for !cut && ctx.Err() == nil {
		if n := dirBytes(pieces); n > 16<<20 {
			// The link dies: the sshd processes serving this connection
			// (children of the listening sshd) are killed, and with them
			// the TCP connection and berthd dial-stdio.
			if o, err := exec.Command("pkill", "-KILL", "-P", strconv.Itoa(sshd.PID)).CombinedOutput(); err != nil {
				t.Fatalf("pkill the connection's sshd: %v %s", err, o)
			}
			cut = true
			t.Logf("cut the link with %d MiB of pieces on the robot", n>>20)
		}
		time.Sleep(5 * time.Millisecond)
	}
	err := cmd.Wait()
	if err == nil {
		t.Fatalf("the push went through a cut link (%v):\n%s", cmd.ProcessState, out.String())
	}
	Contains(t, out.String(), "run the command again")
	arrived := dirBytes(pieces)

	out.Reset()
	cmd = pushCmd(ctx)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out.String())
	}
	var res []struct{ Summary transfer.Summary }
	if err := json.Unmarshal(out.Bytes()[bytes.IndexByte(out.Bytes(), '['):], &res); err != nil {
		t.Fatal(err, out.String())
	}
	sum := res[0].Summary
	t.Logf("rerun: %d MiB changed, %d MiB sent (%d MiB had arrived before the cut)", sum.BytesChanged>>20, sum.BytesSent>>20, arrived>>20)
	if sum.BytesChanged > size-arrived+(8<<20) {
		t.Errorf("the rerun sent %d MiB of changes; %d MiB of %d had arrived: want only the rest (within one batch)", sum.BytesChanged>>20, arrived>>20, size>>20)
	}
	if _, err := docker("image", "inspect", tag); err != nil {
		t.Errorf("%s not loaded after the rerun", tag)
	}
}

// dirBytes adds up the sizes of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// TestContentBudget: over its content budget the device keeps in its store
// only the layers of the current release; the previous release's layers go
// (its image stays in the engine for rollback), and a push still works.
func TestContentBudget(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDeviceWithPolicy(t, `{"settle": "1s", "verify_timeout": "20s", "content_budget_mb": 1}`)
	port := FreePort(t)
	top := func(tag string) string {
		out, err := docker("image", "inspect", "-f", "{{range .RootFS.Layers}}{{.}} {{end}}", tag)
		if err != nil {
			t.Fatal(err, out)
		}
		ls := strings.Fields(out)
		return strings.TrimPrefix(ls[len(ls)-1], "sha256:")
	}
	indexPath := func(hex string) string { return filepath.Join(robot.StateDir, "content", "layers", hex) }
	var layers []string
	for _, v := range []string{"1", "2"} {
		archive, tag := bigImage(t, env)
		if out, err := robot.BerthEnv(t, []string{"BERTH_CACHE=" + t.TempDir()}, "push", archive); err != nil {
			t.Fatal(err, out)
		}
		robot.MustDeploy(t, "app", strings.Replace(web(port, v), "${IMG_A}", tag, 1))
		layers = append(layers, top(tag))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, errOld := os.Stat(indexPath(layers[0]))
		_, errNew := os.Stat(indexPath(layers[1]))
		if errNew != nil {
			t.Fatalf("the current release's layer left the store: %v", errNew)
		}
		// The collection removes the index first, then its pieces.
		pieces := dirBytes(filepath.Join(robot.StateDir, "content", "pieces"))
		if errors.Is(errOld, fs.ErrNotExist) && pieces <= 12<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("over budget, the previous release's layer is still in the store (index: %v; %d MiB of pieces, want about one 8 MiB layer)", errOld, pieces>>20)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Rollback still works: the engine kept the image.
	if out, err := robot.Berth(t, "rollback", "--app", "app"); err != nil {
		t.Fatal(err, out)
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("after rollback answers %q", got)
	}
}
