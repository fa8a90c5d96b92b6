package mergepatch

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// The examples of RFC 7386, appendix A, and a few of berth's own.
var cases = []struct{ doc, patch, want string }{
	{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
	{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
	{`{"a":"b"}`, `{"a":null}`, `{}`},
	{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
	{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
	{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
	{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
	{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
	{`["a","b"]`, `["c","d"]`, `["c","d"]`},
	{`{"a":"b"}`, `["c"]`, `["c"]`},
	{`{"a":"foo"}`, `null`, `null`},
	{`{"a":"foo"}`, `"bar"`, `"bar"`},
	{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
	{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
	{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	{`{"n":12345678901234567890}`, `{"m":1.50}`, `{"m":1.50,"n":12345678901234567890}`},
}

func TestApply(t *testing.T) {
	for _, c := range cases {
		got, err := Apply([]byte(c.doc), []byte(c.patch))
		if err != nil {
			t.Errorf("Apply(%s, %s): %v", c.doc, c.patch, err)
			continue
		}
		if !sameJSON(t, got, []byte(c.want)) {
			t.Errorf("Apply(%s, %s) = %s, want %s", c.doc, c.patch, got, c.want)
		}
	}
	for _, bad := range [][2]string{{`{`, `{}`}, {`{}`, `{"a":`}, {`{}`, `{} {}`}, {``, `{}`}} {
		if _, err := Apply([]byte(bad[0]), []byte(bad[1])); err == nil {
			t.Errorf("Apply(%q, %q) took it", bad[0], bad[1])
		}
	}
}

func TestDiff(t *testing.T) {
	pairs := [][2]string{
		{`{"apps":{"nav":{"phase":"idle","release":"r1","services":{"a":{"health":"healthy"}}}},"reported":"t1"}`,
			`{"apps":{"nav":{"phase":"switching","release":"r1","services":{"a":{"health":"starting"}}}},"reported":"t2"}`},
		{`{"apps":{"nav":{}, "arm":{"x":[1,2]}}}`, `{"apps":{"arm":{"x":[1,3]}}}`},
		{`{"a":1}`, `{"a":1}`},
		{`{"a":{"b":1}}`, `{"a":2}`},
		{`{"a":2}`, `{"a":{"b":1}}`},
		{`[1]`, `{"a":1}`},
		{`{"a":1}`, `"x"`},
	}
	for _, p := range pairs {
		patch, err := Diff([]byte(p[0]), []byte(p[1]))
		if err != nil {
			t.Fatalf("Diff(%s, %s): %v", p[0], p[1], err)
		}
		got, err := Apply([]byte(p[0]), patch)
		if err != nil {
			t.Fatalf("Apply(%s, %s): %v", p[0], patch, err)
		}
		if !sameJSON(t, got, []byte(p[1])) {
			t.Errorf("Diff(%s, %s) = %s, which applied gives %s", p[0], p[1], patch, got)
		}
	}
	// Unchanged members stay out of the patch.
	patch, _ := Diff([]byte(pairs[0][0]), []byte(pairs[0][1]))
	want := `{"apps":{"nav":{"phase":"switching","services":{"a":{"health":"starting"}}}},"reported":"t2"}`
	if !sameJSON(t, patch, []byte(want)) {
		t.Errorf("patch %s, want %s", patch, want)
	}
	if patch, _ := Diff([]byte(`{"a":1}`), []byte(`{"a":1}`)); string(patch) != `{}` {
		t.Errorf("the patch between equal documents is %s, want {}", patch)
	}
}

// FuzzDiffApply: for any two documents, applying their diff to the first
// gives the second (members that are null aside, which a merge patch
// cannot set), and Apply never panics on any input.
func FuzzDiffApply(f *testing.F) {
	for _, c := range cases {
		f.Add([]byte(c.doc), []byte(c.want))
		f.Add([]byte(c.doc), []byte(c.patch))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		Apply(a, b) // untrusted patches: must not panic
		patch, err := Diff(a, b)
		if err != nil {
			return
		}
		got, err := Apply(a, patch)
		if err != nil {
			t.Fatalf("Apply(%s, Diff = %s): %v", a, patch, err)
		}
		// The same through a decoded document, as a server keeping
		// devices' states decoded applies their patches.
		if da, err := Decode(a); err == nil {
			if _, viaDoc, err := ApplyDoc(da, patch); err != nil || !bytes.Equal(viaDoc, got) {
				t.Fatalf("ApplyDoc(%s, %s) = %s, %v; Apply gave %s", a, patch, viaDoc, err, got)
			}
		}
		want := decoded(t, b)
		if !reflect.DeepEqual(dropNulls(want), dropNulls(decoded(t, got))) {
			t.Fatalf("Diff(%s, %s) = %s; applied: %s", a, b, patch, got)
		}
	})
}

func sameJSON(t *testing.T, a, b []byte) bool {
	return reflect.DeepEqual(decoded(t, a), decoded(t, b))
}

// decoded reads a JSON value with numbers as written (1e1000 is a number
// JSON allows and float64 does not).
func decoded(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}

// dropNulls removes null members from objects (not from arrays).
func dropNulls(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if x == nil {
				delete(v, k)
				continue
			}
			v[k] = dropNulls(x)
		}
	case []any:
		for i := range v {
			v[i] = dropNulls(v[i])
		}
	}
	return v
}
