package berthtest

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/content"
)

// TestFullStateDisk puts a device's state directory on a small filesystem
// of its own (a loop-mounted ext4) and fills it for real:
//
//   - full before a deploy or a push: both are refused with the reason
//     before anything changes — the running release keeps its containers,
//     and not one file of the state directory is added or changed;
//   - full in the middle of a push (the disk fills while batches arrive):
//     the push fails with the reason, what was stored is whole (every
//     piece reads back and matches its digest), no temporary file is left,
//     the release keeps running; once space is freed, the rerun completes.
func TestFullStateDisk(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	mnt := LoopFS(t, 96)
	robot := env.NewDeviceIn(t, mnt, `{"settle": "1s", "verify_timeout": "20s", "min_free_mb": 2}`)
	port := FreePort(t)
	robot.MustDeploy(t, "app", web(port, "1"))
	running := robot.AwaitHealthy(t, "app")
	ids := containerIDs(t, robot)
	archive, tag := sizedImage(t, env, 48<<20)
	untouched := func(what string) {
		t.Helper()
		if got := containerIDs(t, robot); got != ids {
			t.Fatalf("%s: containers changed: %s, were %s", what, got, ids)
		}
		if a := robot.App(t, "app"); a.Release != running.Release {
			t.Fatalf("%s: the app runs %s, ran %s", what, a.Release, running.Release)
		}
		if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
			t.Fatalf("%s: the running release answers %q", what, got)
		}
	}

	// Full before anything starts.
	ballast := Fill(t, mnt)
	t.Logf("filled: %d KiB left", Free(t, mnt)>>10)
	before := Tree(t, robot.StateDir)
	out, err := robot.Deploy(t, "app", web(port, "2"))
	if err == nil {
		t.Fatalf("a deploy onto a full disk went through:\n%s", out)
	}
	Contains(t, out, "MiB free", "nothing changed", "the running release keeps running")
	untouched("deploy onto a full disk")
	out, err = robot.Berth(t, "push", archive)
	if err == nil {
		t.Fatalf("a push onto a full disk went through:\n%s", out)
	}
	Contains(t, out, "nothing was sent", "MiB free")
	untouched("push onto a full disk")
	if after := Tree(t, robot.StateDir); !maps.Equal(before, after) {
		t.Fatalf("refused operations changed the state directory:\nbefore %v\nafter  %v", before, after)
	}
	t.Logf("full disk: deploy and push refused, state directory unchanged (%d files)", len(before))
	os.Remove(ballast)

	// The disk fills while a push is under way.
	pushed := make(chan string, 1)
	go func() {
		out, err := robot.Berth(t, "push", archive)
		pushed <- fmt.Sprintf("%v\n%s", err, out)
	}()
	pieces := filepath.Join(robot.StateDir, "content", "pieces")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n := len(Tree(t, pieces)); n > 20 {
			break
		}
	}
	ballast = Fill(t, mnt)
	out = <-pushed
	if strings.HasPrefix(out, "<nil>") {
		t.Fatalf("the push finished before the disk filled (make the image larger):\n%s", out)
	}
	t.Logf("push as the disk filled: %s", lastLines(out, 3))
	Contains(t, out, "no space")
	untouched("a push that filled the disk")
	if tmp := Tree(t, filepath.Join(robot.StateDir, "content", "tmp")); len(tmp) > 0 {
		t.Fatalf("partial files left in the content store: %v", tmp)
	}
	checkPieces(t, filepath.Join(robot.StateDir, "content"))
	os.Remove(ballast)

	out, err = robot.Berth(t, "push", archive)
	if err != nil {
		t.Fatalf("push after space was freed: %v\n%s", err, out)
	}
	if _, err := docker("image", "inspect", tag); err != nil {
		t.Fatalf("after the rerun the engine lacks %s", tag)
	}
	untouched("the push after space was freed")
}

// containerIDs is the device's containers of app, by ID and state.
func containerIDs(t *testing.T, d *Device) string {
	t.Helper()
	var ids []string
	for _, c := range d.Containers(t, "app") {
		ids = append(ids, c.ID[:12]+":"+c.State)
	}
	return strings.Join(ids, ",")
}

// checkPieces reads every piece of the content store in dir back and checks
// it against its digest.
func checkPieces(t *testing.T, dir string) {
	t.Helper()
	s, err := content.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	for name := range Tree(t, filepath.Join(dir, "pieces")) {
		d, err := content.ParseDigest(filepath.Base(name))
		if err != nil {
			t.Fatalf("a file in the piece store that is not a piece: %s", name)
		}
		if _, err := s.Get(d); err != nil {
			t.Fatalf("piece %s: %v", name, err)
		}
		n++
	}
	t.Logf("%d pieces in the store, each whole", n)
}

// TestFullEngineDisk gives a device an engine of its own whose data root is
// a small loop-mounted filesystem, and fills it: a deploy and a push are
// refused with the reason before anything is sent or changed, the running
// release keeps its containers, and no file is added to the state
// directory; once space is freed, the push goes through.
func TestFullEngineDisk(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	mnt := LoopFS(t, 256)
	root := filepath.Join(mnt, "docker")
	g := env.NewEngine2(t, root)
	robot := env.NewDeviceOn(t, g.Host, "", `{"settle": "1s", "verify_timeout": "20s", "min_free_mb": 2}`)
	robot.MustDeploy(t, "app", engineApp("1", "IMG_A", "download-then-kill", false))
	running := robot.AwaitHealthy(t, "app")
	ids := containerIDs(t, robot)
	archive, tag := sizedImage(t, env, 32<<20)
	untouched := func(what string) {
		t.Helper()
		if got := containerIDs(t, robot); got != ids {
			t.Fatalf("%s: containers changed: %s, were %s", what, got, ids)
		}
		if a := robot.App(t, "app"); a.Release != running.Release {
			t.Fatalf("%s: the app runs %s, ran %s", what, a.Release, running.Release)
		}
	}
	for _, fill := range []string{"full", "too-small"} {
		var ballast string
		if fill == "full" {
			ballast = Fill(t, mnt)
		} else {
			// 16 MiB left: less than the 32 MiB layer needs to load.
			ballast = Fill(t, mnt)
			os.Remove(ballast)
			ballast = filepath.Join(mnt, "ballast-part")
			size := int64(Free(t, mnt)) - 16<<20
			if out, err := exec.Command("fallocate", "-l", fmt.Sprint(size), ballast).CombinedOutput(); err != nil {
				t.Fatalf("fallocate: %v\n%s", err, out)
			}
		}
		t.Logf("%s: the engine's disk has %d KiB free", fill, Free(t, mnt)>>10)
		before := Tree(t, robot.StateDir)
		if fill == "full" {
			out, err := robot.Deploy(t, "app", engineApp("2", "IMG_A", "download-then-kill", false))
			if err == nil {
				t.Fatalf("a deploy onto a full engine went through:\n%s", out)
			}
			Contains(t, out, "MiB free", "nothing changed")
			untouched("deploy onto a full engine")
		}
		out, err := robot.Berth(t, "push", archive)
		if err == nil {
			t.Fatalf("%s: a push the engine has no room for went through:\n%s", fill, out)
		}
		Contains(t, out, "nothing was sent", "engine has")
		t.Logf("%s: %s", fill, lastLines(out, 1))
		untouched("push onto a full engine")
		if after := Tree(t, robot.StateDir); !maps.Equal(before, after) {
			t.Fatalf("%s: refused operations changed the state directory:\nbefore %v\nafter  %v", fill, before, after)
		}
		os.Remove(ballast)
	}
	if out, err := robot.Berth(t, "push", archive); err != nil {
		t.Fatalf("push after space was freed: %v\n%s", err, out)
	}
	if _, err := docker("-H", g.Host, "image", "inspect", tag); err != nil {
		t.Fatalf("after the rerun the engine lacks %s", tag)
	}
	untouched("the push after space was freed")
}
