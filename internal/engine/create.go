package engine

import (
	"context"
	"fmt"
	"io"
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
	cfg, host, nets, err := c.containerConfig(rel, service, svc, hash, lockDir)
	if err != nil {
		return "", err
	}
	// API < 1.44 accepts one endpoint at create; connect the others after.
	var first *network.NetworkingConfig
	var rest []string
	if len(nets) > 0 {
		names := make([]string, 0, len(nets))
		for n := range nets {
			names = append(names, n)
		}
		sort.Strings(names)
		first = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{names[0]: nets[names[0]]}}
		rest = names[1:]
		host.NetworkMode = container.NetworkMode(names[0])
	}
	resp, err := c.api.ContainerCreate(ctx, cfg, host, first, nil, name)
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

func (c *Client) containerConfig(rel *release.Release, service string, svc release.Service, hash, lockDir string) (*container.Config, *container.HostConfig, map[string]*network.EndpointSettings, error) {
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
		return nil, nil, nil, fmt.Errorf("service %s: %w", service, err)
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
			return nil, nil, nil, fmt.Errorf("service %s: ports: %v: %w", service, err, release.ErrInvalid)
		}
		cfg.ExposedPorts = exposed
		host.PortBindings = bindings
	}

	// Mounts: the app's lock directory, then the service's own.
	if lockDir != "" {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: lockDir, Target: LockMountPath})
	}
	for _, m := range svc.Mounts {
		switch m.Type {
		case "volume":
			src := m.Source
			if src != "" {
				src = c.VolumeName(rel.App, m.Source, rel.Spec.Volumes[m.Source])
			}
			host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeVolume, Source: src, Target: m.Target, ReadOnly: m.ReadOnly})
		case "bind":
			host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
		case "tmpfs":
			host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeTmpfs, Target: m.Target})
		default:
			return nil, nil, nil, fmt.Errorf("service %s: mount type %q is not supported: %w", service, m.Type, release.ErrInvalid)
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
	switch svc.NetworkMode {
	case "":
		refs := svc.Networks
		if len(refs) == 0 {
			refs = map[string]release.NetworkRef{"default": {}}
		}
		for n, ref := range refs {
			es := &network.EndpointSettings{Aliases: append([]string{service}, ref.Aliases...)}
			nets[c.NetworkName(rel.App, n, rel.Spec.Networks[n])] = es
		}
	default:
		host.NetworkMode = container.NetworkMode(svc.NetworkMode)
	}
	return cfg, host, nets, nil
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
