package buildkit

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	controlapi "github.com/moby/buildkit/api/services/control"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func marshal(t testing.TB, st *controlapi.StatusResponse) []byte {
	t.Helper()
	b, err := st.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// trace is a failed build as the engine reports it: a cached step, a step
// with a transfer, a step whose output comes in pieces and that fails, and a
// step cancelled because of it.
func trace(t testing.TB) [][]byte {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	return [][]byte{
		marshal(t, &controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{
			{Digest: "sha256:a", Name: "[internal] load build definition from Dockerfile", Started: ts(0)},
		}}),
		marshal(t, &controlapi.StatusResponse{
			Vertexes: []*controlapi.Vertex{{Digest: "sha256:a", Name: "[internal] load build definition from Dockerfile", Started: ts(0), Completed: ts(300 * time.Millisecond)}},
			Statuses: []*controlapi.VertexStatus{{ID: "transferring dockerfile", Vertex: "sha256:a", Current: 2048, Completed: ts(200 * time.Millisecond)}},
		}),
		marshal(t, &controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{
			{Digest: "sha256:b", Name: "[1/3] FROM base", Cached: true, Started: ts(time.Second), Completed: ts(time.Second)},
			{Digest: "sha256:c", Name: "[2/3] RUN make", Started: ts(time.Second)},
			{Digest: "sha256:d", Name: "[3/3] COPY out /", Started: ts(time.Second)},
		}}),
		marshal(t, &controlapi.StatusResponse{Logs: []*controlapi.VertexLog{
			{Vertex: "sha256:c", Msg: []byte("cc main.c\nld ma")},
			{Vertex: "sha256:c", Msg: []byte("in\r\nmake: *** [all] Error 1")},
		}}),
		marshal(t, &controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{
			{Digest: "sha256:d", Started: ts(time.Second), Completed: ts(2 * time.Second), Error: "context canceled"},
			{Digest: "sha256:c", Name: "[2/3] RUN make", Started: ts(time.Second), Completed: ts(2 * time.Second), Error: "executor failed running [/bin/sh -c make]: exit code: 2"},
		}}),
	}
}

func TestProgress(t *testing.T) {
	var got []string
	p := NewProgress(func(l string) { got = append(got, l) })
	for _, m := range trace(t) {
		p.Trace(m)
	}
	p.Trace([]byte{0xff, 0xff, 0xff}) // not a StatusResponse: skipped with a note, once
	p.Trace([]byte{0x0a, 0x05, 0x0a})
	p.Flush()
	want := []string{
		"#1 [internal] load build definition from Dockerfile",
		"#1 transferring dockerfile 2.00kB done",
		"#1 DONE 0.3s",
		"#2 [1/3] FROM base",
		"#3 [2/3] RUN make",
		"#4 [3/3] COPY out /",
		"#2 CACHED",
		"#3 cc main.c",
		"#3 ld main",
		"#4 ERROR: context canceled",
		"#3 make: *** [all] Error 1",
		"#3 ERROR: executor failed running [/bin/sh -c make]: exit code: 2",
	}
	if len(got) != len(want)+1 || !strings.HasPrefix(got[len(got)-1], "(skipped a BuildKit progress message") {
		t.Errorf("want one note on the messages that did not decode, got %q", got)
	} else {
		got = got[:len(got)-1]
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	if f := p.Failed(); f != "[2/3] RUN make" {
		t.Errorf("Failed() = %q, want the RUN step", f)
	}
}

// FuzzProgress: whatever the engine sends as a progress message, Trace
// neither panics nor writes a line with a newline in it.
func FuzzProgress(f *testing.F) {
	for _, m := range trace(f) {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, msg []byte) {
		p := NewProgress(func(l string) {
			if strings.Contains(l, "\n") {
				t.Fatalf("line with a newline: %q", l)
			}
		})
		p.Trace(msg)
		p.Trace(msg)
		p.Flush()
		_ = p.Failed()
	})
}
