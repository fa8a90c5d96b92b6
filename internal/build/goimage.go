package build

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/berth-robotics/berth/internal/engine"
)

// Importer is the part of engine.Client that LocalGoImage uses.
type Importer interface {
	Engine
	Import(ctx context.Context, rootfs io.Reader, ref string, changes []string) (string, error)
}

// warmPackages are compiled into the local Go image's build cache, so that a
// small service's build compiles little more than itself.
const warmPackages = "fmt flag log log/slog net/http encoding/json html/template os/signal context time math strconv sync"

// LocalGoImageRef names the image LocalGoImage makes for this Go toolchain:
// berth-local/golang:1.26.
func LocalGoImageRef() string {
	v := strings.TrimPrefix(runtime.Version(), "go")
	if parts := strings.SplitN(v, ".", 3); len(parts) >= 2 {
		v = parts[0] + "." + parts[1]
	}
	return "berth-local/golang:" + v
}

// LocalGoImage makes a stand-in for the official Go image from this
// machine's own toolchain, for machines that cannot pull (docker import of
// GOROOT at /usr/local/go and busybox-static's /bin/busybox as the shell), and
// returns its reference. It is made once: an image of that name is kept.
// Dockerfiles take it through a build arg: --build-arg GO_IMAGE=<ref>.
func LocalGoImage(ctx context.Context, eng Importer) (string, error) {
	ref := LocalGoImageRef()
	if _, err := eng.Image(ctx, ref); err == nil {
		return ref, nil
	}
	unlock, err := lockMachine("berth-local-golang")
	if err != nil {
		return "", fmt.Errorf("make %s: %w", ref, err)
	}
	defer unlock()
	if _, err := eng.Image(ctx, ref); err == nil {
		return ref, nil // another berth made it meanwhile
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output()
	goroot := strings.TrimSpace(string(out))
	if err != nil || goroot == "" {
		return "", fmt.Errorf("make %s: where is the Go toolchain? go env GOROOT: %v", ref, err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("make %s: busybox is missing (apt-get install busybox-static): %w", ref, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(goRootfs(pw, goroot, busybox)) }()
	defer pr.Close()
	_, err = eng.Import(ctx, pr, ref, []string{
		"ENV PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"ENV GOPATH=/go",
		"ENV GOTOOLCHAIN=local",
		"WORKDIR /go",
		`LABEL org.opencontainers.image.description="berth: the local Go toolchain, made offline by docker import"`,
	})
	if err != nil {
		return "", err
	}
	// warm the build cache with the flags of CGO_ENABLED=0 -trimpath builds
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	df := "FROM " + ref + "\nRUN CGO_ENABLED=0 go build -trimpath " + warmPackages + "\n"
	_ = tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte(df))
	_ = tw.Close()
	if _, err := eng.Build(ctx, engine.BuildOptions{Context: &ctxTar, Dockerfile: "Dockerfile", Tags: []string{ref}}, nil); err != nil {
		return "", fmt.Errorf("make %s: warm its build cache: %w", ref, err)
	}
	return ref, nil
}

// goRootfs writes a root filesystem: busybox with its applets in /bin, and
// GOROOT at /usr/local/go without its tests and docs.
func goRootfs(w io.Writer, goroot, busybox string) error {
	tw := tar.NewWriter(w)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Name: name + "/", Mode: mode, Typeflag: tar.TypeDir})
	}
	for _, d := range []string{"bin", "etc", "go", "root", "usr", "usr/local"} {
		if err := dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return err
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
	if err := tw.WriteHeader(&tar.Header{Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, passwd); err != nil {
		return err
	}
	if err := addFile(tw, busybox, "bin/busybox"); err != nil {
		return err
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink}); err != nil {
			return err
		}
	}
	skip := map[string]bool{"test": true, "doc": true, "api": true, "misc": true}
	err = filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(goroot, p)
		if rel == "." {
			return dir("usr/local/go", 0o755)
		}
		if d.IsDir() && (skip[rel] || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		name := "usr/local/go/" + filepath.ToSlash(rel)
		if d.IsDir() {
			return dir(name, 0o755)
		}
		return addFile(tw, p, name)
	})
	if err != nil {
		return fmt.Errorf("GOROOT %s: %w", goroot, err)
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, path, name string) error {
	info, err := os.Lstat(path)
	if err != nil {
		return err
	}
	link := ""
	if info.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(path); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(info, link)
	if err != nil {
		return err
	}
	h.Name, h.Uid, h.Gid, h.Uname, h.Gname = name, 0, 0, "", ""
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}
