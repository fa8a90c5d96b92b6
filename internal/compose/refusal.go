package compose

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/compose-spec/compose-go/v2/template"
	"go.yaml.in/yaml/v4"
)

// source is one Compose file, named as the caller named it.
type source struct {
	name    string // as given to Load
	abs     string
	content []byte
	docs    []*yaml.Node // parsed on the first refusal
	parsed  bool
}

// refusal is one attribute berth does not run, and where it is written.
type refusal struct {
	file int // index into the files given to Load
	name string
	line int
	attr string
	hint string
}

// refusals collects every refusal of a load; as an error it lists them one a
// line and wraps release.ErrInvalid.
type refusals []refusal

// add refuses the attribute at path (such as services, web, build; "[]" for
// list items) in every file that writes it. want, when set, picks the list
// item that holds that value (a mount target, a port).
func (r *refusals) add(srcs []source, path []string, want, hint string) {
	attr := strings.Join(path, ".")
	var best refusal
	bestDepth, found := 0, false
	for i := range srcs {
		s := &srcs[i]
		for _, doc := range s.nodes() {
			line, depth := find(doc, path, want)
			if depth == len(path) {
				*r = append(*r, refusal{file: i, name: s.name, line: line, attr: attr, hint: hint})
				found = true
				break
			}
			if depth > bestDepth {
				best, bestDepth = refusal{file: i, name: s.name, line: line}, depth
			}
		}
	}
	if found {
		return
	}
	if bestDepth == 0 { // set by the loader's defaults, not written anywhere: name the first file
		best = refusal{name: srcs[0].name}
	}
	best.attr, best.hint = attr, hint
	*r = append(*r, best)
}

func (r refusals) err() error {
	if len(r) == 0 {
		return nil
	}
	slices.SortFunc(r, func(a, b refusal) int {
		return cmp.Or(cmp.Compare(a.file, b.file), cmp.Compare(a.line, b.line), cmp.Compare(a.attr, b.attr), cmp.Compare(a.hint, b.hint))
	})
	return slices.Compact(r)
}

func (r refusals) Error() string {
	var b strings.Builder
	for i, f := range r {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(f.name)
		if f.line > 0 {
			fmt.Fprintf(&b, ":%d", f.line)
		}
		fmt.Fprintf(&b, ": %s: not supported by berth", f.attr)
		if f.hint != "" {
			fmt.Fprintf(&b, " (%s)", f.hint)
		}
	}
	return b.String()
}

// Unwrap makes errors.Is(err, release.ErrInvalid) hold.
func (r refusals) Unwrap() error { return release.ErrInvalid }

var unknownKeyRE = regexp.MustCompile(`additional properties '([^']+)'`)

// withLine adds the file and line to a loader error that names an attribute
// path, such as "validating /abs/compose.yaml: services.web.ports.0 must be
// a mapping" or "error while interpolating services.web.ports.[].target: …".
// It returns nil for other errors.
func withLine(err error, srcs []source) error {
	msg, in, known := err.Error(), srcs, false
	for i := range srcs {
		if rest, ok := strings.CutPrefix(msg, "validating "+srcs[i].abs+": "); ok {
			msg, in, known = rest, srcs[i:i+1], true
		}
	}
	if rest, ok := strings.CutPrefix(msg, "error while interpolating "); ok {
		msg, known = rest, true
	}
	if !known {
		return nil
	}
	path, _, _ := strings.Cut(msg, " ")
	path = strings.TrimSuffix(path, ":")
	if p, ok := strings.CutSuffix(msg, " false schema"); ok {
		msg = p + ": not a Compose attribute"
	}
	var parts []string
	if path != "" {
		parts = strings.Split(path, ".")
	}
	if m := unknownKeyRE.FindStringSubmatch(msg); m != nil {
		parts = append(parts, m[1])
		msg = strings.Join(parts, ".") + ": not a Compose attribute"
	}
	for i := range in {
		for _, doc := range in[i].nodes() {
			if line, _ := find(doc, parts, ""); line > 0 {
				return fmt.Errorf("%s:%d: %s: %w", in[i].name, line, msg, release.ErrInvalid)
			}
		}
	}
	return fmt.Errorf("%s: %s: %w", in[0].name, msg, release.ErrInvalid)
}

// nodes parses the file's YAML documents, keeping what parses.
func (s *source) nodes() []*yaml.Node {
	if s.parsed {
		return s.docs
	}
	s.parsed = true
	dec := yaml.NewDecoder(bytes.NewReader(s.content))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) || err != nil {
			return s.docs
		}
		s.docs = append(s.docs, &n)
	}
}

// find walks n along parts and returns the line of the deepest node it
// reaches and how many parts it matched. A "[]" part matches any list item,
// the first one holding want when want is set.
func find(n *yaml.Node, parts []string, want string) (line, depth int) {
	n = deref(n)
	if n == nil || len(parts) == 0 {
		return 0, 0
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return 0, 0
		}
		return find(n.Content[0], parts, want)
	}
	better := func(l, d int, at *yaml.Node) {
		if d == 0 {
			l = at.Line
		}
		if d+1 > depth {
			line, depth = l, d+1
		}
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content) && depth < len(parts); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch {
			case k.Value == "<<": // merge key: its mappings hold keys of n
				for _, m := range mergeSources(v) {
					if l, d := find(m, parts, want); d > depth {
						line, depth = l, d
					}
				}
			case k.Value == parts[0]:
				l, d := find(v, parts[1:], want)
				better(l, d, k)
			}
		}
	case yaml.SequenceNode:
		if i, err := strconv.Atoi(parts[0]); err == nil && i >= 0 && i < len(n.Content) {
			l, d := find(n.Content[i], parts[1:], want)
			better(l, d, n.Content[i])
		}
		if parts[0] != "[]" {
			return line, depth
		}
		for _, item := range n.Content {
			if depth == len(parts) {
				break
			}
			if want != "" && !holds(item, want, 0) {
				continue
			}
			// a short syntax item ("data:/data:ro") holds the attribute
			// without naming it: name the item only when it holds want,
			// else the list itself
			if l, d := find(item, parts[1:], want); d == len(parts)-1 || want != "" {
				better(l, d, item)
			}
		}
	}
	return line, depth
}

func mergeSources(v *yaml.Node) []*yaml.Node {
	v = deref(v)
	if v != nil && v.Kind == yaml.SequenceNode {
		return v.Content
	}
	return []*yaml.Node{v}
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// holds reports whether a scalar under n is want, or a short syntax entry
// such as "data:/srv/data:ro" ending in it.
func holds(n *yaml.Node, want string, level int) bool {
	n = deref(n)
	if n == nil || level > 8 {
		return false
	}
	if n.Kind == yaml.ScalarNode {
		v := n.Value
		return v == want || strings.HasSuffix(v, ":"+want) || strings.Contains(v, ":"+want+":")
	}
	for _, c := range n.Content {
		if holds(c, want, level+1) {
			return true
		}
	}
	return false
}

// placeByValue places a loader error that names no attribute path, such as
// "invalid spec: :/media/: empty section between colons", by the value it
// quotes: the scalar of the files whose interpolated text the message holds
// (the longest such). Variables of that scalar that env lacks are named, as
// an unset one is the usual cause. It returns nil when no scalar fits.
func placeByValue(err error, srcs []source, env map[string]string) error {
	msg := err.Error()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var (
		best           string
		bestFile, line int
		unset          []string
	)
	for i := range srcs {
		for _, doc := range srcs[i].nodes() {
			walkScalars(doc, 0, func(n *yaml.Node) {
				v, serr := template.SubstituteWithOptions(n.Value, lookup, template.WithoutLogging)
				if serr != nil || len(v) < 3 || len(v) <= len(best) || !strings.Contains(msg, v) {
					return
				}
				best, bestFile, line = v, i, n.Line
				unset = unset[:0]
				for _, m := range varRE.FindAllStringSubmatch(n.Value, -1) {
					if _, ok := env[m[1]]; !ok {
						unset = append(unset, m[1])
					}
				}
			})
		}
	}
	if best == "" {
		return nil
	}
	hint := ""
	if len(unset) > 0 {
		hint = fmt.Sprintf(" (%s not set: give it in .env, an --env-file or the environment)", strings.Join(unset, ", "))
	}
	return fmt.Errorf("%s:%d: %s%s: %w", srcs[bestFile].name, line, strings.TrimPrefix(msg, "load compose: "), hint, release.ErrInvalid)
}

var varRE = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

func walkScalars(n *yaml.Node, level int, f func(*yaml.Node)) {
	if n == nil || level > 64 {
		return
	}
	if n.Kind == yaml.ScalarNode {
		f(n)
		return
	}
	for _, c := range n.Content {
		walkScalars(c, level+1, f)
	}
}
