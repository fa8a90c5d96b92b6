package compose

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/berth-robotics/berth/internal/release"
)

// hostSettings maps the attributes that shape one container on one Docker
// host: namespaces, runtime, resources (mem_limit, cpus, … and
// deploy.resources, which docker compose applies without swarm), GPUs,
// security and DNS. What only a swarm can use is refused by name.
func hostSettings(name string, s types.ServiceConfig, out *release.Service, srcs []source, refused *refusals) {
	at := func(attr ...string) []string { return append([]string{"services", name}, attr...) }
	out.ContainerName = s.ContainerName
	out.Ipc, out.Pid, out.Uts, out.UsernsMode = s.Ipc, s.Pid, s.Uts, s.UserNSMode
	out.Cgroup, out.CgroupParent = s.Cgroup, s.CgroupParent
	out.Runtime, out.Platform = s.Runtime, s.Platform
	out.Tty, out.StdinOpen, out.ReadOnly = s.Tty, s.StdinOpen, s.ReadOnly
	out.GroupAdd = sliceOrNil(s.GroupAdd)
	out.DeviceCgroupRules = sliceOrNil(s.DeviceCgroupRules)
	out.SecurityOpt = sliceOrNil(s.SecurityOpt)
	out.Sysctls = mapOrNil(s.Sysctls)
	out.DNS, out.DNSSearch, out.DNSOpt = sliceOrNil(s.DNS), sliceOrNil(s.DNSSearch), sliceOrNil(s.DNSOpts)
	out.Domainname, out.MacAddress = s.DomainName, s.MacAddress
	out.Annotations = mapOrNil(s.Annotations)
	out.StorageOpt = mapOrNil(s.StorageOpt)
	out.OomScoreAdj = s.OomScoreAdj
	out.PullPolicy = s.PullPolicy
	switch s.PullPolicy {
	case types.PullPolicyMissing, types.PullPolicyIfNotPresent:
		// kept: berth's default (unset) pulls nothing, the laptop or the
		// server sends the images; missing pulls what was not sent
		out.PullPolicy = release.PullMissing
	case types.PullPolicyAlways, types.PullPolicyNever, types.PullPolicyBuild, "":
	default:
		if _, _, err := s.GetPullPolicy(); err != nil {
			refused.add(srcs, at("pull_policy"), "", fmt.Sprintf("%q: use always, missing, never, build, daily, weekly or every_<duration>", s.PullPolicy))
		}
	}

	r := release.Resources{
		Memory: int64(s.MemLimit), MemorySwap: int64(s.MemSwapLimit), MemoryReservation: int64(s.MemReservation),
		NanoCPUs: int64(float64(s.CPUS) * 1e9), CPUShares: s.CPUShares, CPUPeriod: s.CPUPeriod, CPUQuota: s.CPUQuota,
		CPURealtimePeriod: s.CPURTPeriod, CPURealtimeRuntime: s.CPURTRuntime, CpusetCpus: s.CPUSet,
		PidsLimit: s.PidsLimit, OomKillDisable: s.OomKillDisable,
	}
	if s.MemSwappiness != 0 {
		v := int64(s.MemSwappiness)
		r.MemorySwappiness = &v
	}
	if b := s.BlkioConfig; b != nil {
		r.BlkioWeight = b.Weight
	}
	for _, g := range s.Gpus { // gpus: as docker run --gpus: the gpu capability always
		r.Devices = append(r.Devices, deviceRequest(g, "gpu"))
	}
	if s.Scale != nil && *s.Scale != 1 {
		refused.add(srcs, at("scale"), "", fmt.Sprintf("scale %d: berth runs one container per service on a device; remove it (a disabled service goes in a profile)", *s.Scale))
	}
	if d := s.Deploy; d != nil {
		if d.Replicas != nil && *d.Replicas != 1 {
			refused.add(srcs, at("deploy", "replicas"), "", fmt.Sprintf("%d replicas: berth runs one container per service on a device; remove it (a disabled service goes in a profile)", *d.Replicas))
		}
		if l := d.Resources.Limits; l != nil {
			// docker compose applies these after mem_limit, cpus and pids_limit
			if l.MemoryBytes != 0 {
				r.Memory = int64(l.MemoryBytes)
			}
			if l.NanoCPUs != 0 {
				r.NanoCPUs = int64(float64(l.NanoCPUs) * 1e9)
			}
			if l.Pids != 0 {
				r.PidsLimit = l.Pids
			}
		}
		if res := d.Resources.Reservations; res != nil {
			if res.MemoryBytes != 0 {
				r.MemoryReservation = int64(res.MemoryBytes)
			}
			for _, dr := range res.Devices {
				r.Devices = append(r.Devices, deviceRequest(dr, ""))
			}
		}
		if rp := d.RestartPolicy; rp != nil && s.Restart == "" {
			out.Restart = restartOf(rp)
		}
	}
	if !reflect.ValueOf(r).IsZero() {
		out.Resources = &r
	}
}

// deviceRequest maps a device reservation as docker compose does: no count
// and no IDs means every device.
func deviceRequest(d types.DeviceRequest, capability string) release.DeviceRequest {
	caps := slices.Clone(d.Capabilities)
	if capability != "" && !slices.Contains(caps, capability) {
		caps = append(caps, capability)
	}
	out := release.DeviceRequest{Driver: d.Driver, Count: int64(d.Count), DeviceIDs: sliceOrNil(d.IDs), Capabilities: sliceOrNil(caps), Options: mapOrNil(d.Options)}
	if out.Count == 0 && len(out.DeviceIDs) == 0 {
		out.Count = -1
	}
	return out
}

// restartOf maps deploy.restart_policy, which docker compose uses when the
// service sets no restart:.
func restartOf(rp *types.RestartPolicy) string {
	name := rp.Condition
	switch rp.Condition {
	case "none", "no":
		return "no"
	case "any", "always", "":
		name = "always"
	}
	if name == "on-failure" && rp.MaxAttempts != nil {
		return fmt.Sprintf("on-failure:%d", *rp.MaxAttempts)
	}
	return name
}

// network maps a top-level network.
func network(key string, n types.NetworkConfig, name string, srcs []source, refused *refusals) release.Network {
	out := release.Network{
		Driver: n.Driver, External: bool(n.External), Name: name, Internal: n.Internal,
		Labels: mapOrNil(n.Labels), DriverOpts: mapOrNil(n.DriverOpts),
		EnableIPv6: n.EnableIPv6, Attachable: n.Attachable,
	}
	if n.EnableIPv4 != nil && !*n.EnableIPv4 {
		refused.add(srcs, []string{"networks", key, "enable_ipv4"}, "", "an IPv6-only network needs Docker Engine 28; remove it")
	}
	if ip := n.Ipam; ip.Driver != "" || len(ip.Config) > 0 || len(ip.Options) > 0 {
		out.IPAM = &release.IPAM{Driver: ip.Driver, Options: mapOrNil(ip.Options)}
		for _, c := range ip.Config {
			if c != nil {
				out.IPAM.Config = append(out.IPAM.Config, release.IPAMPool{Subnet: c.Subnet, Gateway: c.Gateway, IPRange: c.IPRange, AuxAddresses: mapOrNil(c.AuxiliaryAddresses)})
			}
		}
	}
	return out
}
