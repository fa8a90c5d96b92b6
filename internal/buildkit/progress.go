package buildkit

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	controlapi "github.com/moby/buildkit/api/services/control"
)

// Progress turns BuildKit's progress messages into plain lines, like the
// docker CLI's --progress=plain: each step (vertex) gets a number when it
// starts, "#3 [build 2/4] RUN make", then its output, "#3 make: done", and
// how it ended: "#3 DONE 1.2s", "#3 CACHED" or "#3 ERROR: …".
type Progress struct {
	line     func(string)
	vertices map[string]*vertex // by digest
	order    []*vertex
	failed   *vertex
	numbered int // steps that have a number
	skipped  int // messages that did not decode
}

type vertex struct {
	n                      int // 0 until it says something
	name                   string
	started, ended, cached bool
	start                  time.Time
	partial                []byte          // the log's last line until it ends
	transfers              map[string]bool // its transfers that are done
	errorText              string
}

// maxLine bounds a line of a step's output: longer ones are cut.
const maxLine = 64 << 10

// NewProgress makes a Progress that writes lines with line.
func NewProgress(line func(string)) *Progress {
	return &Progress{line: line, vertices: map[string]*vertex{}}
}

// Trace takes one progress message (the aux of a moby.buildkit.trace
// message of the engine's build output: a StatusResponse). A message that
// is not one is skipped with a note, once.
func (p *Progress) Trace(msg []byte) {
	var st controlapi.StatusResponse
	if err := st.UnmarshalVT(msg); err != nil {
		if p.skipped == 0 {
			p.line(fmt.Sprintf("(skipped a BuildKit progress message berth cannot decode: %v)", err))
		}
		p.skipped++
		return
	}
	for _, v := range st.GetVertexes() {
		if v == nil {
			continue
		}
		x := p.vertex(v.GetDigest())
		if v.GetName() != "" {
			x.name = v.GetName()
		}
		if v.GetStarted() != nil && !x.started {
			x.started = true
			x.start = v.GetStarted().AsTime()
			p.say(x, x.name)
		}
		if v.GetCached() && !x.cached {
			x.cached = true
			if !x.started {
				x.started = true
				p.say(x, x.name)
			}
		}
		if v.GetError() != "" && x.errorText == "" {
			x.errorText = v.GetError()
			if p.failed == nil && !strings.HasSuffix(x.errorText, "context canceled") {
				p.failed = x
			}
		}
	}
	for _, s := range st.GetStatuses() {
		if s == nil || s.GetCompleted() == nil || s.GetID() == "" {
			continue
		}
		x := p.vertex(s.GetVertex())
		if x.transfers == nil {
			x.transfers = map[string]bool{}
		}
		if !x.transfers[s.GetID()] {
			x.transfers[s.GetID()] = true
			if s.GetCurrent() > 0 {
				p.say(x, fmt.Sprintf("%s %s done", s.GetID(), size(s.GetCurrent())))
			} else {
				p.say(x, s.GetID()+" done")
			}
		}
	}
	for _, l := range st.GetLogs() {
		if l == nil {
			continue
		}
		x := p.vertex(l.GetVertex())
		b := append(x.partial, l.GetMsg()...)
		for {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				break
			}
			p.say(x, strings.TrimRight(string(b[:i]), "\r"))
			b = b[i+1:]
		}
		x.partial = append([]byte(nil), b...)
		if len(x.partial) > maxLine {
			p.flush(x)
		}
	}
	for _, w := range st.GetWarnings() {
		if w == nil {
			continue
		}
		p.say(p.vertex(w.GetVertex()), "WARN: "+string(w.GetShort()))
	}
	// how steps ended, after their output of this message
	for _, v := range st.GetVertexes() {
		if v == nil {
			continue
		}
		x := p.vertex(v.GetDigest())
		if v.GetCompleted() != nil && !x.ended {
			x.ended = true
			p.flush(x)
			switch {
			case x.errorText != "":
				p.say(x, "ERROR: "+x.errorText)
			case x.cached:
				p.say(x, "CACHED")
			default:
				d := v.GetCompleted().AsTime().Sub(x.start)
				p.say(x, fmt.Sprintf("DONE %.1fs", max(d.Seconds(), 0)))
			}
		}
	}
}

// Flush writes what remains of the steps' output.
func (p *Progress) Flush() {
	for _, x := range p.order {
		p.flush(x)
	}
}

// Failed names the step that failed first ("" if none did): the
// Dockerfile's instruction as BuildKit shows it, "[build 2/4] RUN make".
func (p *Progress) Failed() string {
	if p.failed == nil {
		return ""
	}
	return p.failed.name
}

func (p *Progress) vertex(digest string) *vertex {
	x, ok := p.vertices[digest]
	if !ok {
		x = &vertex{}
		p.vertices[digest] = x
		p.order = append(p.order, x)
	}
	return x
}

func (p *Progress) say(x *vertex, text string) {
	if x.n == 0 {
		p.numbered++
		x.n = p.numbered
	}
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		p.line(fmt.Sprintf("#%d %s", x.n, strings.TrimRight(l, "\r")))
	}
}

func (p *Progress) flush(x *vertex) {
	if len(x.partial) > 0 {
		p.say(x, strings.TrimRight(string(x.partial), "\r"))
		x.partial = nil
	}
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.2fMB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.2fkB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
