// Package mergepatch makes and applies JSON merge patches (RFC 7386): a
// patch is the JSON object of what changed — members changed or added
// with their new values, members removed as null, unchanged members left
// out. Devices send their state to the fleet server as such a patch
// against the state the server last acknowledged.
//
// A merge patch cannot set a member to null (null means "remove"), nor
// patch inside an array (an array is replaced whole). For documents
// decoded into Go structs that is no loss: a null member and a missing
// one decode alike.
package mergepatch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
)

// Diff returns the merge patch that turns the JSON document from into to.
// Applied to from, it gives a document equal to to but for null members:
// one that to has and from lacks stays missing.
func Diff(from, to []byte) ([]byte, error) {
	a, err := decode(from)
	if err != nil {
		return nil, fmt.Errorf("merge patch: the document to diff from: %w", err)
	}
	b, err := decode(to)
	if err != nil {
		return nil, fmt.Errorf("merge patch: the document to diff to: %w", err)
	}
	return DiffDocs(a, b)
}

// Doc is a JSON document decoded (by Decode) for DiffDocs and ApplyDoc:
// one who diffs or patches the same document again and again keeps it
// decoded rather than decode it each time.
type Doc = any

// Decode decodes a JSON document for DiffDocs and ApplyDoc.
func Decode(b []byte) (Doc, error) { return decode(b) }

// DiffDocs is Diff of decoded documents; neither is changed.
func DiffDocs(from, to Doc) ([]byte, error) {
	return json.Marshal(diff(from, to))
}

func diff(a, b any) any {
	ao, aok := a.(map[string]any)
	bo, bok := b.(map[string]any)
	if !aok || !bok {
		return b
	}
	p := map[string]any{}
	for _, k := range slices.Sorted(maps.Keys(ao)) {
		if _, ok := bo[k]; !ok {
			p[k] = nil
		}
	}
	for k, bv := range bo {
		av, ok := ao[k]
		switch {
		case !ok:
			p[k] = bv
		case isObject(av) && isObject(bv):
			if d := diff(av, bv).(map[string]any); len(d) > 0 {
				p[k] = d
			}
		case !reflect.DeepEqual(av, bv):
			p[k] = bv
		}
	}
	return p
}

// Apply applies a merge patch to a JSON document and returns the result.
func Apply(doc, patch []byte) ([]byte, error) {
	d, err := decode(doc)
	if err != nil {
		return nil, fmt.Errorf("merge patch: the document: %w", err)
	}
	p, err := decode(patch)
	if err != nil {
		return nil, fmt.Errorf("merge patch: the patch: %w", err)
	}
	return json.Marshal(apply(d, p))
}

// ApplyDoc is Apply to a decoded document, which it changes and returns
// changed (the result may be another value, so use the one returned),
// with its encoding.
func ApplyDoc(doc Doc, patch []byte) (Doc, []byte, error) {
	p, err := decode(patch)
	if err != nil {
		return nil, nil, fmt.Errorf("merge patch: the patch: %w", err)
	}
	d := apply(doc, p)
	b, err := json.Marshal(d)
	return d, b, err
}

func apply(d, p any) any {
	po, ok := p.(map[string]any)
	if !ok {
		return p
	}
	do, ok := d.(map[string]any)
	if !ok {
		do = map[string]any{}
	}
	for k, pv := range po {
		if pv == nil {
			delete(do, k)
			continue
		}
		do[k] = apply(do[k], pv)
	}
	return do
}

func isObject(v any) bool {
	_, ok := v.(map[string]any)
	return ok
}

// decode reads one JSON value, numbers kept as written.
func decode(b []byte) (any, error) {
	if !json.Valid(b) {
		return nil, fmt.Errorf("not one JSON value")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}
