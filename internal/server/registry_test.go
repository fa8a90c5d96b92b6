package server_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/server"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// regReq is one request to the registry with HTTP Basic credentials
// (none if token is empty), as Docker sends them after `docker login`.
type regReq struct {
	method, path string
	token        string
	header       map[string]string
	body         []byte
}

type regResp struct {
	status int
	header http.Header
	body   []byte
	length int64
}

func (e *env) reg(q regReq) regResp {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx, q.method, e.URL+q.path, bytes.NewReader(q.body))
	if err != nil {
		e.t.Fatal(err)
	}
	if q.token != "" {
		req.SetBasicAuth("ci", q.token)
	}
	for k, v := range q.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return regResp{resp.StatusCode, resp.Header, b, resp.ContentLength}
}

// registryErrorOnly checks a /v2 error body is the distribution spec's
// {"errors": [{"code", "message"}]} and returns the message.
func registryErrorOnly(t *testing.T, what string, body []byte) string {
	t.Helper()
	var m struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &m); err != nil || len(m.Errors) != 1 || m.Errors[0].Code == "" || m.Errors[0].Message == "" {
		t.Errorf("%s: want {\"errors\": [{code, message}]}, got %s", what, body)
		return ""
	}
	return m.Errors[0].Message
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// pushedImage is an image as a client pushes it: compressed layers, a
// config, a manifest.
type pushedImage struct {
	testImage
	layers   [][]byte // as sent
	config   []byte
	manifest []byte
}

func newPushedImage(t *testing.T, tag string, mediaType string, layers ...[]byte) pushedImage {
	t.Helper()
	var sent [][]byte
	var diffIDs []string
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	var descs []desc
	for i, l := range layers {
		diffIDs = append(diffIDs, digestOf(l))
		var s []byte
		mt := "application/vnd.docker.image.rootfs.diff.tar.gzip"
		switch i % 3 {
		case 0:
			s = gzipped(t, l)
		case 1:
			s, mt = zstded(t, l), "application/vnd.oci.image.layer.v1.tar+zstd"
		case 2:
			s, mt = l, "application/vnd.oci.image.layer.v1.tar"
		}
		sent = append(sent, s)
		descs = append(descs, desc{mt, digestOf(s), len(s)})
	}
	cfg := fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","config":{"Labels":{"tag":%q}},"rootfs":{"type":"layers","diff_ids":["%s"]}}`, tag, strings.Join(diffIDs, `","`))
	cfgType := "application/vnd.docker.container.image.v1+json"
	if mediaType != "application/vnd.docker.distribution.manifest.v2+json" {
		cfgType = "application/vnd.oci.image.config.v1+json"
	}
	man, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": mediaType,
		"config": desc{cfgType, digestOf(cfg), len(cfg)},
		"layers": descs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return pushedImage{testImage: testImage{ID: digestOf(cfg), DiffIDs: diffIDs}, layers: sent, config: cfg, manifest: man}
}

// TestRegistryPush drives the push side of the distribution protocol as
// Docker does: the version check and its challenge, blob HEADs before and
// after, monolithic and chunked uploads, a cross-repository mount, the
// manifest; then a release pins the pushed image and a device pulls it
// byte for byte. What is wrong is refused, and nothing of it kept.
func TestRegistryPush(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	dan := e.user("dan", serverapi.RoleDeployer)
	e.secret(dan)
	img := newPushedImage(t, "robot/app:1", "application/vnd.docker.distribution.manifest.v2+json",
		layerTar(t, 1, 50, 0, -1, false), layerTar(t, 2, 10, 1<<20, -1, false), layerTar(t, 3, 5, 0, -1, false))

	// The version check.
	r := e.reg(regReq{method: "GET", path: "/v2/", token: dan})
	if r.status != 200 || r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %v %s", r.status, r.header, r.body)
	}

	blob := func(d string) int {
		return e.reg(regReq{method: "HEAD", path: "/v2/robot/app/blobs/" + d, token: dan}).status
	}
	if got := blob(digestOf(img.layers[0])); got != 404 {
		t.Errorf("HEAD of a layer not pushed: %d, want 404", got)
	}

	// Layer 0 whole, with ?digest= on the POST.
	r = e.reg(regReq{method: "POST", path: "/v2/robot/app/blobs/uploads/?digest=" + digestOf(img.layers[0]), token: dan, body: img.layers[0]})
	if r.status != 201 || r.header.Get("Docker-Content-Digest") != digestOf(img.layers[0]) || r.header.Get("Location") == "" {
		t.Fatalf("monolithic upload: %d %v %s", r.status, r.header, r.body)
	}
	if h := e.reg(regReq{method: "HEAD", path: "/v2/robot/app/blobs/" + digestOf(img.layers[0]), token: dan}); h.status != 200 || h.length != int64(len(img.layers[0])) {
		t.Errorf("HEAD after the upload: %d, length %d, want 200 and %d", h.status, h.length, len(img.layers[0]))
	}

	// Layer 1 in three chunks; one out of place is refused, 416.
	chunked := func(b []byte, digest string) regResp {
		t.Helper()
		r := e.reg(regReq{method: "POST", path: "/v2/robot/app/blobs/uploads/", token: dan})
		if r.status != 202 {
			t.Fatalf("start an upload: %d %s", r.status, r.body)
		}
		loc := r.header.Get("Location")
		third := len(b) / 3
		for i, part := range [][]byte{b[:third], b[third : 2*third]} {
			rng := fmt.Sprintf("%d-%d", i*third, (i+1)*third-1)
			r = e.reg(regReq{method: "PATCH", path: loc, token: dan, body: part, header: map[string]string{"Content-Range": rng, "Content-Type": "application/octet-stream"}})
			if r.status != 202 || r.header.Get("Range") != fmt.Sprintf("0-%d", (i+1)*third-1) {
				t.Fatalf("chunk %d: %d %v %s", i, r.status, r.header, r.body)
			}
			loc = r.header.Get("Location")
		}
		if r := e.reg(regReq{method: "PATCH", path: loc, token: dan, body: b[:10], header: map[string]string{"Content-Range": "0-9"}}); r.status != 416 {
			t.Errorf("a chunk out of place: %d, want 416", r.status)
		}
		return e.reg(regReq{method: "PUT", path: loc + "?digest=" + digest, token: dan, body: b[2*third:]})
	}
	if r := chunked(img.layers[1], digestOf(img.layers[1])); r.status != 201 {
		t.Fatalf("chunked upload: %d %s", r.status, r.body)
	}

	// A wrong digest: refused, nothing kept.
	wrong := digestOf([]byte("something else"))
	if r := chunked(img.layers[2], wrong); r.status != 400 || !strings.Contains(registryErrorOnly(t, "wrong digest", r.body), "not "+wrong) {
		t.Errorf("an upload under a wrong digest: %d %s, want 400", r.status, r.body)
	}
	if blob(wrong) != 404 || blob(digestOf(img.layers[2])) != 404 {
		t.Error("the upload under a wrong digest was kept")
	}

	// The manifest before all its blobs: refused.
	mput := func(ref, mt string, body []byte) regResp {
		return e.reg(regReq{method: "PUT", path: "/v2/robot/app/manifests/" + ref, token: dan, body: body, header: map[string]string{"Content-Type": mt}})
	}
	if r := mput("1", "application/vnd.docker.distribution.manifest.v2+json", img.manifest); r.status != 400 || !strings.Contains(string(r.body), "MANIFEST_BLOB_UNKNOWN") {
		t.Errorf("a manifest before its blobs: %d %s", r.status, r.body)
	}

	// Layer 2 whole (uncompressed) through POST then PUT; the config by a
	// mount attempt that falls back to an upload.
	r = e.reg(regReq{method: "POST", path: "/v2/robot/app/blobs/uploads/", token: dan})
	if r = e.reg(regReq{method: "PUT", path: r.header.Get("Location") + "?digest=" + digestOf(img.layers[2]), token: dan, body: img.layers[2]}); r.status != 201 {
		t.Fatalf("layer 2: %d %s", r.status, r.body)
	}
	r = e.reg(regReq{method: "POST", path: "/v2/robot/app/blobs/uploads/?mount=" + digestOf(img.config) + "&from=other/repo", token: dan})
	if r.status != 202 {
		t.Fatalf("a mount of a blob the server lacks: %d, want 202", r.status)
	}
	if r = e.reg(regReq{method: "PUT", path: r.header.Get("Location") + "?digest=" + digestOf(img.config), token: dan, body: img.config}); r.status != 201 {
		t.Fatalf("config: %d %s", r.status, r.body)
	}
	// A mount of a layer it has: 201 at once.
	if r := e.reg(regReq{method: "POST", path: "/v2/other/repo/blobs/uploads/?mount=" + digestOf(img.layers[1]) + "&from=robot/app", token: dan}); r.status != 201 {
		t.Errorf("a mount of a layer the server has: %d, want 201", r.status)
	}

	// The manifest.
	r = mput("1", "application/vnd.docker.distribution.manifest.v2+json", img.manifest)
	if r.status != 201 || r.header.Get("Docker-Content-Digest") != digestOf(img.manifest) {
		t.Fatalf("manifest: %d %v %s", r.status, r.header, r.body)
	}
	for _, ref := range []string{"1", digestOf(img.manifest)} {
		r := e.reg(regReq{method: "GET", path: "/v2/robot/app/manifests/" + ref, token: dan})
		if r.status != 200 || !bytes.Equal(r.body, img.manifest) || r.header.Get("Content-Type") != "application/vnd.docker.distribution.manifest.v2+json" {
			t.Errorf("GET manifest %s: %d %v %s", ref, r.status, r.header, r.body)
		}
	}
	if r := e.reg(regReq{method: "HEAD", path: "/v2/robot/app/manifests/2", token: dan}); r.status != 404 {
		t.Errorf("HEAD of a tag not pushed: %d", r.status)
	}
	if r := e.reg(regReq{method: "GET", path: "/v2/robot/blobs/app/manifests/1", token: dan}); r.status != 404 || !strings.Contains(string(r.body), "MANIFEST_UNKNOWN") {
		t.Errorf("a repository named robot/blobs/app: %d %s", r.status, r.body)
	}
	if r := e.reg(regReq{method: "GET", path: "/v2/Robot/manifests/1", token: dan}); r.status != 400 || !strings.Contains(string(r.body), "NAME_INVALID") {
		t.Errorf("a repository name in capitals: %d %s", r.status, r.body)
	}
	if es, _ := e.admin.Audit(ctx, serverapi.AuditQuery{Action: "image.push"}); len(es) != 1 || es[0].Object != "image/"+img.ID || es[0].Actor != "user:dan" {
		t.Errorf("audit: %+v", es)
	}
	info, err := e.admin.Uploader().ContentInfo(ctx)
	if err != nil || len(info.Images) != 1 || info.Images[0] != img.ID {
		t.Fatalf("content info after the push: %+v, %v", info, err)
	}

	// A manifest whose layers are not its config's: refused.
	bad := newPushedImage(t, "bad", "application/vnd.oci.image.manifest.v1+json", layerTar(t, 9, 3, 0, -1, false))
	bad.manifest = bytes.Replace(bad.manifest, []byte(digestOf(bad.layers[0])), []byte(digestOf(img.layers[0])), 1)
	r = e.reg(regReq{method: "POST", path: "/v2/robot/bad/blobs/uploads/?digest=" + digestOf(bad.config), token: dan, body: bad.config})
	if r := mput("x", "application/vnd.oci.image.manifest.v1+json", bad.manifest); r.status != 400 {
		t.Errorf("a manifest whose layers its config does not list: %d %s", r.status, r.body)
	}
	// A manifest under a digest that is not its own; a schema 1 one.
	if r := mput(digestOf([]byte("x")), "application/vnd.docker.distribution.manifest.v2+json", img.manifest); r.status != 400 {
		t.Errorf("a manifest under a wrong digest: %d", r.status)
	}
	if r := mput("old", "application/vnd.docker.distribution.manifest.v1+prettyjws", []byte(`{"schemaVersion":1,"name":"robot/app","tag":"old"}`)); r.status != 400 || !strings.Contains(string(r.body), "schema 2") {
		t.Errorf("a schema 1 manifest: %d %s", r.status, r.body)
	}
	// An index of what was pushed: taken; of what was not: refused.
	index := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":%q,"size":%d,"platform":{"os":"linux","architecture":"amd64"}}]}`, digestOf(img.manifest), len(img.manifest))
	if r := mput("multi", "application/vnd.oci.image.index.v1+json", index); r.status != 201 {
		t.Errorf("an index: %d %s", r.status, r.body)
	}
	if r := mput("multi2", "application/vnd.oci.image.index.v1+json", bytes.ReplaceAll(index, []byte(digestOf(img.manifest)), []byte(wrong))); r.status != 400 {
		t.Errorf("an index of a manifest not pushed: %d %s", r.status, r.body)
	}

	// The tags pushed, for a release to pin by ID.
	got, _, body := e.do("GET", "/v1/content/tags?name=robot/app", dan, nil)
	var tags []server.PushedTag
	if err := json.Unmarshal(body, &tags); got != 200 || err != nil {
		t.Fatalf("GET /v1/content/tags: %d %s", got, body)
	}
	want := []server.PushedTag{
		{Name: "robot/app", Tag: "1", Manifest: digestOf(img.manifest), Images: []string{img.ID}},
		{Name: "robot/app", Tag: "multi", Manifest: digestOf(index), Images: []string{img.ID}},
	}
	if diff := cmp.Diff(want, tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}

	// A release pins the pushed image by its ID; a device pulls it whole.
	f := e.fleet("lab")
	rel, _, err := e.client(dan).CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "1", Spec: spec("robot/app:1"), Images: map[string]string{"robot/app:1": img.ID}})
	if err != nil {
		t.Fatalf("a release pinning the pushed image: %v", err)
	}
	dev, devCl, _ := e.device(f.ProvisioningKey, "robot-1")
	if _, err := e.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{Devices: []string{dev.ID}}); err != nil {
		t.Fatal(err)
	}
	robot := openContentStore(t)
	p := &transfer.Puller{Store: robot, Source: devCl.Source()}
	if _, _, err := p.Pull(ctx, []string{img.ID}, func(string) bool { return false }); err != nil {
		t.Fatalf("pull: %v", err)
	}
	checkPulled(t, robot, img.testImage)
}

// TestRegistryAuth: the challenge Docker needs, and who may push.
func TestRegistryAuth(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	f := e.fleet("lab")
	_, _, devTok := e.device(f.ProvisioningKey, "robot-1")
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"None", "", 401},
		{"Bad", "bt_" + strings.Repeat("a", 32), 401},
		{"Viewer", e.user("vera", serverapi.RoleViewer), 403},
		{"Device", devTok, 403},
		{"Deployer", e.user("dan", serverapi.RoleDeployer), 200},
		{"Admin", e.adminToken, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, q := range []regReq{
				{method: "GET", path: "/v2/"},
				{method: "POST", path: "/v2/robot/app/blobs/uploads/"},
			} {
				q.token = tc.token
				r := e.reg(q)
				want := tc.want
				if want == 200 && q.method == "POST" {
					want = 202
				}
				if r.status != want {
					t.Errorf("%s %s: %d, want %d: %s", q.method, q.path, r.status, want, r.body)
				}
				if r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
					t.Errorf("%s %s: no Docker-Distribution-API-Version", q.method, q.path)
				}
				if want == 401 && r.header.Get("WWW-Authenticate") != `Basic realm="berth"` {
					t.Errorf("401 with challenge %q", r.header.Get("WWW-Authenticate"))
				}
				if want >= 400 {
					registryErrorOnly(t, tc.name, r.body)
				}
			}
		})
	}
	// Basic credentials are for /v2 only.
	req, _ := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/whoami", nil)
	req.SetBasicAuth("admin", e.adminToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("Basic credentials on /v1: %v %v, want 401", resp.StatusCode, err)
	}
}

// TestRegistryLimits: a blob over MaxBlob and a layer that decompresses
// past MaxLayer are refused 413 and leave nothing behind.
func TestRegistryLimits(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{maxBlob: 256 << 10, maxLayer: 1 << 20})
	dan := e.user("dan", serverapi.RoleDeployer)

	// A bomb: 8 MiB of zeros in a tar, gzipped to a few KiB.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: 8 << 20, Typeflag: tar.TypeReg})
	tw.Write(make([]byte, 8<<20))
	tw.Close()
	bomb := gzipped(t, tb.Bytes())
	if len(bomb) > 64<<10 {
		t.Fatalf("the bomb is %d bytes", len(bomb))
	}
	r := e.reg(regReq{method: "POST", path: "/v2/x/blobs/uploads/?digest=" + digestOf(bomb), token: dan, body: bomb})
	if r.status != 413 || !strings.Contains(registryErrorOnly(t, "bomb", r.body), "decompresses to over") {
		t.Errorf("a decompression bomb: %d %s, want 413", r.status, r.body)
	}

	// A blob over MaxBlob, in chunks: refused, and the upload dropped.
	big := make([]byte, 200<<10)
	rand.Read(big)
	r = e.reg(regReq{method: "POST", path: "/v2/x/blobs/uploads/", token: dan})
	loc := r.header.Get("Location")
	if r := e.reg(regReq{method: "PATCH", path: loc, token: dan, body: big}); r.status != 202 {
		t.Fatalf("first chunk: %d %s", r.status, r.body)
	}
	if r := e.reg(regReq{method: "PATCH", path: loc, token: dan, body: big}); r.status != 413 {
		t.Errorf("a blob over MaxBlob: %d %s, want 413", r.status, r.body)
	}
	if r := e.reg(regReq{method: "PATCH", path: loc, token: dan, body: big[:10]}); r.status != 404 {
		t.Errorf("the upload after its refusal: %d, want 404 (dropped)", r.status)
	}
	// An upload left an hour and more is dropped when the next one starts.
	r = e.reg(regReq{method: "POST", path: "/v2/x/blobs/uploads/", token: dan})
	idle := r.header.Get("Docker-Upload-UUID")
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(e.dir, "content", "registry", "uploads", idle), old, old); err != nil {
		t.Fatal(err)
	}
	e.reg(regReq{method: "POST", path: "/v2/x/blobs/uploads/", token: dan})
	if r := e.reg(regReq{method: "GET", path: r.header.Get("Location"), token: dan}); r.status != 404 {
		t.Errorf("an upload idle for two hours: %d, want 404 (dropped)", r.status)
	}
	if info, err := e.admin.Uploader().ContentInfo(ctx); err != nil || len(info.Layers) != 0 {
		t.Errorf("content after the refusals: %+v, %v", info, err)
	}
}

// TestRegistryArtifacts: what BuildKit and other tools push besides images.
// A provenance attestation (an image config whose one layer is an in-toto
// statement) and an index of the image and it are taken, the image
// registered and the attestation not; a blob that is no layer and over
// 16 MiB (an SBOM) is kept whole and served back; DELETE, which berth's
// registry does not offer, is 405 as the spec says.
func TestRegistryArtifacts(t *testing.T) {
	e := newEnv(t, sqlite, envOptions{})
	dan := e.user("dan", serverapi.RoleDeployer)
	img := newPushedImage(t, "robot/app:1", "application/vnd.oci.image.manifest.v1+json", layerTar(t, 1, 20, 0, -1, false))
	put := func(d string, b []byte) regResp {
		return e.reg(regReq{method: "POST", path: "/v2/robot/app/blobs/uploads/?digest=" + d, token: dan, body: b})
	}
	for _, b := range append([][]byte{img.config}, img.layers...) {
		if r := put(digestOf(b), b); r.status != 201 {
			t.Fatalf("blob: %d %s", r.status, r.body)
		}
	}
	mput := func(ref, mt string, body []byte) regResp {
		return e.reg(regReq{method: "PUT", path: "/v2/robot/app/manifests/" + ref, token: dan, body: body, header: map[string]string{"Content-Type": mt}})
	}
	if r := mput(digestOf(img.manifest), "application/vnd.oci.image.manifest.v1+json", img.manifest); r.status != 201 {
		t.Fatalf("image manifest: %d %s", r.status, r.body)
	}

	// BuildKit's provenance attestation, as `docker buildx build` pushes it.
	statement := []byte(`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2","subject":[{"name":"robot/app","digest":{"sha256":"` + strings.TrimPrefix(digestOf(img.manifest), "sha256:") + `"}}],"predicate":{"buildType":"https://mobyproject.org/buildkit@v1"}}`)
	attCfg := fmt.Appendf(nil, `{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[%q]}}`, digestOf(statement))
	for _, b := range [][]byte{statement, attCfg} {
		if r := put(digestOf(b), b); r.status != 201 {
			t.Fatalf("attestation blob: %d %s", r.status, r.body)
		}
	}
	att := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.in-toto+json","digest":%q,"size":%d,"annotations":{"in-toto.io/predicate-type":"https://slsa.dev/provenance/v0.2"}}]}`,
		digestOf(attCfg), len(attCfg), digestOf(statement), len(statement))
	if r := mput(digestOf(att), "application/vnd.oci.image.manifest.v1+json", att); r.status != 201 {
		t.Fatalf("a provenance attestation manifest: %d %s", r.status, r.body)
	}
	index := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"os":"linux","architecture":"amd64"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":%q}}]}`,
		digestOf(img.manifest), len(img.manifest), digestOf(att), len(att), digestOf(img.manifest))
	if r := mput("1", "application/vnd.oci.image.index.v1+json", index); r.status != 201 {
		t.Fatalf("the index of the image and its attestation: %d %s", r.status, r.body)
	}
	_, _, body := e.do("GET", "/v1/content/tags?name=robot/app", dan, nil)
	var tags []server.PushedTag
	if err := json.Unmarshal(body, &tags); err != nil || len(tags) != 1 || !cmp.Equal(tags[0].Images, []string{img.ID}) {
		t.Errorf("tags: %s, want the one image registered", body)
	}

	// An SBOM of 17 MiB: no layer, too big to be a piece.
	sbom := bytes.Repeat([]byte(`{"spdxVersion":"SPDX-2.3","name":"a package"},`), 17<<20/46+1)
	if r := put(digestOf(sbom), sbom); r.status != 201 {
		t.Fatalf("a 17 MiB blob that is not a layer: %d %s", r.status, r.body)
	}
	if r := e.reg(regReq{method: "HEAD", path: "/v2/robot/app/blobs/" + digestOf(sbom), token: dan}); r.status != 200 || r.length != int64(len(sbom)) {
		t.Errorf("HEAD of the big blob: %d, length %d", r.status, r.length)
	}
	if r := e.reg(regReq{method: "GET", path: "/v2/robot/app/blobs/" + digestOf(sbom), token: dan}); r.status != 200 || !bytes.Equal(r.body, sbom) {
		t.Errorf("GET of the big blob: %d, %d bytes", r.status, len(r.body))
	}
	art := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/spdx+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[{"mediaType":"application/spdx+json","digest":%q,"size":%d}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}}`,
		digestOf([]byte("{}")), digestOf(sbom), len(sbom), digestOf(img.manifest), len(img.manifest))
	if r := put(digestOf([]byte("{}")), []byte("{}")); r.status != 201 {
		t.Fatalf("the empty config: %d %s", r.status, r.body)
	}
	if r := mput("sbom", "application/vnd.oci.image.manifest.v1+json", art); r.status != 201 {
		t.Errorf("an artifact manifest: %d %s", r.status, r.body)
	}

	// DELETE: 405, and nothing deleted.
	for _, path := range []string{"/v2/robot/app/blobs/" + digestOf(img.config), "/v2/robot/app/manifests/1", "/v2/robot/app/manifests/" + digestOf(img.manifest)} {
		r := e.reg(regReq{method: "DELETE", path: path, token: dan})
		if r.status != 405 || !strings.Contains(string(r.body), "UNSUPPORTED") {
			t.Errorf("DELETE %s: %d %s, want 405 UNSUPPORTED", path, r.status, r.body)
		}
	}
	if r := e.reg(regReq{method: "HEAD", path: "/v2/robot/app/manifests/1", token: dan}); r.status != 200 {
		t.Errorf("the tag after a DELETE: %d", r.status)
	}
}
