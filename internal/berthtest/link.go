package berthtest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strconv"
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
	PeerIP string // the laptop's address, inside NetNS
	veth   string // the laptop's end, inside NetNS
	host   string // the robot's end
}

// NewLink makes the link: rate like "20mbit", loss a drop probability
// ("0.01"; "" for none).
func NewLink(t testing.TB, rate, loss string) *Link {
	t.Helper()
	requireRoot(t)
	id := randomID()
	net := rand.IntN(200) + 20
	l := &Link{NetNS: "bt-" + id, HostIP: fmt.Sprintf("10.213.%d.1", net), PeerIP: fmt.Sprintf("10.213.%d.2", net), veth: "vn" + id, host: "vh" + id}
	host := l.host
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", l.NetNS).Run()
		exec.Command("ip", "link", "del", host).Run() // gone with the namespace, normally
	})
	for _, c := range [][]string{
		{"ip", "netns", "add", l.NetNS},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", l.veth, "netns", l.NetNS},
		{"ip", "addr", "add", l.HostIP + "/30", "dev", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", l.NetNS, "addr", "add", l.PeerIP + "/30", "dev", l.veth},
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

// ShapeInbound slows and makes lossy the other direction too, robot to
// laptop (a fleet server's answers to a device in NetNS): tbf on the
// robot's end, iptables in NetNS dropping what arrives. Both go with the
// namespace.
func (l *Link) ShapeInbound(t testing.TB, rate, loss string) {
	t.Helper()
	cmds := [][]string{{"tc", "qdisc", "add", "dev", l.host, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"}}
	if loss != "" {
		cmds = append(cmds, []string{"ip", "netns", "exec", l.NetNS, "iptables", "-A", "INPUT", "-i", l.veth, "-m", "statistic", "--mode", "random", "--probability", loss, "-j", "DROP"})
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
}

var bytesReceived = regexp.MustCompile(`bytes_received:(\d+)`)

// Received is how many bytes the TCP connections between the two ends
// have taken in on one side — the robot's (host) or the laptop's (NetNS)
// — counting each byte once (TCP's own retransmissions do not count, nor
// the connections already closed). Read with the link down, it is what
// came across before the cut.
func (l *Link) Received(t testing.TB, robotSide bool) int64 {
	t.Helper()
	args := []string{"ss", "-tinH", "state", "established", "dst", l.HostIP}
	if robotSide {
		args = []string{"ss", "-tinH", "state", "established", "dst", l.PeerIP}
	} else {
		args = append([]string{"ip", "netns", "exec", l.NetNS}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).Output()
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	var n int64
	for _, m := range bytesReceived.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseInt(string(m[1]), 10, 64)
		n += v
	}
	return n
}

// Reset ends every TCP connection between the two ends, on both sides
// (ss -K), as a connection that broke: each side's next read or write
// fails at once.
func (l *Link) Reset(t testing.TB) {
	t.Helper()
	for _, c := range [][]string{
		{"ss", "-K", "-tn", "dst", l.PeerIP},
		{"ip", "netns", "exec", l.NetNS, "ss", "-K", "-tn", "dst", l.HostIP},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
}
