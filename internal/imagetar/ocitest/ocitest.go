// Package ocitest writes small OCI image layouts for tests: one image per
// architecture under a multi-platform index, as buildx --output type=oci
// writes them, attestation included.
package ocitest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type desc struct {
	MediaType string            `json:"mediaType"`
	Digest    string            `json:"digest"`
	Size      int               `json:"size"`
	Platform  map[string]string `json:"platform,omitempty"`
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// Layout returns the files (path → content) of a layout whose index names
// the image name (name:tag), with one image per arch. Each image has one
// gzip layer holding /etc/arch ("built for ARCH").
func Layout(name string, archs ...string) map[string][]byte {
	files := map[string][]byte{"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`)}
	addBlob := func(b []byte) string {
		d := sha(b)
		files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] = b
		return d
	}
	var manifests []desc
	for _, a := range append(archs, "unknown") {
		var lt bytes.Buffer
		tw := tar.NewWriter(&lt)
		body := []byte("built for " + a + "\n")
		tw.WriteHeader(&tar.Header{Name: "etc/arch", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write(body)
		tw.Close()
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(lt.Bytes())
		zw.Close()
		layer := addBlob(gz.Bytes())
		cfg := []byte(fmt.Sprintf(`{"architecture":%q,"os":"linux","config":{"Cmd":["/app"]},"rootfs":{"type":"layers","diff_ids":[%q]}}`, a, sha(lt.Bytes())))
		cfgD := addBlob(cfg)
		m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
			"config": desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cfgD, Size: len(cfg)},
			"layers": []desc{{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: layer, Size: gz.Len()}}})
		os := "linux"
		if a == "unknown" { // buildx's attestation manifest
			os = "unknown"
		}
		manifests = append(manifests, desc{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: addBlob(m), Size: len(m), Platform: map[string]string{"os": os, "architecture": a}})
	}
	inner, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
	innerD := addBlob(inner)
	tag := name[strings.LastIndex(name, ":")+1:]
	top, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []map[string]any{{
		"mediaType": "application/vnd.oci.image.index.v1+json", "digest": innerD, "size": len(inner),
		"annotations": map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}}})
	files["index.json"] = top
	return files
}

// WriteLayout writes Layout's files under dir.
func WriteLayout(dir, name string, archs ...string) error {
	for p, b := range Layout(name, archs...) {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
