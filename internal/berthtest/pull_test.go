package berthtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// registry runs Debian's docker-registry on loopback with password auth,
// for the agent to pull from; it is stopped and its storage removed at
// cleanup.
func registry(t *testing.T, user, pass string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("docker-registry is needed (Debian's docker-registry package)")
		}
		t.Skip("docker-registry is not installed (Debian's docker-registry package)")
	}
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "htpasswd"), user+":"+string(hash)+"\n")
	addr := "127.0.0.1:" + FreePort(t)
	write(t, filepath.Join(dir, "config.yml"), fmt.Sprintf(`version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: %s/data}
  delete: {enabled: true}
http:
  addr: %s
auth:
  htpasswd: {realm: berthtest, path: %s/htpasswd}
`, dir, addr, dir))
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("registry log:\n%s", b)
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addr
}

// TestPullPolicy: an image the laptop did not send is pulled by the agent
// from a real registry (Debian's docker-registry, password auth, on
// loopback) with the credentials of the agent's Docker config, when the
// service's pull_policy asks; without credentials the deploy is refused
// before anything changes; pull_policy: always takes a new image of the same
// tag.
func TestPullPolicy(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pass := "s3cret-" + randomID()
	addr := registry(t, "robot", pass)

	// docker login and push with a client config of its own; the agent
	// reads the same config.json (DOCKER_CONFIG), as it would root's.
	cfg := t.TempDir()
	dockerAs := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "docker", append([]string{"--config", cfg}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	dockerAs(pass, "login", addr, "-u", "robot", "--password-stdin")
	ref := addr + "/berthtest/pulled:" + randomID()
	build := func(version string) string {
		dir := t.TempDir()
		write(t, filepath.Join(dir, "Dockerfile"), "FROM "+env.Images["a"]+"\nENV VERSION="+version+"\nRUN [\"/app\", \"-oneshot\"]\n")
		dockerAs("", "build", "-q", "-t", ref, dir)
		dockerAs("", "push", ref)
		id := strings.TrimSpace(dockerAs("", "image", "inspect", "-f", "{{.Id}}", ref))
		dockerAs("", "rmi", ref) // the laptop keeps nothing: the robot must pull
		t.Cleanup(func() { docker("rmi", "-f", id) })
		return id
	}
	v1 := build("1")
	port := FreePort(t)
	file := func(policy string) string {
		return `services:
  web:
    image: ` + ref + `
    pull_policy: ` + policy + `
    ports: ["127.0.0.1:` + port + `:8080"]
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 3}
`
	}

	// No credentials: refused before anything changes, saying why.
	robot := env.NewDevice(t)
	out, err := robot.Deploy(t, "pulled", file("missing"))
	if err == nil {
		t.Fatalf("a pull without credentials succeeded:\n%s", out)
	}
	Contains(t, out, "is not on the device and pulling it failed", "nothing changed", "docker login")
	if _, ok := robot.State(t).Apps["pulled"]; ok {
		t.Error("the refused deploy left an app behind")
	}

	// With the agent's Docker config: pulled, pinned to what the registry had.
	robot.Kill(t)
	robot.Start(t, "DOCKER_CONFIG="+cfg)
	out = robot.MustDeploy(t, "pulled", file("missing"))
	a := robot.AwaitHealthy(t, "pulled")
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("the pulled image answers %q", got)
	}
	if c := robot.Containers(t, "pulled"); len(c) != 1 || c[0].Image != v1 {
		t.Fatalf("containers %+v, want one of %s", c, v1)
	}

	// always: a new image under the same tag is pulled at the next deploy;
	// missing would keep the one the engine has.
	v2 := build("2")
	// (laptop and robot share this engine: give the robot its tag back)
	dockerAs("", "tag", v1, ref)
	robot.MustDeploy(t, "pulled", file("missing"))
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("pull_policy missing took a new image: answers %q", got)
	}
	out = robot.MustDeploy(t, "pulled", file("always"))
	b := robot.AwaitHealthy(t, "pulled")
	if b.Release == a.Release {
		t.Fatalf("pull_policy always kept release %s:\n%s", b.Release, out)
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=2\n" {
		t.Fatalf("after pull_policy always answers %q", got)
	}
	if c := robot.Containers(t, "pulled"); len(c) != 1 || c[0].Image != v2 {
		t.Fatalf("containers %+v, want one of %s", c, v2)
	}
}
