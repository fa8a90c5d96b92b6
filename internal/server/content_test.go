package server_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/transfer"
)

// testImage is an image as `docker save` writes it.
type testImage struct {
	ID      string
	DiffIDs []string
	Archive []byte
}

// layerTar makes a layer: n small files of random text and, if big > 0, a
// binary of big random bytes; edit changes small file k (-1: none), and
// patch flips a few bytes in the middle of the binary.
func layerTar(t *testing.T, seed int64, n, big, edit int, patch bool) []byte {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(name string, body []byte, mode int64) {
		hdr := &tar.Header{Name: name, Mode: mode, Size: int64(len(body)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		body := make([]byte, 1000+rng.Intn(3000))
		for j := range body {
			body[j] = 'a' + byte(rng.Intn(26))
		}
		if i == edit {
			body = append(body, "one more line\n"...)
		}
		add(fmt.Sprintf("usr/lib/app/m%04d.py", i), body, 0o644)
	}
	if big > 0 {
		body := make([]byte, big)
		rng.Read(body)
		if patch {
			copy(body[big/2:], "a rebuilt binary differs here")
		}
		add("usr/bin/app", body, 0o755)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// newImage makes a docker save archive of an image with these layers.
func newImage(t *testing.T, tag string, layers ...[]byte) testImage {
	t.Helper()
	var ids []string
	include := map[string]int64{}
	byID := map[string][]byte{}
	for _, l := range layers {
		d := digestOf(l)
		ids = append(ids, d)
		include[d] = int64(len(l))
		byID[d] = l
	}
	cfg := fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","config":{"Cmd":["/usr/bin/app"],"Labels":{"tag":%q}},"rootfs":{"type":"layers","diff_ids":["%s"]}}`, tag, strings.Join(ids, `","`))
	img, err := imagetar.FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	img.Tags = []string{tag}
	var archive bytes.Buffer
	err = imagetar.Write(&archive, []imagetar.Image{img}, include, func(d string, w io.Writer) error {
		_, err := w.Write(byID[d])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return testImage{ID: img.ID, DiffIDs: ids, Archive: archive.Bytes()}
}

func openContentStore(t *testing.T) *content.Store {
	t.Helper()
	st, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// upload pushes an image archive to the server as `berth release create`
// does, through a sender with its own cache.
func upload(t *testing.T, cache *content.Store, cl *serverapi.Client, img testImage) (*transfer.Summary, error) {
	t.Helper()
	s := &transfer.Sender{Store: cache, Device: cl.Uploader()}
	return s.Push(ctx, bytes.NewReader(img.Archive))
}

// checkPulled checks that a device's store holds img whole: its config,
// and every layer rebuilt byte for byte.
func checkPulled(t *testing.T, st *content.Store, img testImage) {
	t.Helper()
	d, _ := content.ParseDigest(img.ID)
	cfg, err := st.Get(d)
	if err != nil || digestOf(cfg) != img.ID {
		t.Fatalf("image %s: config %v", release.ShortID(img.ID), err)
	}
	for _, id := range img.DiffIDs {
		dd, _ := content.ParseDigest(id)
		ix, err := st.Index(dd)
		if err != nil {
			t.Fatalf("layer %s: %v", release.ShortID(id), err)
		}
		if m := st.Missing(ix); len(m) > 0 {
			t.Fatalf("layer %s: %d pieces missing", release.ShortID(id), len(m))
		}
		h := sha256.New()
		if err := content.Rebuild(ix, st.Get, h); err != nil {
			t.Fatalf("rebuild %s: %v", release.ShortID(id), err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != id {
			t.Fatalf("layer %s rebuilt as %s", id, got)
		}
	}
}

// TestContent: CI uploads an image through the exchange; a release pins
// it; a device whose target has that release pulls it into a fresh store,
// whole and byte-identical; the next release, one file changed, costs a
// few KiB up and down. Releases pinning images not uploaded are refused
// (unless their content is external).
func TestContent(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		deployer := e.client(e.user("dan", serverapi.RoleDeployer))
		cache := openContentStore(t)

		base := layerTar(t, 1, 200, 0, -1, false)
		v1 := newImage(t, "robot:v1", base, layerTar(t, 2, 40, 1<<20, -1, false))
		sum, err := upload(t, cache, deployer, v1)
		if err != nil {
			t.Fatal(err)
		}
		if sum.LayersNeeded != 2 || sum.BytesChanged < 1<<20 {
			t.Errorf("first upload: %+v", sum)
		}
		info, err := deployer.Uploader().ContentInfo(ctx)
		if err != nil || len(info.Images) != 1 || info.Images[0] != v1.ID || len(info.Layers) != 2 || len(info.Chains) != 2 || info.StateFree == 0 {
			t.Fatalf("content info after the upload: %+v, %v", info, err)
		}
		// Again: the server has it all; only the config travels.
		if again, err := upload(t, cache, deployer, v1); err != nil || again.LayersNeeded != 0 || again.BytesChanged != 0 {
			t.Errorf("the same image again: %+v, %v", again, err)
		}
		if es, _ := e.admin.Audit(ctx, serverapi.AuditQuery{Action: "image.upload"}); len(es) != 1 || es[0].Object != "image/"+v1.ID || es[0].Actor != "user:dan" {
			t.Errorf("audit: %+v", es)
		}

		// Releases: pinned to what was uploaded, or refused.
		rel1, created, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v1", Spec: spec("robot:v1"), Images: map[string]string{"robot:v1": v1.ID}})
		if err != nil || !created {
			t.Fatalf("release v1: %v", err)
		}
		missing := "sha256:" + strings.Repeat("cd", 32)
		_, _, err = deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v9", Spec: spec("robot:v9"), Images: map[string]string{"robot:v9": missing}})
		if status(err) != http.StatusConflict || !strings.Contains(err.Error(), "image cdcdcdcdcdcd of service web has not been uploaded") || !strings.Contains(err.Error(), "berth release create") {
			t.Errorf("a release pinning an image not uploaded: %v, want 409 saying so", err)
		}
		if _, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v9", Spec: spec("robot:v9"), Images: map[string]string{"robot:v9": missing}, Content: "elsewhere"}); status(err) != http.StatusBadRequest {
			t.Errorf("content \"elsewhere\": %v, want 400", err)
		}
		ext, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v9", Spec: spec("robot:v9"), Images: map[string]string{"robot:v9": missing}, Content: serverapi.ContentExternal})
		if err != nil {
			t.Fatalf("an external release: %v", err)
		}
		// Existing already: creating it again is no change, not a refusal.
		if _, created, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v9", Spec: spec("robot:v9"), Images: map[string]string{"robot:v9": missing}}); err != nil || created {
			t.Errorf("the external release again, without saying so: %v, created %v", err, created)
		}
		if es, _ := e.admin.Audit(ctx, serverapi.AuditQuery{Object: "release/" + ext.ID}); len(es) != 1 || !strings.Contains(string(es[0].Details), `"content":"external"`) {
			t.Errorf("the external release's audit entry: %+v", es)
		}

		// A device with v1 in its target pulls it into a fresh store.
		dev, devCl, _ := e.device(f.ProvisioningKey, "robot-1")
		if _, err := e.admin.Assign(ctx, "lab", rel1.ID, serverapi.AssignRequest{Devices: []string{dev.ID}}); err != nil {
			t.Fatal(err)
		}
		robot := openContentStore(t)
		none := func(string) bool { return false }
		p := &transfer.Puller{Store: robot, Source: devCl.Source()}
		imgs, psum, err := p.Pull(ctx, []string{v1.ID}, none)
		if err != nil {
			t.Fatalf("pull v1: %v", err)
		}
		if len(imgs) != 1 || imgs[0].ID != v1.ID || psum.LayersNeeded != 2 {
			t.Errorf("pull v1: %+v %+v", imgs, psum)
		}
		checkPulled(t, robot, v1)

		// v2: one small file changed in the app layer.
		v2 := newImage(t, "robot:v2", base, layerTar(t, 2, 40, 1<<20, 7, false))
		sum, err = upload(t, cache, deployer, v2)
		if err != nil {
			t.Fatal(err)
		}
		if sum.LayersNeeded != 1 || sum.BytesSent > 8<<10 {
			t.Errorf("upload of v2, one file changed: %d layers, %d bytes sent (%d changed); want one layer, a few KiB", sum.LayersNeeded, sum.BytesSent, sum.BytesChanged)
		}
		rel2, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v2", Spec: spec("robot:v2"), Images: map[string]string{"robot:v2": v2.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.Assign(ctx, "lab", rel2.ID, serverapi.AssignRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		// The device's engine has v1 loaded: its chains need nothing.
		loaded := map[string]bool{}
		for _, ch := range imagetar.ChainIDs(v1.DiffIDs) {
			loaded[ch] = true
		}
		_, psum, err = p.Pull(ctx, []string{v2.ID}, func(ch string) bool { return loaded[ch] })
		if err != nil {
			t.Fatalf("pull v2: %v", err)
		}
		if psum.LayersNeeded != 1 || psum.BytesSent > 8<<10 {
			t.Errorf("pull of v2, one file changed: %d layers, %d bytes received (%d of them index, %d changed); want one layer, a few KiB", psum.LayersNeeded, psum.BytesSent, psum.IndexBytes, psum.BytesChanged)
		}
		checkPulled(t, robot, v2)
		t.Logf("v2, one file changed: uploaded %d B, pulled %d B (index %d B)", sum.BytesSent, psum.BytesSent, psum.IndexBytes)

		// A rebuilt binary (a few bytes changed in 1 MiB) goes as a delta.
		v3 := newImage(t, "robot:v3", base, layerTar(t, 2, 40, 1<<20, 7, true))
		if sum, err = upload(t, cache, deployer, v3); err != nil {
			t.Fatal(err)
		}
		rel3, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "robot", Version: "v3", Spec: spec("robot:v3"), Images: map[string]string{"robot:v3": v3.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.Assign(ctx, "lab", rel3.ID, serverapi.AssignRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		fresh := openContentStore(t)
		// A device that has v2 (in its store) fetches v3: a delta of the binary.
		if _, _, err := (&transfer.Puller{Store: fresh, Source: devCl.Source()}).Pull(ctx, []string{v3.ID}, none); err != nil {
			t.Fatal(err)
		}
		checkPulled(t, fresh, v3)
		_, psum, err = p.Pull(ctx, []string{v3.ID}, func(ch string) bool { return loaded[ch] })
		if err != nil {
			t.Fatal(err)
		}
		if psum.BytesSent > 8<<10 || psum.BytesChanged < 32<<10 {
			t.Errorf("pull of v3, a rebuilt binary: %d bytes received for %d changed; want a delta of a few KiB for a chunk of tens", psum.BytesSent, psum.BytesChanged)
		}
		checkPulled(t, robot, v3)
		t.Logf("v3, binary patched: uploaded %d B, pulled %d B for %d B changed", sum.BytesSent, psum.BytesSent, psum.BytesChanged)
	})
}

// TestContentAccess: device tokens and viewers cannot upload; a device
// reads only what its target names (404 otherwise, saying nothing of
// what exists); uploads are checked piece by piece and all or nothing.
func TestContentAccess(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, envOptions{})
		f := e.fleet("lab")
		deployer := e.client(e.user("dan", serverapi.RoleDeployer))
		viewer := e.client(e.user("vera", serverapi.RoleViewer))
		cache := openContentStore(t)

		mine := newImage(t, "mine:1", layerTar(t, 10, 30, 0, -1, false))
		other := newImage(t, "other:1", layerTar(t, 11, 30, 0, -1, false))
		secret := newImage(t, "secret:1", layerTar(t, 10, 30, 0, 3, false)) // shares files with mine
		for _, img := range []testImage{mine, other, secret} {
			if _, err := upload(t, cache, deployer, img); err != nil {
				t.Fatal(err)
			}
		}
		rel, _, err := deployer.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "app", Version: "v1", Spec: spec("mine:1"), Images: map[string]string{"mine:1": mine.ID}})
		if err != nil {
			t.Fatal(err)
		}
		// other is another fleet's.
		e.fleet("field")
		if _, _, err := deployer.CreateRelease(ctx, "field", serverapi.CreateReleaseRequest{App: "app", Version: "v1", Spec: spec("other:1"), Images: map[string]string{"other:1": other.ID}}); err != nil {
			t.Fatal(err)
		}
		devA, clA, tokA := e.device(f.ProvisioningKey, "robot-a")
		_, _, tokB := e.device(f.ProvisioningKey, "robot-b")
		if _, err := e.admin.Assign(ctx, "lab", rel.ID, serverapi.AssignRequest{Devices: []string{devA.ID}}); err != nil {
			t.Fatal(err)
		}
		audits := e.auditCount()

		// Devices and viewers upload nothing.
		for who, cl := range map[string]*serverapi.Client{"device": clA, "viewer": viewer} {
			up := cl.Uploader()
			if _, err := up.ContentInfo(ctx); status(err) != http.StatusForbidden {
				t.Errorf("%s: content info: %v, want 403", who, err)
			}
			if _, err := up.Missing(ctx, make([]byte, 32)); status(err) != http.StatusForbidden {
				t.Errorf("%s: missing: %v, want 403", who, err)
			}
			if _, err := up.PutPieces(ctx, transfer.NewBatch()); status(err) != http.StatusForbidden {
				t.Errorf("%s: pieces: %v, want 403", who, err)
			}
			if err := up.PutIndex(ctx, mine.DiffIDs[0], []byte("x"), ""); status(err) != http.StatusForbidden {
				t.Errorf("%s: index: %v, want 403", who, err)
			}
			if _, err := up.Load(ctx, localapi.LoadRequest{}); status(err) != http.StatusForbidden {
				t.Errorf("%s: images: %v, want 403", who, err)
			}
		}
		// Users download nothing.
		if _, err := deployer.Source().Config(ctx, mine.ID); status(err) != http.StatusForbidden {
			t.Errorf("a deployer on the device side: %v, want 403", err)
		}

		// Device A reads its target's image and layer.
		if cfg, err := clA.Source().Config(ctx, mine.ID); err != nil || digestOf(cfg) != mine.ID {
			t.Errorf("device A, its image: %v", err)
		}
		if _, _, err := clA.Source().Index(ctx, mine.DiffIDs[0], nil); err != nil {
			t.Errorf("device A, its layer: %v", err)
		}
		// Nothing else, whether it exists or not, and the answers say nothing.
		nothing := "sha256:" + strings.Repeat("ef", 32)
		for _, tc := range []struct {
			name, token, method, path string
			body                      []byte
		}{
			{"BOtherImage", tokB, "GET", "/v1/device/content/images/" + mine.ID, nil},
			{"BOtherLayer", tokB, "GET", "/v1/device/content/layers/" + mine.DiffIDs[0], nil},
			{"BOtherPieces", tokB, "POST", "/v1/device/content/layers/" + mine.DiffIDs[0] + "/pieces", make([]byte, 32)},
			{"AAnotherFleetsImage", tokA, "GET", "/v1/device/content/images/" + other.ID, nil},
			{"AAnotherFleetsLayer", tokA, "GET", "/v1/device/content/layers/" + other.DiffIDs[0], nil},
			{"AUnreleasedLayerPieces", tokA, "POST", "/v1/device/content/layers/" + secret.DiffIDs[0] + "/pieces", make([]byte, 32)},
			{"ANoSuchImage", tokA, "GET", "/v1/device/content/images/" + nothing, nil},
			{"ANoSuchLayer", tokA, "GET", "/v1/device/content/layers/" + nothing, nil},
			{"ANotADigest", tokA, "GET", "/v1/device/content/layers/latest", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				code, _, body := e.do(tc.method, tc.path, tc.token, bytes.NewReader(tc.body))
				if code != http.StatusNotFound {
					t.Errorf("%d, want 404: %s", code, body)
				}
				msg := errorOnly(t, tc.name, body)
				for _, l := range []string{"mine:1", "other:1", "secret:1", devA.ID, "field"} {
					if strings.Contains(msg, l) {
						t.Errorf("the refusal names %q: %s", l, msg)
					}
				}
			})
		}
		// Pieces of its own layer only: digests of another layer are refused.
		otherIx := indexOf(t, e, other.DiffIDs[0])
		var q []byte
		for _, pc := range otherIx.Pieces() {
			q = append(q, pc.Digest[:]...)
		}
		if _, err := clA.Source().Pieces(ctx, mine.DiffIDs[0], q[:32], nil); status(err) != http.StatusNotFound {
			t.Errorf("pieces of another layer, named as its own: %v, want 404", err)
		}
		// A layer outside the fleet's releases is no delta base: naming it
		// gets the index alone; naming its own layer is fine.
		code, hdr, body := e.do("GET", "/v1/device/content/layers/"+mine.DiffIDs[0]+"?base="+secret.DiffIDs[0], tokA, nil)
		if code != http.StatusOK || hdr.Get(serverapi.IndexBaseHeader) != "" {
			t.Errorf("a base outside the fleet's releases: %d, base %q: %.100s", code, hdr.Get(serverapi.IndexBaseHeader), body)
		}

		// Uploads are checked: a damaged piece is refused and not kept.
		data := []byte("the real bytes of a piece")
		d := content.Sum(data)
		bad := transfer.AppendFrame(transfer.NewBatch(), transfer.Frame{Kind: transfer.KindRaw, Digest: d, Data: []byte("other bytes")})
		up := deployer.Uploader()
		if _, err := up.PutPieces(ctx, bad); status(err) != http.StatusBadRequest {
			t.Errorf("a damaged piece: %v, want 400", err)
		}
		if m, err := up.Missing(ctx, d[:]); err != nil || !bytes.Equal(m, d[:]) {
			t.Errorf("the damaged piece was kept: %x, %v", m, err)
		}
		if _, err := up.PutPieces(ctx, []byte("not a batch")); status(err) != http.StatusBadRequest {
			t.Errorf("not a batch: %v, want 400", err)
		}
		// An index before its pieces: 409, nothing stored.
		lone := layerTar(t, 20, 3, 0, -1, false)
		ix, err := content.Split(bytes.NewReader(lone), func(content.Digest, []byte) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		enc, _ := zstd.NewWriter(nil)
		defer enc.Close()
		if err := up.PutIndex(ctx, ix.DiffID.String(), enc.EncodeAll(ix.Encode(), nil), ""); status(err) != http.StatusConflict {
			t.Errorf("an index before its pieces: %v, want 409", err)
		}
		// An image whose layers did not arrive is not registered.
		cfg := fmt.Appendf(nil, `{"os":"linux","rootfs":{"type":"layers","diff_ids":[%q, %q]}}`, mine.DiffIDs[0], ix.DiffID)
		if _, err := up.Load(ctx, localapi.LoadRequest{Images: []localapi.LoadImage{{Config: cfg}}}); status(err) != http.StatusConflict || !strings.Contains(err.Error(), "has not been uploaded") {
			t.Errorf("an image with a layer not uploaded: %v, want 409", err)
		}
		if info, _ := up.ContentInfo(ctx); len(info.Images) != 3 {
			t.Errorf("images after the refusals: %v", info.Images)
		}
		// Bodies: over the batch limit 413, malformed 400 (a batch is read
		// as it arrives: what is not one is refused at its first bytes).
		head := binary.AppendUvarint(append(append(transfer.NewBatch(), transfer.KindRaw), make([]byte, 32)...), transfer.MaxBatch-64)
		if code, _, body := e.do("POST", "/v1/content/pieces", e.adminToken, io.LimitReader(io.MultiReader(bytes.NewReader(head), zeros{}), transfer.MaxBatch+1)); code != http.StatusRequestEntityTooLarge {
			t.Errorf("a batch over the limit: %d %s", code, body)
		}
		if code, _, body := e.do("POST", "/v1/content/pieces", e.adminToken, io.LimitReader(zeros{}, transfer.MaxBatch+1)); code != http.StatusBadRequest {
			t.Errorf("zeros over the batch limit: %d %s", code, body)
		}
		if code, _, body := e.do("POST", "/v1/content/missing", e.adminToken, strings.NewReader("odd")); code != http.StatusBadRequest {
			t.Errorf("a question that is not digests: %d %s", code, body)
		}
		if code, _, body := e.do("POST", "/v1/content/images", e.adminToken, strings.NewReader(`{"images": [{"config": "e30="}], "extra": 1}`)); code != http.StatusBadRequest {
			t.Errorf("images with an unknown field: %d %s", code, body)
		}
		if code, _, body := e.do("PUT", "/v1/content/layers/"+mine.DiffIDs[0]+"?base=sha256:"+strings.Repeat("0", 64), e.adminToken, strings.NewReader("x")); code != http.StatusNotFound && code != http.StatusBadRequest {
			t.Errorf("an index delta against a layer the server lacks: %d %s", code, body)
		}
		if n := e.auditCount(); n != audits {
			t.Errorf("refused uploads were audited: %d entries, were %d", n, audits)
		}
	})
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// indexOf reads a layer's index from the server's content store.
func indexOf(t *testing.T, e *env, diffID string) *content.Index {
	t.Helper()
	st, err := content.Open(filepath.Join(e.dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d, _ := content.ParseDigest(diffID)
	ix, err := st.Index(d)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}
