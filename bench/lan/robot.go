package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-robotics/berth/internal/sshtest"
)

const (
	netnsName = "berthlan"
	vethHost  = "blan-h"
	vethRobot = "blan-r"
	hostIP    = "10.200.0.1"
	robotIP   = "10.200.0.2"
)

// robot is the device: a network namespace with its own dockerd, sshd,
// berthd and registry, and what the laptop (this host) needs to reach it.
type robot struct {
	dir        string // everything of the robot and the laptop's side of it
	bin        string // berth and berthd
	storage    string
	dockerSock string
	berthdSock string
	regPort    int
	home       string // HOME for berth: .ssh/config, id_ed25519, known_hosts
	sshConfig  string // the same for OpenSSH's ssh (which reads HOME from passwd, not $HOME)
	cache      string // BERTH_CACHE: the laptop's content cache
	pushPort   int    // BERTH_PUSH_PORT: berth's loopback endpoint, the same for the whole run
	downs      []func()

	dockerd, sshd, berthd, registry, tunnel *proc
	shaped                                  bool
}

func (r *robot) nsenter(args ...string) []string {
	return append([]string{"nsenter", "--net=/var/run/netns/" + netnsName}, args...)
}

// up creates the robot. down (always call it) removes whatever up created.
func (r *robot) up(ctx context.Context) error {
	if out, _ := run(ctx, "ip", "netns", "list"); containsWord(out, netnsName) {
		return fmt.Errorf("network namespace %s exists: another bench/lan run, or a leftover (ip netns del %s; ip link del %s)", netnsName, netnsName, vethHost)
	}
	if _, err := os.Stat("/sys/class/net/" + vethHost); err == nil {
		return fmt.Errorf("interface %s exists: another bench/lan run, or a leftover (ip link del %s)", vethHost, vethHost)
	}
	if _, err := run(ctx, "ip", "netns", "add", netnsName); err != nil {
		return err
	}
	r.onDown(func() { quiet("ip", "netns", "del", netnsName) })
	if _, err := run(ctx, "ip", "link", "add", vethHost, "type", "veth", "peer", "name", vethRobot); err != nil {
		return err
	}
	r.onDown(func() {
		if _, err := os.Stat("/sys/class/net/" + vethHost); err == nil {
			quiet("ip", "link", "del", vethHost)
		}
	})
	for _, c := range [][]string{
		{"ip", "link", "set", vethRobot, "netns", netnsName},
		{"ip", "addr", "add", hostIP + "/24", "dev", vethHost},
		{"ip", "link", "set", vethHost, "up"},
		{"ip", "-n", netnsName, "addr", "add", robotIP + "/24", "dev", vethRobot},
		{"ip", "-n", netnsName, "link", "set", vethRobot, "up"},
		{"ip", "-n", netnsName, "link", "set", "lo", "up"},
	} {
		if _, err := run(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	if err := r.startDockerd(ctx); err != nil {
		return err
	}
	if err := r.startSSHD(ctx); err != nil {
		return err
	}
	if err := r.startBerthd(ctx); err != nil {
		return err
	}
	return r.startRegistry(ctx)
}

func (r *robot) onDown(fn func()) { r.downs = append(r.downs, fn) }

func (r *robot) down() {
	for i := len(r.downs) - 1; i >= 0; i-- {
		r.downs[i]()
	}
	r.downs = nil
}

func (r *robot) startDockerd(ctx context.Context) error {
	d := filepath.Join(r.dir, "dockerd")
	for _, s := range []string{"data", "exec"} {
		if err := os.MkdirAll(filepath.Join(d, s), 0o700); err != nil {
			return err
		}
	}
	// Its own (empty) config file: the host's /etc/docker/daemon.json sets data-root.
	if err := os.WriteFile(filepath.Join(d, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		return err
	}
	r.dockerSock = filepath.Join(d, "docker.sock")
	p, err := startProc("robot dockerd", filepath.Join(r.dir, "dockerd.log"), r.nsenter("dockerd",
		"--config-file", filepath.Join(d, "daemon.json"),
		"--data-root", filepath.Join(d, "data"),
		"--exec-root", filepath.Join(d, "exec"),
		"--pidfile", filepath.Join(d, "dockerd.pid"),
		"-H", "unix://"+r.dockerSock,
		"--storage-driver", r.storage,
		"--iptables=false", "--bridge=none")...)
	if err != nil {
		return err
	}
	r.dockerd = p
	r.onDown(func() {
		// Containers first (their shims would outlive a killed dockerd), then the daemon, its
		// containerd, stray shims, mounts, and the data.
		if !p.exited() {
			if out, err := run(context.Background(), "docker", "-H", "unix://"+r.dockerSock, "ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
				quiet("docker", append([]string{"-H", "unix://" + r.dockerSock, "rm", "-f", "-v"}, strings.Fields(out)...)...)
			}
		}
		p.stop(syscall.SIGTERM, 45*time.Second)
		for _, pid := range pidsMentioning(d) {
			logf("killing stray process %d of the robot's engine", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
		unmountUnder(d)
		if err := os.RemoveAll(d); err != nil {
			logf("remove %s: %v", d, err)
		}
	})
	return waitFor(ctx, "robot dockerd", p, 90*time.Second, func() error {
		_, err := run(ctx, "docker", "-H", "unix://"+r.dockerSock, "version", "--format", "{{.Server.Version}}")
		return err
	})
}

func (r *robot) docker(ctx context.Context, args ...string) (string, error) {
	return run(ctx, "docker", append([]string{"-H", "unix://" + r.dockerSock}, args...)...)
}

func (r *robot) startSSHD(ctx context.Context) error {
	d := filepath.Join(r.dir, "sshd")
	r.home = filepath.Join(r.dir, "home")
	ssh := filepath.Join(r.home, ".ssh")
	for _, s := range []string{d, ssh} {
		if err := os.MkdirAll(s, 0o700); err != nil {
			return err
		}
	}
	hostKey, userKey := filepath.Join(d, "host_ed25519"), filepath.Join(ssh, "id_ed25519")
	for _, k := range []string{hostKey, userKey} {
		if _, err := run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "berth-bench-lan", "-f", k); err != nil {
			return err
		}
	}
	pub, err := os.ReadFile(userKey + ".pub")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d, "authorized_keys"), pub, 0o600); err != nil {
		return err
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return err
	}
	f := strings.Fields(string(hostPub))
	knownHosts := filepath.Join(ssh, "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(robotIP+" "+f[0]+" "+f[1]+"\n"), 0o600); err != nil {
		return err
	}
	conf := sshtest.Config(robotIP+":22", d, []string{"host_ed25519"}, "AllowTcpForwarding yes")
	if err := os.WriteFile(filepath.Join(d, "sshd_config"), []byte(conf), 0o600); err != nil {
		return err
	}
	// berth reads $HOME/.ssh; OpenSSH's ssh reads the passwd home, so it gets -F with absolute paths.
	client := fmt.Sprintf("Host %s\n  User root\n  IdentityFile %s\n", robotIP, userKey)
	if err := os.WriteFile(filepath.Join(ssh, "config"), []byte(client), 0o600); err != nil {
		return err
	}
	r.sshConfig = filepath.Join(r.dir, "ssh_config")
	openssh := client + fmt.Sprintf("  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n  IdentitiesOnly yes\n", knownHosts)
	if err := os.WriteFile(r.sshConfig, []byte(openssh), 0o600); err != nil {
		return err
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	p, err := startProc("robot sshd", filepath.Join(r.dir, "sshd.log"), r.nsenter("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(d, "sshd_config"))...)
	if err != nil {
		return err
	}
	r.sshd = p
	r.onDown(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	return waitFor(ctx, "robot sshd", p, 20*time.Second, func() error {
		c, err := net.DialTimeout("tcp", robotIP+":22", time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// ssh returns the argv of OpenSSH's ssh to the robot.
func (r *robot) ssh(args ...string) []string {
	return append([]string{"ssh", "-F", r.sshConfig}, append(args[:len(args):len(args)], robotIP)...)
}

func (r *robot) startBerthd(ctx context.Context) error {
	state := filepath.Join(r.dir, "berthd-state")
	r.berthdSock = filepath.Join(r.dir, "berthd.sock")
	p, err := startProc("robot berthd", filepath.Join(r.dir, "berthd.log"), r.nsenter(filepath.Join(r.bin, "berthd"),
		"--state-dir", state, "--socket", r.berthdSock, "--name", "bench-lan-robot",
		"--docker-host", "unix://"+r.dockerSock)...)
	if err != nil {
		return err
	}
	r.berthd = p
	r.onDown(func() { p.stop(syscall.SIGTERM, 20*time.Second) })
	return waitFor(ctx, "robot berthd", p, 30*time.Second, func() error {
		c, err := net.Dial("unix", r.berthdSock)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// berthEnv is the environment berth runs with on the laptop.
func (r *robot) berthEnv() []string {
	return []string{"HOME=" + r.home, "BERTH_CACHE=" + r.cache, fmt.Sprintf("BERTH_PUSH_PORT=%d", r.pushPort)}
}

// target is berth's --to for the robot.
func (r *robot) target() string {
	return fmt.Sprintf("ssh://root@%s?socket=%s&berthd=%s", robotIP, r.berthdSock, filepath.Join(r.bin, "berthd"))
}

func (r *robot) startRegistry(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	r.regPort = port
	d := filepath.Join(r.dir, "registry")
	if err := os.MkdirAll(filepath.Join(d, "storage"), 0o700); err != nil {
		return err
	}
	// Debian's /etc/docker/registry/config.yml turns on htpasswd auth; this one has none, keeps
	// blobs on the filesystem and listens on the robot's loopback only.
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
`, filepath.Join(d, "storage"), port)
	if err := os.WriteFile(filepath.Join(d, "config.yml"), []byte(conf), 0o600); err != nil {
		return err
	}
	p, err := startProc("robot registry", filepath.Join(r.dir, "registry.log"), r.nsenter("docker-registry", "serve", filepath.Join(d, "config.yml"))...)
	if err != nil {
		return err
	}
	r.registry = p
	r.onDown(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	fwd := fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", port, port)
	t, err := startProc("ssh tunnel", filepath.Join(r.dir, "tunnel.log"), r.ssh("-N", "-o", "ExitOnForwardFailure=yes", "-L", fwd)...)
	if err != nil {
		return err
	}
	r.tunnel = t
	r.onDown(func() { t.stop(syscall.SIGTERM, 5*time.Second) })
	url := fmt.Sprintf("http://127.0.0.1:%d/v2/", port)
	return waitFor(ctx, "registry through the SSH tunnel", t, 30*time.Second, func() error {
		if r.registry.exited() {
			return fmt.Errorf("registry exited: %s", r.registry.logTail())
		}
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// shape puts a tbf of rateMbit on both ends of the veth, or removes it.
func (r *robot) shape(ctx context.Context, on bool, rateMbit int) error {
	if on == r.shaped {
		return nil
	}
	for _, dev := range [][]string{{"tc"}, {"ip", "netns", "exec", netnsName, "tc"}} {
		name := vethHost
		if len(dev) > 1 {
			name = vethRobot
		}
		args := append(dev[1:len(dev):len(dev)], "qdisc", "del", "dev", name, "root")
		if on {
			args = append(dev[1:len(dev):len(dev)], "qdisc", "replace", "dev", name, "root", "tbf",
				"rate", fmt.Sprintf("%dmbit", rateMbit), "burst", "32kbit", "latency", "400ms")
		}
		if _, err := run(ctx, dev[0], args...); err != nil {
			return err
		}
	}
	r.shaped = on
	return nil
}

// wire is the bytes through the host end of the veth, both directions.
func wire() (tx, rx int64) {
	read := func(s string) int64 {
		b, err := os.ReadFile("/sys/class/net/" + vethHost + "/statistics/" + s)
		if err != nil {
			panic(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			panic(err)
		}
		return n
	}
	return read("tx_bytes"), read("rx_bytes")
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}
