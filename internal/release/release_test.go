package release

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func spec() Spec {
	return Spec{Services: map[string]Service{
		"db":  {Image: "db:1", Healthcheck: &Healthcheck{Test: []string{"CMD", "true"}}},
		"api": {Image: "api:1", DependsOn: map[string]Dependency{"db": {Condition: ConditionHealthy, Required: true}}},
		"ui":  {Image: "ui:1", DependsOn: map[string]Dependency{"api": {Condition: ConditionStarted, Required: true}}},
		"log": {Image: "log:1"},
	}}
}

func TestOrder(t *testing.T) {
	s := spec()
	got, err := s.Order()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"db", "api", "log", "ui"}, got); d != "" {
		t.Errorf("order (-want +got):\n%s", d)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"ok", func(*Spec) {}, ""},
		{"cycle", func(s *Spec) {
			db := s.Services["db"]
			db.DependsOn = map[string]Dependency{"ui": {Condition: ConditionStarted, Required: true}}
			s.Services["db"] = db
		}, "cycle"},
		{"missing-dependency", func(s *Spec) {
			s.Services["x"] = Service{Image: "x", DependsOn: map[string]Dependency{"nope": {Condition: ConditionStarted, Required: true}}}
		}, "depends on nope"},
		{"optional-missing-dependency", func(s *Spec) {
			s.Services["x"] = Service{Image: "x", DependsOn: map[string]Dependency{"nope": {Condition: ConditionStarted}}}
		}, ""},
		{"bad-strategy", func(s *Spec) {
			s.Services["x"] = Service{Image: "x", Labels: map[string]string{LabelStrategy: "yolo"}}
		}, "yolo"},
		{"bad-handover-timeout", func(s *Spec) {
			s.Services["x"] = Service{Image: "x", Labels: map[string]string{LabelHandoverTimeout: "soon"}}
		}, "soon"},
		{"no-image", func(s *Spec) { s.Services["x"] = Service{} }, "no image"},
		{"bad-name", func(s *Spec) { s.Services["X Y"] = Service{Image: "x"} }, `"X Y"`},
		{"undefined-volume", func(s *Spec) {
			s.Services["x"] = Service{Image: "x", Mounts: []Mount{{Type: "volume", Source: "data", Target: "/d"}}}
		}, "volume data"},
		{"undefined-network", func(s *Spec) {
			s.Services["x"] = Service{Image: "x", Networks: map[string]NetworkRef{"back": {}}}
		}, "network back"},
		{"no-services", func(s *Spec) { s.Services = nil }, "no services"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spec()
			tc.change(&s)
			err := s.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid mentioning %q", err, tc.want)
			}
		})
	}
}

func TestSealIgnoresCreationTime(t *testing.T) {
	a := &Release{App: "robot", Version: "v1", Spec: spec(), Created: time.Unix(1, 0)}
	b := &Release{App: "robot", Version: "v1", Spec: spec(), Created: time.Unix(2, 0)}
	a.Seal()
	b.Seal()
	if a.ID != b.ID || !strings.HasPrefix(a.ID, "sha256:") {
		t.Fatalf("IDs %s %s", a.ID, b.ID)
	}
	b.Version = "v2"
	b.Seal()
	if a.ID == b.ID {
		t.Fatal("version change kept the ID")
	}
}

func TestDurationJSON(t *testing.T) {
	var h Healthcheck
	if err := json.Unmarshal([]byte(`{"interval":"1m30s","timeout":2000000000}`), &h); err != nil {
		t.Fatal(err)
	}
	if h.Interval.D() != 90*time.Second || h.Timeout.D() != 2*time.Second {
		t.Fatalf("%v %v", h.Interval.D(), h.Timeout.D())
	}
	b, _ := json.Marshal(h)
	if !strings.Contains(string(b), `"interval":"1m30s"`) {
		t.Fatal(string(b))
	}
	if err := json.Unmarshal([]byte(`{"interval":"soon"}`), &h); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad duration: %v", err)
	}
}

// FuzzDecode feeds untrusted release JSON (what the local API and, later,
// the fleet server receive) to Decode: it must never panic, and whatever it
// accepts must validate, order and seal.
func FuzzDecode(f *testing.F) {
	r := &Release{App: "robot", Version: "v1", Spec: spec()}
	b, _ := json.Marshal(r)
	f.Add(b)
	f.Add([]byte(`{"app":"a","spec":{"services":{"w":{"image":"x","depends_on":{"w":{"condition":"service_started","required":true}}}}}}`))
	f.Add([]byte(`{"app":"a","spec":{"services":{"w":{"image":"x","stop_grace_period":"10s","healthcheck":{"retries":3}}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Spec.Order(); err != nil {
			t.Fatal(err)
		}
		r.Seal()
		for _, s := range r.Spec.Services {
			_ = s.Hash()
			_ = s.HandoverTimeout()
		}
	})
}

// TestFileName: two values of one secret never share a file.
func TestFileName(t *testing.T) {
	a := FileRef{Source: "tok", Target: "/run/secrets/tok", Digest: "hmac-sha256:0123456789abcdef0123456789abcdef"}
	b := a
	b.Digest = "hmac-sha256:fedcba9876543210fedcba9876543210"
	if a.FileName(KindSecret) == b.FileName(KindSecret) {
		t.Errorf("two digests, one file: %s", a.FileName(KindSecret))
	}
	if got, want := a.FileName(KindSecret), "secret-tok-0123456789abcdef01234567-0-0-444"; got != want {
		t.Errorf("FileName = %q, want %q", got, want)
	}
}
