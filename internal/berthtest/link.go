package berthtest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

// Link is a network link of the test's own: a network namespace (the
// laptop's side) joined to the host (the robot's side) by a veth pair,
// slowed with tbf and made lossy with iptables (this kernel has no netem),
// and cut by taking the veth down. Cleanup deletes the namespace, and with
// it the veth pair, the qdisc and the namespace's iptables rules.
type Link struct {
	NetNS  string
	HostIP string // the robot's address on the link
	veth   string // the laptop's end, inside NetNS
}

// NewLink makes the link: rate like "20mbit", loss a drop probability
// ("0.01"; "" for none).
func NewLink(t testing.TB, rate, loss string) *Link {
	t.Helper()
	requireRoot(t)
	id := randomID()
	net := rand.IntN(200) + 20
	l := &Link{NetNS: "bt-" + id, HostIP: fmt.Sprintf("10.213.%d.1", net), veth: "vn" + id}
	host := "vh" + id
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", l.NetNS).Run()
		exec.Command("ip", "link", "del", host).Run() // gone with the namespace, normally
	})
	for _, c := range [][]string{
		{"ip", "netns", "add", l.NetNS},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", l.veth, "netns", l.NetNS},
		{"ip", "addr", "add", l.HostIP + "/30", "dev", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", l.NetNS, "addr", "add", fmt.Sprintf("10.213.%d.2/30", net), "dev", l.veth},
		{"ip", "-n", l.NetNS, "link", "set", l.veth, "up"},
		{"ip", "-n", l.NetNS, "link", "set", "lo", "up"},
		{"tc", "-n", l.NetNS, "qdisc", "add", "dev", l.veth, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	if loss != "" {
		c := []string{"ip", "netns", "exec", l.NetNS, "iptables", "-A", "OUTPUT", "-o", l.veth, "-m", "statistic", "--mode", "random", "--probability", loss, "-j", "DROP"}
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	return l
}

// Command runs name inside the link's namespace (the laptop's side).
func (l *Link) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + l.NetNS, name}, args...)...)
	cmd.Env = os.Environ()
	return cmd
}

// Up takes the link up or down.
func (l *Link) Up(t testing.TB, up bool) {
	t.Helper()
	state := map[bool]string{true: "up", false: "down"}[up]
	if out, err := exec.Command("ip", "-n", l.NetNS, "link", "set", l.veth, state).CombinedOutput(); err != nil {
		t.Fatalf("link %s: %v\n%s", state, err, out)
	}
}

// Sent is how many bytes the laptop's side has put on the link.
func (l *Link) Sent(t testing.TB) int64 {
	t.Helper()
	out, err := exec.Command("ip", "-n", l.NetNS, "-j", "-s", "link", "show", "dev", l.veth).Output()
	if err != nil {
		t.Fatalf("link counters: %v", err)
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("link counters: %v: %s", err, out)
	}
	return links[0].Stats64.TX.Bytes
}
