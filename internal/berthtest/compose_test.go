package berthtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/release"
)

// ros2Project runs berth in testdata/ros2 as a user would in their project
// folder: no -f, the files, override file and .env found as docker compose
// finds them. The environment makes names, ports and the subnet unique on
// the shared engine (the process environment wins over .env, as in docker
// compose).
type ros2Project struct {
	dir   string
	env   []string
	robot string
	port  string
}

func newROS2Project(t *testing.T, env *Env) *ros2Project {
	dir, err := filepath.Abs("testdata/ros2")
	if err != nil {
		t.Fatal(err)
	}
	p := &ros2Project{dir: dir, robot: "berthtest-" + randomID(), port: FreePort(t)}
	p.env = []string{"ROS_IMAGE=" + env.Images["a"], "ROBOT_NAME=" + p.robot, "RECORDER_PORT=" + p.port,
		fmt.Sprintf("ROS_SUBNET_PREFIX=10.213.%d", 1+rand.IntN(250))}
	return p
}

func (p *ros2Project) berth(t *testing.T, d *Device, extraEnv []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(d.env.Bin, "berth"), append(args, "--to", d.Target())...)
	cmd.Dir = p.dir
	cmd.Env = append(append(os.Environ(), p.env...), extraEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// inspect is `docker inspect` of one container.
func inspect(t *testing.T, name string) container.InspectResponse {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "--type", "container", name).Output()
	if err != nil {
		t.Fatalf("docker inspect %s: %v", name, err)
	}
	var list []container.InspectResponse
	if err := json.Unmarshal(out, &list); err != nil || len(list) != 1 {
		t.Fatalf("docker inspect %s: %v (%d)", name, err, len(list))
	}
	return list[0]
}

func serviceContainer(t *testing.T, d *Device, app, service string) release.Container {
	t.Helper()
	for _, c := range d.Containers(t, app) {
		if c.Service == service && c.Running() {
			return c
		}
	}
	t.Fatalf("no running container of %s/%s", app, service)
	return release.Container{}
}

// TestROS2Project deploys a ROS 2-style project folder (compose.yaml,
// compose.override.yaml, .env) and checks through docker inspect that each
// setting reached its container; then a switch and a rollback with a
// container_name, the anonymous volume's data kept, a GPU service refused in
// preflight with the running release untouched, and a dry run.
func TestROS2Project(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	p := newROS2Project(t, env)

	out, err := p.berth(t, robot, nil, "deploy")
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	a := robot.AwaitHealthy(t, "ros2")

	talker := inspect(t, p.robot+"-talker")
	h, c := talker.HostConfig, talker.Config
	if talker.Name != "/"+p.robot+"-talker" || c.Labels["berth.service"] != "talker" {
		t.Errorf("talker container: name %s, labels %v", talker.Name, c.Labels)
	}
	one := int64(200)
	checks := []struct {
		what      string
		got, want any
	}{
		{"ipc", string(h.IpcMode), "host"},
		{"pid", string(h.PidMode), "host"},
		{"tty", c.Tty, true},
		{"stdin_open", c.OpenStdin, true},
		{"read_only", h.ReadonlyRootfs, true},
		{"init", *h.Init, true},
		{"mem_limit", h.Memory, int64(256 << 20)},
		{"mem_reservation", h.MemoryReservation, int64(64 << 20)},
		{"cpus", h.NanoCPUs, int64(500_000_000)},
		{"cpu_shares", h.CPUShares, int64(512)},
		{"cpuset", h.CpusetCpus, "0"},
		{"pids_limit", *h.PidsLimit, one},
		{"oom_score_adj", h.OomScoreAdj, 100},
		{"group_add", h.GroupAdd, []string{"20"}},
		{"device_cgroup_rules", h.DeviceCgroupRules, []string{"c 189:* rmw"}},
		{"security_opt", slices.Contains(h.SecurityOpt, "no-new-privileges:true"), true}, // pid: host adds label=disable
		{"sysctls", h.Sysctls, map[string]string{"net.ipv4.tcp_keepalive_time": "600"}},
		{"dns", h.DNS, []string{"10.0.0.53"}},
		{"dns_search", h.DNSSearch, []string{"robot.lan"}},
		{"cap_add", []string(h.CapAdd), []string{"CAP_SYS_NICE"}},
		{"override env", envOf(c.Env)["NODE_ROLE"], "talker"},
		{".env", envOf(c.Env)["ROS_DOMAIN_ID"], "7"},
		{"override label", c.Labels["robot.role"], "talker"},
	}
	for _, ck := range checks {
		if diff := cmp.Diff(ck.want, ck.got); diff != "" {
			t.Errorf("talker %s (-want +got):\n%s", ck.what, diff)
		}
	}
	if ep := talker.NetworkSettings.Networks; len(ep) != 1 {
		t.Errorf("talker networks: %v", ep)
	} else {
		for n, e := range ep {
			want := strings.TrimPrefix(p.env[3], "ROS_SUBNET_PREFIX=") + ".10"
			if e.IPAMConfig == nil || e.IPAMConfig.IPv4Address != want || e.IPAddress != want {
				t.Errorf("talker on %s: ipv4_address %+v / %s, want %s", n, e.IPAMConfig, e.IPAddress, want)
			}
		}
	}
	listener := inspect(t, serviceContainer(t, robot, "ros2", "listener").ID)
	if got, want := string(listener.HostConfig.IpcMode), "container:"+talker.ID; got != want {
		t.Errorf("listener ipc = %s, want %s (the talker's)", got, want)
	}
	lh := listener.HostConfig
	if lh.Memory != 128<<20 || lh.NanoCPUs != 250_000_000 || lh.PidsLimit == nil || *lh.PidsLimit != 100 || lh.MemoryReservation != 32<<20 {
		t.Errorf("listener deploy.resources: memory %d, cpus %d, pids %v, reservation %d", lh.Memory, lh.NanoCPUs, lh.PidsLimit, lh.MemoryReservation)
	}
	rec := inspect(t, serviceContainer(t, robot, "ros2", "recorder").ID)
	var anon string
	for _, m := range rec.Mounts {
		if m.Destination == "/bags" {
			anon = m.Name
		}
	}
	if anon == "" || !strings.Contains(anon, ".recorder.anon") {
		t.Fatalf("recorder's anonymous volume: mounts %+v", rec.Mounts)
	}

	// A dry run prints the switch a change would make, and changes nothing.
	out, err = p.berth(t, robot, []string{"VERSION=2"}, "deploy", "--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	Contains(t, out, "dry run: ros2", "nothing was changed", "stop talker", "start talker", "start listener", "verify")
	if b := robot.App(t, "ros2"); b.Release != a.Release {
		t.Fatalf("the dry run changed the release")
	}

	// A switch: the talker's new container takes the container_name, the
	// listener follows it into the new IPC namespace, the recorder's data stays.
	out, err = p.berth(t, robot, []string{"VERSION=2"}, "deploy")
	if err != nil {
		t.Fatalf("deploy 2: %v\n%s", err, out)
	}
	b := robot.AwaitHealthy(t, "ros2")
	talker2 := inspect(t, p.robot+"-talker")
	if talker2.ID == talker.ID || envOf(talker2.Config.Env)["VERSION"] != "2" {
		t.Fatalf("after the switch %s is %s with VERSION %s", p.robot+"-talker", talker2.ID, envOf(talker2.Config.Env)["VERSION"])
	}
	listener2 := inspect(t, serviceContainer(t, robot, "ros2", "listener").ID)
	if got := string(listener2.HostConfig.IpcMode); got != "container:"+talker2.ID {
		t.Errorf("after the switch listener ipc = %s, want the new talker's", got)
	}
	if got, _ := Get("http://127.0.0.1:" + p.port + "/data"); got != "1\n2\n" {
		t.Errorf("recorder's anonymous volume holds %q, want both boots", got)
	}

	// A failing release (an unhealthy talker) rolls back: the release 2
	// talker gets its name back.
	out, err = p.berth(t, robot, []string{"VERSION=3"}, "deploy", "-f", "compose.yaml", "-f", "compose.override.yaml", "-f", writeFile(t, "unhealthy.yaml", "services:\n  talker:\n    environment:\n      UNHEALTHY: \"1\"\n"))
	if err == nil {
		t.Fatalf("an unhealthy talker was committed:\n%s", out)
	}
	Contains(t, out, "rolled back")
	c2 := robot.AwaitHealthy(t, "ros2")
	if c2.Release != b.Release {
		t.Fatalf("after the rollback runs %s, want %s", release.ShortID(c2.Release), release.ShortID(b.Release))
	}
	back := inspect(t, p.robot+"-talker")
	if back.ID != talker2.ID || !back.State.Running {
		t.Errorf("after the rollback %s is %s (running %v), want the release 2 talker %s", p.robot+"-talker", back.ID, back.State.Running, talker2.ID)
	}

	// A GPU service on an engine without the NVIDIA runtime: refused in
	// preflight, the running release untouched.
	out, err = p.berth(t, robot, []string{"VERSION=2", "COMPOSE_PROFILES=gpu"}, "deploy")
	if err == nil {
		t.Fatalf("a GPU release was accepted on an engine without the nvidia runtime:\n%s", out)
	}
	Contains(t, out, "service perception asks for an NVIDIA GPU", "no nvidia runtime", "nothing changed", "NVIDIA Container Toolkit")
	if d := robot.App(t, "ros2"); d.Release != b.Release || d.Phase != c2.Phase {
		t.Errorf("after the GPU refusal: release %s phase %s, want %s %s as before", release.ShortID(d.Release), d.Phase, release.ShortID(b.Release), c2.Phase)
	}
	if inspect(t, p.robot+"-talker").ID != talker2.ID {
		t.Error("the GPU refusal touched the talker")
	}
}

func envOf(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestConfigsAndSecrets deploys testdata/secrets: a secret from an
// environment variable, a config from a file and one written in the file
// reach the containers as read-only files with their owner and mode; the
// secret's value shows nowhere (berth config, deploy and dry-run output,
// status, releases, the agent's state and log); a new value switches only
// the service that uses it, and a rollback brings the old value back.
func TestConfigsAndSecrets(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	dir, err := filepath.Abs("testdata/secrets")
	if err != nil {
		t.Fatal(err)
	}
	token1, token2 := "tok1-"+randomID()+randomID(), "tok2-"+randomID()+randomID()
	run := func(token string, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if args[0] != "config" {
			args = append(args, "--to", robot.Target())
		}
		cmd := exec.CommandContext(ctx, filepath.Join(env.Bin, "berth"), args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "TEST_IMAGE="+env.Images["a"], "API_TOKEN="+token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var outputs []string
	must := func(token string, args ...string) string {
		t.Helper()
		out, err := run(token, args...)
		if err != nil {
			t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		outputs = append(outputs, out)
		return out
	}
	must(token1, "config")
	must(token1, "deploy", "--dry-run")
	must(token1, "deploy")
	a := robot.AwaitHealthy(t, "secrets")

	web := inspect(t, serviceContainer(t, robot, "secrets", "web").ID)
	files := map[string]string{}
	for _, m := range web.Mounts {
		files[m.Destination] = m.Source
		if (m.Destination == "/run/secrets/api_token" || m.Destination == "/etc/robot.conf") && m.RW {
			t.Errorf("%s is mounted read-write", m.Destination)
		}
	}
	check := func(path, want string, uid, gid uint32, mode os.FileMode) {
		t.Helper()
		src := files[path]
		b, err := os.ReadFile(src)
		if err != nil || string(b) != want {
			t.Fatalf("%s (from %s) holds %q (%v), want %q", path, src, b, err, want)
		}
		st, err := os.Stat(src)
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != uid || sys.Gid != gid || st.Mode().Perm() != mode {
			t.Errorf("%s: owner %d:%d mode %o, want %d:%d %o", path, sys.Uid, sys.Gid, st.Mode().Perm(), uid, gid, mode)
		}
		dst, err := os.Stat(filepath.Dir(src))
		if err != nil || dst.Mode().Perm() != 0o700 {
			t.Errorf("the directory of %s: %v %v, want 0700 (root's only)", path, dst.Mode(), err)
		}
	}
	check("/run/secrets/api_token", token1, 1000, 1000, 0o400)
	check("/etc/robot.conf", "max_speed=1.5\nname=robot\n", 0, 0, 0o444)
	other := inspect(t, serviceContainer(t, robot, "secrets", "other").ID)
	for _, m := range other.Mounts {
		if m.Destination == "/calibration" {
			if b, _ := os.ReadFile(m.Source); string(b) != "offset=0.1\n" {
				t.Errorf("/calibration holds %q", b)
			}
		}
	}

	// A new value: only web switches.
	must(token2, "deploy")
	b := robot.AwaitHealthy(t, "secrets")
	if b.Release == a.Release {
		t.Fatal("a new secret value kept the release")
	}
	if b.Services["web"].Container == a.Services["web"].Container {
		t.Error("web kept its container with a new secret")
	}
	if b.Services["other"].Container != a.Services["other"].Container {
		t.Error("other, which does not use the secret, was switched")
	}
	web2 := inspect(t, serviceContainer(t, robot, "secrets", "web").ID)
	for _, m := range web2.Mounts {
		if m.Destination == "/run/secrets/api_token" {
			if v, _ := os.ReadFile(m.Source); string(v) != token2 {
				t.Errorf("after the switch the secret holds %q", v)
			}
		}
	}
	// A rollback brings the old value back with the old container.
	must(token2, "rollback", "--app", "secrets")
	c := robot.AwaitHealthy(t, "secrets")
	if c.Release != a.Release {
		t.Fatalf("after the rollback: release %s, want %s", release.ShortID(c.Release), release.ShortID(a.Release))
	}
	for _, m := range inspect(t, serviceContainer(t, robot, "secrets", "web").ID).Mounts {
		if m.Destination == "/run/secrets/api_token" {
			if v, _ := os.ReadFile(m.Source); string(v) != token1 {
				t.Errorf("after the rollback the secret holds %q", v)
			}
		}
	}

	// The values show nowhere but in those files.
	outputs = append(outputs, must(token2, "status", "--json"), must(token2, "releases", "--app", "secrets", "--json"))
	for _, out := range outputs {
		if strings.Contains(out, token1) || strings.Contains(out, token2) {
			t.Errorf("a secret value is in berth's output:\n%s", out)
		}
	}
	err = filepath.WalkDir(robot.StateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, string(filepath.Separator)+"files"+string(filepath.Separator)) {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && (strings.Contains(string(b), token1) || strings.Contains(string(b), token2)) {
			t.Errorf("%s holds a secret value", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(filepath.Join(filepath.Dir(robot.StateDir), "berthd.log"))
	noSecrets(t, "berthd's log", log, token1, token2)
}
