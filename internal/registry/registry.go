// Package registry speaks the push side of the OCI distribution API under
// /v2/ — the version check, blob uploads (whole, in chunks, streamed, by
// cross-repository mount), blob and manifest lookups, manifest uploads —
// over a Backend that keeps what arrives. The fleet server's backend splits
// pushed layers into its content store (`docker push` to the server); the
// CLI's (internal/localreg) receives the local engine's pushes on loopback
// and sends them on to a device. The package keeps no state and links no
// server: the CLI uses it without the fleet server, and berthd not at all.
package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/release"
)

// Backend keeps what a registry receives. Blobs are one namespace across
// repositories (a blob pushed under one name is there under every name).
// Its errors say what happened in the distribution spec's words (Errorf)
// or wrap release's sentinels.
type Backend interface {
	// StatBlob returns the size, as pushed, of a blob the backend holds;
	// a missing one is an Errorf(CodeBlobUnknown, release.ErrNotFound, …).
	StatBlob(d content.Digest) (int64, error)
	// OpenBlob returns a blob's bytes as pushed (GET); one held in another
	// form (a layer split into pieces) is an Errorf(CodeUnsupported, release.ErrNotFound, …).
	OpenBlob(d content.Digest) (io.ReadCloser, int64, error)
	// StartUpload begins an upload into repo and names it.
	StartUpload(repo string) (id string, err error)
	// UploadSize is how many bytes an upload under way has taken.
	UploadSize(id string) (int64, error)
	// AppendUpload adds body to an upload and returns its size after.
	AppendUpload(id string, body io.Reader) (int64, error)
	// FinishUpload ends an upload whose bytes must be d, and keeps them.
	FinishUpload(id string, d content.Digest) error
	// CancelUpload drops an upload and what it took.
	CancelUpload(id string) error
	// PutManifest keeps a manifest under repo, by digest and, when ref is a
	// tag, by that tag.
	PutManifest(repo, ref string, m *Manifest) error
	// Manifest returns a manifest kept under repo by tag or digest.
	Manifest(repo, ref string) (*Manifest, error)
}

// Codes of the distribution spec's errors.
const (
	CodeBlobUnknown         = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       = "DIGEST_INVALID"
	CodeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     = "MANIFEST_INVALID"
	CodeManifestUnknown     = "MANIFEST_UNKNOWN"
	CodeNameInvalid         = "NAME_INVALID"
	CodeNameUnknown         = "NAME_UNKNOWN"
	CodeSizeInvalid         = "SIZE_INVALID"
	CodeUnauthorized        = "UNAUTHORIZED"
	CodeDenied              = "DENIED"
	CodeUnsupported         = "UNSUPPORTED"
	CodeTooManyRequests     = "TOOMANYREQUESTS"
)

// Errors the API answers with their own statuses.
var (
	// ErrUnsupported: a method this registry does not offer on a resource
	// it has (405), such as DELETE, which the spec lets a registry refuse.
	ErrUnsupported = errors.New("not supported by this registry")
	// ErrRange: a chunk that does not continue its upload (416).
	ErrRange = errors.New("range not satisfiable")
	// ErrTooLarge: over a limit of the backend (413).
	ErrTooLarge = errors.New("too large")
)

// Error is an error in the distribution spec's words: its code goes in the
// body beside the message.
type Error struct {
	Code string
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf makes an Error whose message wraps sentinel (one of release's, or
// of this package's), which decides its HTTP status.
func Errorf(code string, sentinel error, format string, args ...any) error {
	return &Error{Code: code, Err: fmt.Errorf(format+": %w", append(args, sentinel)...)}
}

// Status maps an error to its HTTP status, for users without a mapping of
// their own (the fleet server has one, which maps these sentinels too).
func Status(err error) int {
	switch {
	case errors.Is(err, ErrUnsupported):
		return http.StatusMethodNotAllowed
	case errors.Is(err, ErrRange):
		return http.StatusRequestedRangeNotSatisfiable
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, release.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, release.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, release.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, release.ErrNoSpace):
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

// WriteError writes an error of a /v2 request as the spec's JSON body,
// {"errors": [{"code", "message"}]}, which Docker shows its user. A code
// not set by Errorf follows from the status.
func WriteError(w http.ResponseWriter, status int, err error, msg string) {
	code := "UNKNOWN"
	var re *Error
	switch {
	case errors.As(err, &re):
		code = re.Code
	case status == http.StatusUnauthorized:
		code = CodeUnauthorized
	case status == http.StatusForbidden:
		code = CodeDenied
	case status == http.StatusTooManyRequests:
		code = CodeTooManyRequests
	case status == http.StatusRequestEntityTooLarge:
		code = CodeSizeInvalid
	case status == http.StatusMethodNotAllowed:
		code = CodeUnsupported
	case status == http.StatusNotFound:
		code = CodeNameUnknown
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="berth"`)
	}
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Errors []item `json:"errors"`
	}{[]item{{code, msg}}})
}

// Options tune Serve.
type Options struct {
	// UploadTimeout is how long one upload request may take to arrive
	// (0: the server's own deadlines).
	UploadTimeout time.Duration
}

// MaxManifest bounds a manifest's body.
const MaxManifest = 4 << 20

var (
	repoName = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagName  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// ValidTag reports whether s may be a tag.
func ValidTag(s string) bool { return tagName.MatchString(s) }

// ParseDigest reads a blob or manifest digest: sha256:<64 lowercase hex>,
// the only algorithm berth names content by.
func ParseDigest(s string) (content.Digest, error) {
	d, err := content.ParseDigest(s)
	if err != nil || !strings.HasPrefix(s, "sha256:") || strings.ToLower(s) != s {
		return content.Digest{}, Errorf(CodeDigestInvalid, release.ErrInvalid, "digest %q: berth takes sha256:<64 lowercase hex digits> only", s)
	}
	return d, nil
}

// Serve answers one request under /v2/; path is what follows "/v2/". It
// writes the answer of a success and returns the error of a failure, for
// the caller to write (WriteError, with its own status mapping). HEAD is
// answered as GET without a body.
func Serve(w http.ResponseWriter, r *http.Request, path string, b Backend, o Options) error {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	if path == "" {
		if method != http.MethodGet {
			return Errorf(CodeUnsupported, ErrUnsupported, "%s /v2/: only GET", r.Method)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "{}\n")
		return nil
	}
	name, kind, ref := splitPath(path)
	if kind == "" {
		return Errorf(CodeUnsupported, release.ErrNotFound, "no such registry endpoint: %s /v2/%s (berth's registry takes pushes; tag lists and referrers are not offered)", r.Method, path)
	}
	if len(name) > 255 || !repoName.MatchString(name) {
		return Errorf(CodeNameInvalid, release.ErrInvalid, "repository name %q is not valid", name)
	}
	s := &session{w: w, r: r, b: b, o: o, name: name}
	switch {
	case kind == kindUploads && ref == "" && method == http.MethodPost:
		return s.startUpload()
	case kind == kindUploads && ref != "" && method == http.MethodPatch:
		return s.patchUpload(ref)
	case kind == kindUploads && ref != "" && method == http.MethodPut:
		return s.finishUpload(ref)
	case kind == kindUploads && ref != "" && method == http.MethodGet:
		return s.uploadStatus(ref)
	case kind == kindUploads && ref != "" && method == http.MethodDelete:
		if err := b.CancelUpload(ref); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case kind == kindBlobs && ref != "" && method == http.MethodGet:
		return s.getBlob(ref)
	case kind == kindManifests && ref != "" && method == http.MethodPut:
		return s.putManifest(ref)
	case kind == kindManifests && ref != "" && method == http.MethodGet:
		return s.getManifest(ref)
	case (kind == kindBlobs || kind == kindManifests) && ref != "" && method == http.MethodDelete:
		w.Header().Set("Allow", "GET, HEAD"+map[bool]string{true: ", PUT"}[kind == kindManifests])
		return Errorf(CodeUnsupported, ErrUnsupported, "DELETE %s: berth's registry deletes nothing (what devices run must stay fetchable)", r.URL.Path)
	}
	return Errorf(CodeUnsupported, ErrUnsupported, "%s %s is not supported (berth's registry takes pushes)", r.Method, r.URL.Path)
}

const (
	kindUploads   = "/blobs/uploads/"
	kindBlobs     = "/blobs/"
	kindManifests = "/manifests/"
)

// splitPath splits name from the rest at the last of the markers: a
// repository may be called robot/blobs/app.
func splitPath(rest string) (name, kind, ref string) {
	at := 0
	for _, k := range []string{kindUploads, kindBlobs, kindManifests} {
		if i := strings.LastIndex(rest, k); i > at {
			name, kind, ref, at = rest[:i], k, rest[i+len(k):], i
		}
	}
	if kind == "" && strings.HasSuffix(rest, "/blobs/uploads") {
		name, kind = strings.TrimSuffix(rest, "/blobs/uploads"), kindUploads
	}
	return name, kind, ref
}

// session is one request's state.
type session struct {
	w    http.ResponseWriter
	r    *http.Request
	b    Backend
	o    Options
	name string
}

// accepted answers 202 for an upload under way.
func (s *session) accepted(id string, size int64) {
	h := s.w.Header()
	h.Set("Location", "/v2/"+s.name+"/blobs/uploads/"+id)
	h.Set("Docker-Upload-UUID", id)
	h.Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
	h.Set("Content-Length", "0")
	s.w.WriteHeader(http.StatusAccepted)
}

func (s *session) created(d content.Digest) {
	h := s.w.Header()
	h.Set("Location", "/v2/"+s.name+"/blobs/"+d.String())
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", "0")
	s.w.WriteHeader(http.StatusCreated)
}

// startUpload begins an upload (POST …/blobs/uploads/): whole with
// ?digest=, or in chunks to follow. A cross-repository mount (?mount=,
// with or without from=) of a blob the backend has is answered 201; of one
// it lacks, with an upload.
func (s *session) startUpload() error {
	q := s.r.URL.Query()
	if m := q.Get("mount"); m != "" {
		if d, err := ParseDigest(m); err == nil {
			if _, err := s.b.StatBlob(d); err == nil {
				s.created(d)
				return nil
			}
		}
	}
	var d content.Digest
	whole := q.Get("digest") != ""
	if whole {
		var err error
		if d, err = ParseDigest(q.Get("digest")); err != nil {
			return err
		}
	}
	id, err := s.b.StartUpload(s.name)
	if err != nil {
		return err
	}
	if !whole {
		s.accepted(id, 0)
		return nil
	}
	if err := s.append(id); err != nil {
		_ = s.b.CancelUpload(id)
		return err
	}
	if err := s.b.FinishUpload(id, d); err != nil {
		return err
	}
	s.created(d)
	return nil
}

// append adds the request's body to an upload, checking a Content-Range
// continues it.
func (s *session) append(id string) error {
	if s.o.UploadTimeout > 0 {
		_ = http.NewResponseController(s.w).SetReadDeadline(time.Now().Add(s.o.UploadTimeout))
	}
	if cr := s.r.Header.Get("Content-Range"); cr != "" {
		size, err := s.b.UploadSize(id)
		if err != nil {
			return err
		}
		var start, end int64
		if n, _ := fmt.Sscanf(strings.TrimPrefix(cr, "bytes="), "%d-%d", &start, &end); n != 2 || start != size || end < start {
			s.w.Header().Set("Location", "/v2/"+s.name+"/blobs/uploads/"+id)
			s.w.Header().Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
			return Errorf(CodeBlobUploadInvalid, ErrRange, "Content-Range %q does not continue the upload, which has %d bytes", cr, size)
		}
	}
	_, err := s.b.AppendUpload(id, s.r.Body)
	return err
}

func (s *session) patchUpload(id string) error {
	if err := s.append(id); err != nil {
		return err
	}
	size, err := s.b.UploadSize(id)
	if err != nil {
		return err
	}
	s.accepted(id, size)
	return nil
}

// finishUpload completes an upload (PUT …?digest=, with the last chunk or
// none): the bytes are checked against the digest, then kept.
func (s *session) finishUpload(id string) error {
	d, err := ParseDigest(s.r.URL.Query().Get("digest"))
	if err != nil {
		return err
	}
	if err := s.append(id); err != nil {
		return err
	}
	if err := s.b.FinishUpload(id, d); err != nil {
		return err
	}
	s.created(d)
	return nil
}

func (s *session) uploadStatus(id string) error {
	size, err := s.b.UploadSize(id)
	if err != nil {
		return err
	}
	h := s.w.Header()
	h.Set("Location", "/v2/"+s.name+"/blobs/uploads/"+id)
	h.Set("Docker-Upload-UUID", id)
	h.Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
	h.Set("Content-Length", "0")
	s.w.WriteHeader(http.StatusNoContent)
	return nil
}

// getBlob answers HEAD and GET for a blob.
func (s *session) getBlob(ref string) error {
	d, err := ParseDigest(ref)
	if err != nil {
		return err
	}
	h := s.w.Header()
	if s.r.Method == http.MethodHead {
		size, err := s.b.StatBlob(d)
		if err != nil {
			return err
		}
		h.Set("Docker-Content-Digest", d.String())
		h.Set("Content-Length", fmt.Sprint(size))
		h.Set("Content-Type", "application/octet-stream")
		s.w.WriteHeader(http.StatusOK)
		return nil
	}
	rc, size, err := s.b.OpenBlob(d)
	if err != nil {
		return err
	}
	defer rc.Close()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", fmt.Sprint(size))
	h.Set("Content-Type", "application/octet-stream")
	s.w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(s.w, rc)
	return nil
}

// putManifest takes a manifest by tag or by its digest.
func (s *session) putManifest(ref string) error {
	body, err := io.ReadAll(http.MaxBytesReader(s.w, s.r.Body, MaxManifest))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return Errorf(CodeSizeInvalid, ErrTooLarge, "manifest over %d bytes", MaxManifest)
	case err != nil:
		return Errorf(CodeManifestInvalid, release.ErrInvalid, "manifest: %v", err)
	}
	sum := sha256.Sum256(body)
	d := "sha256:" + hex.EncodeToString(sum[:])
	if strings.HasPrefix(ref, "sha256:") {
		if ref != d {
			return Errorf(CodeDigestInvalid, release.ErrInvalid, "the manifest's digest is %s, not %s", d, ref)
		}
	} else if !ValidTag(ref) {
		return Errorf(CodeManifestInvalid, release.ErrInvalid, "tag %q is not valid", ref)
	}
	m, err := ParseManifest(body, s.r.Header.Get("Content-Type"))
	if err != nil {
		return err
	}
	if err := s.b.PutManifest(s.name, ref, m); err != nil {
		return err
	}
	h := s.w.Header()
	h.Set("Location", "/v2/"+s.name+"/manifests/"+d)
	h.Set("Docker-Content-Digest", d)
	h.Set("Content-Length", "0")
	s.w.WriteHeader(http.StatusCreated)
	return nil
}

// getManifest answers GET and HEAD for a manifest, by tag or digest.
func (s *session) getManifest(ref string) error {
	if strings.HasPrefix(ref, "sha256:") {
		if _, err := ParseDigest(ref); err != nil {
			return err
		}
	} else if !ValidTag(ref) {
		return Errorf(CodeManifestUnknown, release.ErrNotFound, "no manifest %s:%s", s.name, ref)
	}
	m, err := s.b.Manifest(s.name, ref)
	if err != nil {
		return err
	}
	h := s.w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest)
	h.Set("Content-Length", fmt.Sprint(len(m.Body)))
	s.w.WriteHeader(http.StatusOK)
	if s.r.Method != http.MethodHead {
		_, _ = s.w.Write(m.Body)
	}
	return nil
}
