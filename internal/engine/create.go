package engine

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/errdefs"
	"github.com/docker/go-connections/nat"
	"github.com/docker/go-units"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-robotics/berth/internal/release"
)

// LockMountPath is where every berth container sees its app's lock directory;
// an app takes its update lock with flock(2) on LockMountPath/update.lock.
const LockMountPath = "/run/berth"

// Create creates (but does not start) the container of one service of rel,
// with lockDir (the app's lock directory on the host) mounted at
// LockMountPath. It is idempotent: a container with the same name and spec is
// reused.
func (c *Client) Create(ctx context.Context, rel *release.Release, service, lockDir string) (string, error) {
	svc, ok := rel.Spec.Services[service]
	if !ok {
		return "", fmt.Errorf("service %s is not in release %s: %w", service, release.ShortID(rel.ID), release.ErrNotFound)
	}
	hash := svc.Hash()
	name := c.ContainerName(rel.App, service, hash)
	if svc.ContainerName != "" {
		if err := c.claimName(ctx, rel.App, service, hash, svc.ContainerName); err != nil {
			return "", err
		}
		name = svc.ContainerName
	}
	if j, err := c.api.ContainerInspect(ctx, name); err == nil {
		l := j.Config.Labels
		if l[LabelInstance] == c.instance && l[LabelApp] == rel.App && l[LabelService] == service && l[LabelSpec] == hash {
			if j.State == nil || j.State.Status != "created" {
				return j.ID, nil
			}
			// Created but never started: a crash may have cut its network
			// setup short. Make it again.
			if err := c.Remove(ctx, j.ID); err != nil {
				return "", err
			}
		} else {
			return "", fmt.Errorf("a container named %s exists but berth did not create it for this service; remove or rename it: %w", name, release.ErrConflict)
		}
	} else if !errdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspect container %s: %w", name, err)
	}
	cfg, host, nets, order, err := c.containerConfig(ctx, rel, service, svc, hash, lockDir)
	if err != nil {
		return "", err
	}
	// API < 1.44 accepts one endpoint at create; connect the others after.
	var first *network.NetworkingConfig
	var rest []string
	if len(order) > 0 {
		first = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{order[0]: nets[order[0]]}}
		rest = order[1:]
		host.NetworkMode = container.NetworkMode(order[0])
	}
	var platform *ocispec.Platform
	if svc.Platform != "" {
		parts := strings.Split(svc.Platform, "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return "", fmt.Errorf("service %s: platform %q: want os/arch[/variant]: %w", service, svc.Platform, release.ErrInvalid)
		}
		platform = &ocispec.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) == 3 {
			platform.Variant = parts[2]
		}
	}
	resp, err := c.api.ContainerCreate(ctx, cfg, host, first, platform, name)
	if err != nil {
		return "", fmt.Errorf("create container for %s: %w", service, err)
	}
	for _, n := range rest {
		if err := c.api.NetworkConnect(ctx, n, resp.ID, nets[n]); err != nil {
			_ = c.Remove(ctx, resp.ID)
			return "", fmt.Errorf("connect %s to network %s: %w", service, n, err)
		}
	}
	return resp.ID, nil
}

func (c *Client) containerConfig(ctx context.Context, rel *release.Release, service string, svc release.Service, hash, lockDir string) (*container.Config, *container.HostConfig, map[string]*network.EndpointSettings, []string, error) {
	labels := map[string]string{}
	for k, v := range svc.Labels {
		labels[k] = v
	}
	labels[LabelInstance] = c.instance
	labels[LabelApp] = rel.App
	labels[LabelRelease] = rel.ID
	labels[LabelService] = service
	labels[LabelSpec] = hash
	labels[LabelVersion] = rel.Version

	img := svc.ImageID
	if img == "" {
		img = svc.Image
	}
	cfg := &container.Config{
		Image:      img,
		Cmd:        svc.Command,
		Entrypoint: svc.Entrypoint,
		Labels:     labels,
		User:       svc.User,
		WorkingDir: svc.WorkingDir,
		StopSignal: svc.StopSignal,
		Hostname:   svc.Hostname,
	}
	for k, v := range svc.Environment {
		cfg.Env = append(cfg.Env, k+"="+v)
	}
	if svc.Strategy() == release.StrategyHandOver {
		cfg.Env = append(cfg.Env, "BERTH_HANDOVER_FILE="+LockMountPath+"/"+release.HandoverFile(service, hash))
	}
	sort.Strings(cfg.Env)
	if g := svc.StopGracePeriod.D(); g > 0 {
		s := int(g.Round(time.Second) / time.Second)
		cfg.StopTimeout = &s
	}
	if hc := svc.Healthcheck; hc != nil {
		h := &container.HealthConfig{Test: hc.Test, Interval: hc.Interval.D(), Timeout: hc.Timeout.D(), StartPeriod: hc.StartPeriod.D()}
		if hc.Disable {
			h = &container.HealthConfig{Test: []string{"NONE"}}
		}
		if hc.Retries != nil {
			h.Retries = int(*hc.Retries)
		}
		if versions.GreaterThanOrEqualTo(c.api.ClientVersion(), "1.44") {
			h.StartInterval = hc.StartInterval.D()
		}
		cfg.Healthcheck = h
	}

	host := &container.HostConfig{
		Privileged: svc.Privileged,
		CapAdd:     svc.CapAdd,
		CapDrop:    svc.CapDrop,
		Init:       svc.Init,
		ShmSize:    svc.ShmSize,
	}
	for _, h := range svc.ExtraHosts {
		host.ExtraHosts = append(host.ExtraHosts, strings.Replace(h, "=", ":", 1))
	}
	rp, err := restartPolicy(svc.Restart)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("service %s: %w", service, err)
	}
	host.RestartPolicy = rp
	if svc.Logging != nil {
		host.LogConfig = container.LogConfig{Type: svc.Logging.Driver, Config: svc.Logging.Options}
	}
	for _, d := range svc.Devices {
		perm := d.Permissions
		if perm == "" {
			perm = "rwm"
		}
		target := d.Target
		if target == "" {
			target = d.Source
		}
		host.Devices = append(host.Devices, container.DeviceMapping{PathOnHost: d.Source, PathInContainer: target, CgroupPermissions: perm})
	}
	names := make([]string, 0, len(svc.Ulimits))
	for n := range svc.Ulimits {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		u := svc.Ulimits[n]
		soft, hard := int64(u.Soft), int64(u.Hard)
		if u.Single != 0 {
			soft, hard = int64(u.Single), int64(u.Single)
		}
		host.Ulimits = append(host.Ulimits, &units.Ulimit{Name: n, Soft: soft, Hard: hard})
	}

	// Ports.
	var specs []string
	for _, p := range svc.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		s := fmt.Sprintf("%d/%s", p.Target, proto)
		if p.Published != "" || p.HostIP != "" {
			s = fmt.Sprintf("%s:%s:%s", p.HostIP, p.Published, s)
		}
		specs = append(specs, s)
	}
	for _, e := range svc.Expose {
		specs = append(specs, e)
	}
	if len(specs) > 0 {
		exposed, bindings, err := nat.ParsePortSpecs(specs)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("service %s: ports: %v: %w", service, err, release.ErrInvalid)
		}
		cfg.ExposedPorts = exposed
		host.PortBindings = bindings
	}

	// Mounts: the app's lock directory, then the service's own.
	if lockDir != "" {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: lockDir, Target: LockMountPath})
	}
	for _, m := range svc.Mounts {
		src := m.Source
		switch {
		case m.Type == "volume" && src != "":
			src = c.VolumeName(rel.App, m.Source, rel.Spec.Volumes[m.Source])
		case m.Type == "volume":
			v, err := c.anonymousVolume(ctx, rel.App, service, m.Target)
			if err != nil {
				return nil, nil, nil, nil, err
			}
			src = v
		case m.Type == "bind" && m.Selinux != "":
			// the Mounts API has no SELinux relabel: the Binds syntax does
			opts := []string{m.Selinux}
			if m.ReadOnly {
				opts = append(opts, "ro")
			}
			if m.Propagation != "" {
				opts = append(opts, m.Propagation)
			}
			host.Binds = append(host.Binds, m.Source+":"+m.Target+":"+strings.Join(opts, ","))
			continue
		}
		mt, err := mountOf(m, src)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("service %s: %w", service, err)
		}
		host.Mounts = append(host.Mounts, mt)
	}
	// Runtime configs and secrets: the agent writes each value into the
	// app's files directory, beside its lock directory; mounted read-only.
	for kind, refs := range map[string][]release.FileRef{release.KindConfig: svc.Configs, release.KindSecret: svc.Secrets} {
		for _, r := range refs {
			if lockDir == "" || r.Digest == "" {
				return nil, nil, nil, nil, fmt.Errorf("service %s: %s %s has no value on this device: %w", service, kind, r.Source, release.ErrInvalid)
			}
			src := filepath.Join(filepath.Dir(lockDir), "files", r.FileName(kind))
			host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: src, Target: r.Target, ReadOnly: true})
		}
	}
	if len(svc.Tmpfs) > 0 {
		host.Tmpfs = map[string]string{}
		for _, t := range svc.Tmpfs {
			path, o, _ := strings.Cut(t, ":")
			host.Tmpfs[path] = o
		}
	}

	// Networks.
	nets := map[string]*network.EndpointSettings{}
	var order []string
	switch svc.NetworkMode {
	case "":
		refs := svc.Networks
		if len(refs) == 0 {
			refs = map[string]release.NetworkRef{"default": {}}
		}
		name := func(n string) string { return c.NetworkName(rel.App, n, rel.Spec.Networks[n]) }
		order = sortedNetworks(refs, name)
		for n, ref := range refs {
			mac := ""
			if name(n) == order[0] {
				mac = svc.MacAddress // the service's mac_address is its first network's
			}
			nets[name(n)] = endpoint(service, ref, mac, c.api.ClientVersion())
		}
	default:
		host.NetworkMode = container.NetworkMode(svc.NetworkMode)
	}
	if err := c.applyHost(ctx, rel, svc, cfg, host); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("service %s: %w", service, err)
	}
	return cfg, host, nets, order, nil
}

func restartPolicy(s string) (container.RestartPolicy, error) {
	name, count, _ := strings.Cut(s, ":")
	switch name {
	case "", "no":
		return container.RestartPolicy{Name: container.RestartPolicyDisabled}, nil
	case "always":
		return container.RestartPolicy{Name: container.RestartPolicyAlways}, nil
	case "unless-stopped":
		return container.RestartPolicy{Name: container.RestartPolicyUnlessStopped}, nil
	case "on-failure":
		rp := container.RestartPolicy{Name: container.RestartPolicyOnFailure}
		if count != "" {
			n, err := strconv.Atoi(count)
			if err != nil || n < 0 {
				return rp, fmt.Errorf("restart %q: bad retry count: %w", s, release.ErrInvalid)
			}
			rp.MaximumRetryCount = n
		}
		return rp, nil
	}
	return container.RestartPolicy{}, fmt.Errorf("restart %q: want no, always, on-failure[:N] or unless-stopped: %w", s, release.ErrInvalid)
}

// BuildImage builds an image from a tar build context (a Dockerfile at its
// root) with the classic builder and tags it. It needs no registry when the
// Dockerfile starts FROM scratch or from an image already in the engine.
func (c *Client) BuildImage(ctx context.Context, contextTar io.Reader, tag string) (string, error) {
	if _, err := c.Build(ctx, BuildOptions{Context: contextTar, Tags: []string{tag}}, nil); err != nil {
		return "", fmt.Errorf("build %s: %w", tag, err)
	}
	return c.ImageID(ctx, tag)
}

// claimName gives a service's container_name to its container of spec hash,
// as docker compose does on recreate: whichever container of the same
// service holds the name (the previous release's, stopped and kept for a
// rollback) is renamed to the name berth would give it without
// container_name; the container of this spec, if it exists under that name
// (after a rollback brings it back), takes the name again. A container of
// that name that is not this service's is a conflict.
func (c *Client) claimName(ctx context.Context, app, service, hash, want string) error {
	f := c.ownFilter(app)
	f.Add("label", LabelService+"="+service)
	list, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return fmt.Errorf("list the containers of %s: %w", service, err)
	}
	var own string
	for _, ct := range list {
		if ct.Labels[LabelSpec] == hash {
			own = ct.ID
		}
	}
	holder, err := c.api.ContainerInspect(ctx, want)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("inspect container %s: %w", want, err)
	case holder.ID == own:
		return nil
	default:
		l := holder.Config.Labels
		if l[LabelInstance] != c.instance || l[LabelApp] != app || l[LabelService] != service {
			return fmt.Errorf("service %s: container_name %s is taken by a container berth did not create for this service; remove or rename it (docker rm %s): %w", service, want, want, release.ErrConflict)
		}
		aside := c.ContainerName(app, service, l[LabelSpec])
		if err := c.api.ContainerRename(ctx, holder.ID, aside); err != nil {
			return fmt.Errorf("rename the container of %s's other release out of the way (%s to %s): %w", service, want, aside, err)
		}
	}
	if own != "" {
		if err := c.api.ContainerRename(ctx, own, want); err != nil {
			return fmt.Errorf("give container_name %s back to %s's container: %w", want, service, err)
		}
	}
	return nil
}
