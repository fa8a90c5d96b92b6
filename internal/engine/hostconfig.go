package engine

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/errdefs"

	"github.com/berth-robotics/berth/internal/release"
)

// applyHost sets what the Compose attributes of one host ask of the
// container: namespaces, runtime, resources, GPUs, security, DNS. Values
// that name another service of the app (service:NAME) become that service's
// container of the spec the service follows.
func (c *Client) applyHost(ctx context.Context, rel *release.Release, svc release.Service, cfg *container.Config, host *container.HostConfig) error {
	cfg.Tty, cfg.OpenStdin = svc.Tty, svc.StdinOpen
	cfg.Domainname = svc.Domainname
	if svc.MacAddress != "" && versions.LessThan(c.api.ClientVersion(), "1.44") {
		cfg.MacAddress = svc.MacAddress //nolint:staticcheck // the field of API < 1.44
	}
	ns := func(v string) (string, error) {
		dep := release.Joins(v)
		if dep == "" {
			return v, nil
		}
		id, err := c.serviceContainer(ctx, rel.App, dep, svc.Follows[dep])
		if err != nil {
			return "", err
		}
		return "container:" + id, nil
	}
	var err error
	if host.IpcMode, err = nsMode[container.IpcMode](ns, svc.Ipc); err != nil {
		return err
	}
	if host.PidMode, err = nsMode[container.PidMode](ns, svc.Pid); err != nil {
		return err
	}
	if dep := release.Joins(svc.NetworkMode); dep != "" {
		v, err := ns(svc.NetworkMode)
		if err != nil {
			return err
		}
		host.NetworkMode = container.NetworkMode(v)
	}
	host.UTSMode = container.UTSMode(svc.Uts)
	host.UsernsMode = container.UsernsMode(svc.UsernsMode)
	host.CgroupnsMode = container.CgroupnsMode(svc.Cgroup)
	host.Runtime = svc.Runtime
	host.ReadonlyRootfs = svc.ReadOnly
	host.GroupAdd = svc.GroupAdd
	host.SecurityOpt = svc.SecurityOpt
	host.Sysctls = svc.Sysctls
	host.DNS, host.DNSSearch, host.DNSOptions = svc.DNS, svc.DNSSearch, svc.DNSOpt
	host.Annotations = svc.Annotations
	host.StorageOpt = svc.StorageOpt
	host.OomScoreAdj = int(svc.OomScoreAdj)
	host.Resources.CgroupParent = svc.CgroupParent
	host.Resources.DeviceCgroupRules = svc.DeviceCgroupRules
	if r := svc.Resources; r != nil {
		host.Resources.Memory = r.Memory
		host.Resources.MemorySwap = r.MemorySwap
		host.Resources.MemoryReservation = r.MemoryReservation
		host.Resources.MemorySwappiness = r.MemorySwappiness
		host.Resources.NanoCPUs = r.NanoCPUs
		host.Resources.CPUShares = r.CPUShares
		host.Resources.CPUPeriod = r.CPUPeriod
		host.Resources.CPUQuota = r.CPUQuota
		host.Resources.CPURealtimePeriod = r.CPURealtimePeriod
		host.Resources.CPURealtimeRuntime = r.CPURealtimeRuntime
		host.Resources.CpusetCpus = r.CpusetCpus
		host.Resources.BlkioWeight = r.BlkioWeight
		if r.PidsLimit != 0 {
			p := r.PidsLimit
			host.Resources.PidsLimit = &p
		}
		if r.OomKillDisable {
			t := true
			host.Resources.OomKillDisable = &t
		}
		for _, d := range r.Devices {
			dr := container.DeviceRequest{Driver: d.Driver, Count: int(d.Count), DeviceIDs: d.DeviceIDs, Options: d.Options}
			if len(d.Capabilities) > 0 {
				dr.Capabilities = [][]string{d.Capabilities}
			}
			host.Resources.DeviceRequests = append(host.Resources.DeviceRequests, dr)
		}
	}
	return nil
}

func nsMode[M ~string](ns func(string) (string, error), v string) (M, error) {
	s, err := ns(v)
	return M(s), err
}

// serviceContainer finds the container of one of app's services with the
// given spec hash (any when hash is ""), for service:NAME namespaces.
func (c *Client) serviceContainer(ctx context.Context, app, service, hash string) (string, error) {
	f := c.ownFilter(app)
	f.Add("label", LabelService+"="+service)
	if hash != "" {
		f.Add("label", LabelSpec+"="+hash)
	}
	list, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return "", fmt.Errorf("find the container of service %s: %w", service, err)
	}
	for _, ct := range list {
		if ct.State == "running" {
			return ct.ID, nil
		}
	}
	if len(list) > 0 {
		return list[0].ID, nil
	}
	return "", fmt.Errorf("service %s has no container to share namespaces with: %w", service, release.ErrNotFound)
}

// endpoint is the endpoint settings of one service on one network.
func endpoint(service string, ref release.NetworkRef, macFromService string, apiVersion string) *network.EndpointSettings {
	es := &network.EndpointSettings{Aliases: append([]string{service}, ref.Aliases...), DriverOpts: ref.DriverOpts}
	if ref.IPv4Address != "" || ref.IPv6Address != "" || len(ref.LinkLocalIPs) > 0 {
		es.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: ref.IPv4Address, IPv6Address: ref.IPv6Address, LinkLocalIPs: ref.LinkLocalIPs}
	}
	if versions.GreaterThanOrEqualTo(apiVersion, "1.44") {
		es.MacAddress = ref.MacAddress
		if es.MacAddress == "" {
			es.MacAddress = macFromService
		}
	}
	return es
}

// anonymousVolume is the volume berth gives an anonymous volume of a
// service (a mount with a target and no source): named after the app,
// service and target, labelled like the app's named volumes, so the data
// stays across switches and rollbacks as docker compose keeps it across
// recreates; `berth rm --volumes` removes it with the app's other volumes.
func (c *Client) anonymousVolume(ctx context.Context, app, service, target string) (string, error) {
	name := c.prefix(app) + "." + service + ".anon" + strings.ReplaceAll(unsafeName.ReplaceAllString(target, "-"), "--", "-")
	if len(name) > 200 {
		name = name[:200]
	}
	labels := map[string]string{LabelInstance: c.instance, LabelApp: app, LabelService: service, LabelAnonymous: target}
	if v, err := c.api.VolumeInspect(ctx, name); err == nil {
		if v.Labels[LabelInstance] != c.instance || v.Labels[LabelApp] != app {
			return "", fmt.Errorf("a volume named %s exists but berth did not create it for this app; remove or rename it: %w", name, release.ErrConflict)
		}
		return name, nil
	} else if !errdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspect volume %s: %w", name, err)
	}
	if _, err := c.api.VolumeCreate(ctx, volume.CreateOptions{Name: name, Labels: labels}); err != nil {
		return "", fmt.Errorf("create the anonymous volume of %s at %s: %w", service, target, err)
	}
	return name, nil
}

// LabelAnonymous marks the volume berth made for an anonymous volume; its
// value is the mount target.
const LabelAnonymous = "berth.anonymous"

// mountOf maps one of the service's mounts.
func mountOf(m release.Mount, src string) (mount.Mount, error) {
	out := mount.Mount{Source: src, Target: m.Target, ReadOnly: m.ReadOnly}
	switch m.Type {
	case "volume":
		out.Type = mount.TypeVolume
		if m.NoCopy || m.Subpath != "" {
			out.VolumeOptions = &mount.VolumeOptions{NoCopy: m.NoCopy, Subpath: m.Subpath}
		}
	case "bind":
		out.Type = mount.TypeBind
		if m.Propagation != "" {
			out.BindOptions = &mount.BindOptions{Propagation: mount.Propagation(m.Propagation)}
		}
	case "tmpfs":
		out.Type = mount.TypeTmpfs
		out.Source = ""
		if m.TmpfsSize != 0 || m.TmpfsMode != 0 {
			out.TmpfsOptions = &mount.TmpfsOptions{SizeBytes: m.TmpfsSize, Mode: os.FileMode(m.TmpfsMode)}
		}
	default:
		return out, fmt.Errorf("mount type %q is not supported: %w", m.Type, release.ErrInvalid)
	}
	return out, nil
}

// sortedNetworks orders a service's networks as docker compose connects
// them: by priority, highest first, then by name.
func sortedNetworks(refs map[string]release.NetworkRef, name func(string) string) []string {
	keys := make([]string, 0, len(refs))
	for k := range refs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if refs[keys[i]].Priority != refs[keys[j]].Priority {
			return refs[keys[i]].Priority > refs[keys[j]].Priority
		}
		return name(keys[i]) < name(keys[j])
	})
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = name(k)
	}
	return out
}
