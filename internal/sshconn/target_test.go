package sshconn

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseTarget(t *testing.T) {
	def := func(t Target) Target {
		if t.Socket == "" {
			t.Socket = DefaultSocket
		}
		if t.Berthd == "" {
			t.Berthd = DefaultBerthd
		}
		return t
	}
	tests := []struct {
		name, in string
		want     Target
		err      string // substring of the error; "" = no error
	}{
		{name: "alias", in: "robot", want: def(Target{Host: "robot"})},
		{name: "user-host", in: "pi@robot.local", want: def(Target{User: "pi", Host: "robot.local"})},
		{name: "url", in: "ssh://pi@10.0.0.7", want: def(Target{User: "pi", Host: "10.0.0.7"})},
		{name: "url-port", in: "ssh://pi@10.0.0.7:2222", want: def(Target{User: "pi", Host: "10.0.0.7", Port: 2222})},
		{name: "url-alias", in: "ssh://robot", want: def(Target{Host: "robot"})},
		{name: "url-slash", in: "ssh://robot/", want: def(Target{Host: "robot"})},
		{name: "url-ipv6", in: "ssh://root@[fd00::7]:22", want: def(Target{User: "root", Host: "fd00::7", Port: 22})},
		{name: "url-query", in: "ssh://root@robot?socket=/var/run/b.sock&berthd=/opt/berth/bin/berthd",
			want: Target{User: "root", Host: "robot", Socket: "/var/run/b.sock", Berthd: "/opt/berth/bin/berthd"}},
		{name: "url-query-slash", in: "ssh://robot/?berthd=/usr/local/bin/berthd", want: def(Target{Host: "robot", Berthd: "/usr/local/bin/berthd"})},

		{name: "empty", in: "", err: "empty SSH target"},
		{name: "host-port", in: "pi@robot:2222", err: "use the URL form: ssh://pi@robot:2222"},
		{name: "bare-ipv6", in: "fd00::7", err: "ssh://[fd00::7]:22"},
		{name: "empty-user", in: "@robot", err: "empty user name"},
		{name: "no-host", in: "pi@", err: "no host"},
		{name: "dash-host", in: "-oProxyCommand=x", err: "may not start with '-'"},
		{name: "query-short-form", in: "robot?socket=/x", err: "need the URL form"},
		{name: "scheme", in: "http://robot", err: `scheme "http" is not supported`},
		{name: "password", in: "ssh://pi:secret@robot", err: "passwords are not supported"},
		{name: "password-redacted", in: "ssh://pi:secret@robot", err: `"ssh://pi@robot"`},
		{name: "bad-port", in: "ssh://robot:99999", err: `port "99999"`},
		{name: "zero-port", in: "ssh://robot:0", err: `port "0"`},
		{name: "empty-port", in: "ssh://robot:", err: "empty port"},
		{name: "path", in: "ssh://robot/run/berth.sock", err: "give berthd's socket as ?socket=/run/berth.sock"},
		{name: "unknown-option", in: "ssh://robot?sock=/x", err: `unknown option "sock" (known: socket, berthd)`},
		{name: "relative-socket", in: "ssh://robot?socket=berthd.sock", err: "must be an absolute path"},
		{name: "empty-berthd", in: "ssh://robot?berthd=", err: "must name berthd"},
		{name: "twice", in: "ssh://robot?socket=/a&socket=/b", err: "socket given 2 times"},
		{name: "no-url-host", in: "ssh://pi@", err: "no host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTarget(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseTarget(%q) = %+v, %v; want an error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTarget(%q): %v", tt.in, err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("ParseTarget(%q) (-want +got):\n%s", tt.in, d)
			}
			// String gives a target that parses back the same.
			again, err := ParseTarget(got.String())
			if err != nil {
				t.Fatalf("ParseTarget(%q) (from String): %v", got.String(), err)
			}
			if d := cmp.Diff(got, again); d != "" {
				t.Errorf("round trip through %q (-first +second):\n%s", got.String(), d)
			}
		})
	}
}

func TestParseJump(t *testing.T) {
	type jump struct {
		User, Host string
		Port       int
	}
	tests := []struct {
		in   string
		want jump
		err  string
	}{
		{in: "bastion", want: jump{Host: "bastion"}},
		{in: "ops@bastion", want: jump{User: "ops", Host: "bastion"}},
		{in: "ops@bastion:2200", want: jump{User: "ops", Host: "bastion", Port: 2200}},
		{in: "[fd00::1]:2200", want: jump{Host: "fd00::1", Port: 2200}},
		{in: "ssh://ops@bastion:2200", want: jump{User: "ops", Host: "bastion", Port: 2200}},
		{in: "bastion:x", err: `port "x"`},
		{in: "@bastion", err: "empty user name"},
		{in: "ssh://bastion?socket=/x", err: "apply to the robot"},
	}
	for _, tt := range tests {
		t.Run(strings.NewReplacer("/", "_", ":", "_").Replace(tt.in), func(t *testing.T) {
			u, h, p, err := parseJump(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseJump(%q) = %v; want an error containing %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, jump{u, h, p}); d != "" {
				t.Errorf("parseJump(%q) (-want +got):\n%s", tt.in, d)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	home := t.TempDir()
	cfgFile := filepath.Join(home, "config")
	const cfg = `
Host robot
    HostName 10.0.0.7
    Port 2222
    User pi
    IdentityFile ~/.ssh/robot_key
    IdentityFile %d/keys/%r@%h
    ProxyJump ops@bastion:2200,relay
    UserKnownHostsFile ~/.ssh/fleet_hosts
    ConnectTimeout 7

Host bastion
    HostName bastion.example.com
    ProxyJump gate

Host gate
    ProxyJump none

Host relay
    HostName %h.example.com
    IdentitiesOnly yes
    IdentityAgent none

Host loop
    ProxyJump loop

Host *
    User fallback
    ProxyJump gate
`
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(cfgFile, home, "me", true)
	if err != nil {
		t.Fatal(err)
	}
	robot, err := c.resolve("", "robot", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := hop{
		alias: "robot", host: "10.0.0.7", port: 2222, user: "pi",
		identities: []string{home + "/.ssh/robot_key", home + "/keys/pi@10.0.0.7"},
		knownHosts: []string{home + "/.ssh/fleet_hosts"},
		jumps:      []string{"ops@bastion:2200", "relay"},
		timeout:    7 * time.Second,
	}
	if d := cmp.Diff(want, robot, cmp.AllowUnexported(hop{})); d != "" {
		t.Errorf("resolve(robot) (-want +got):\n%s", d)
	}
	// The user's own user and port win over the config.
	if h, _ := c.resolve("root", "robot", 22); h.user != "root" || h.port != 22 {
		t.Errorf("resolve(root@robot:22) = %s; want the given user and port", h)
	}

	route, err := c.route(robot, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range route {
		got = append(got, h.String())
	}
	// gate comes first: it is bastion's own ProxyJump.
	wantRoute := []string{"fallback@gate:22", "bastion (ops@bastion.example.com:2200)", "relay (fallback@relay.example.com:22)"}
	if d := cmp.Diff(wantRoute, got); d != "" {
		t.Errorf("route(robot) (-want +got):\n%s", d)
	}
	if !route[2].identitiesOnly || route[2].agent != "none" {
		t.Errorf("relay: IdentitiesOnly/IdentityAgent not read: %+v", route[2])
	}

	if _, err := c.route(hop{alias: "loop", jumps: []string{"loop"}}, 0); err == nil || !strings.Contains(err.Error(), "is there a loop?") {
		t.Errorf("route(loop) = %v; want a loop error", err)
	}

	// Without a config file every host is itself, as the local user, on port 22.
	none, err := loadConfig(filepath.Join(home, "missing"), home, "me", false)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := none.resolve("", "robot", 0); h.String() != "me@robot:22" {
		t.Errorf("resolve without config = %s; want me@robot:22", h)
	}
	if _, err := loadConfig(filepath.Join(home, "missing"), home, "me", true); err == nil {
		t.Error("an explicit config file that is missing is not an error")
	}
}
