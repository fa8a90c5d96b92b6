package engine

import (
	"context"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/release"
)

// TestCreateRequestMapping checks what the create request carries for the
// settings the shared test engine cannot run (a GPU, annotations on API
// 1.43+, storage options, a platform): the engine sees exactly what docker
// compose would send. TestROS2Project checks the rest through docker inspect.
func TestCreateRequestMapping(t *testing.T) {
	for _, api := range []string{"1.41", "1.44"} {
		t.Run(api, func(t *testing.T) {
			cl, err := client.NewClientWithOpts(client.WithVersion(api), client.WithHost("unix:///nonexistent.sock"))
			if err != nil {
				t.Fatal(err)
			}
			c := &Client{api: cl, instance: "test"}
			swap := int64(10)
			svc := release.Service{
				Image: "x", Runtime: "nvidia", Annotations: map[string]string{"a": "b"}, StorageOpt: map[string]string{"size": "1G"},
				MacAddress: "02:42:ac:11:00:02", Platform: "linux/arm64", Uts: "host", UsernsMode: "host", Cgroup: "private",
				Resources: &release.Resources{
					MemorySwappiness: &swap, OomKillDisable: true, BlkioWeight: 300, CPUPeriod: 100000, CPUQuota: 50000,
					Devices: []release.DeviceRequest{
						{Count: -1, Capabilities: []string{"gpu"}},
						{Driver: "nvidia", DeviceIDs: []string{"0", "1"}, Capabilities: []string{"gpu", "compute"}, Options: map[string]string{"k": "v"}},
					},
				},
				Mounts: []release.Mount{
					{Type: "tmpfs", Target: "/scratch", TmpfsSize: 1 << 20, TmpfsMode: 0o1777},
					{Type: "bind", Source: "/srv/src", Target: "/src", Selinux: "z", ReadOnly: true},
					{Type: "bind", Source: "/srv/shared", Target: "/shared", Propagation: "rshared"},
				},
			}
			rel := &release.Release{App: "app", Spec: release.Spec{Services: map[string]release.Service{"gpu": svc}}}
			cfg, host, nets, order, err := c.containerConfig(context.Background(), rel, "gpu", svc, svc.Hash(), "")
			if err != nil {
				t.Fatal(err)
			}
			want := []container.DeviceRequest{
				{Count: -1, Capabilities: [][]string{{"gpu"}}},
				{Driver: "nvidia", DeviceIDs: []string{"0", "1"}, Capabilities: [][]string{{"gpu", "compute"}}, Options: map[string]string{"k": "v"}},
			}
			if diff := cmp.Diff(want, host.DeviceRequests); diff != "" {
				t.Errorf("device requests (-want +got):\n%s", diff)
			}
			if host.Runtime != "nvidia" || host.Annotations["a"] != "b" || host.StorageOpt["size"] != "1G" {
				t.Errorf("runtime %q, annotations %v, storage_opt %v", host.Runtime, host.Annotations, host.StorageOpt)
			}
			if host.UTSMode != "host" || host.UsernsMode != "host" || host.CgroupnsMode != "private" {
				t.Errorf("uts %q userns %q cgroup %q", host.UTSMode, host.UsernsMode, host.CgroupnsMode)
			}
			r := host.Resources
			if *r.MemorySwappiness != 10 || !*r.OomKillDisable || r.BlkioWeight != 300 || r.CPUPeriod != 100000 || r.CPUQuota != 50000 {
				t.Errorf("resources %+v", r)
			}
			if diff := cmp.Diff([]string{"/srv/src:/src:z,ro"}, host.Binds); diff != "" {
				t.Errorf("binds (-want +got):\n%s", diff)
			}
			if len(host.Mounts) != 2 || host.Mounts[0].TmpfsOptions == nil || host.Mounts[0].TmpfsOptions.SizeBytes != 1<<20 || host.Mounts[0].TmpfsOptions.Mode != 0o1777 ||
				host.Mounts[1].BindOptions == nil || host.Mounts[1].BindOptions.Propagation != "rshared" {
				t.Errorf("mounts %+v", host.Mounts)
			}
			mac := cfg.MacAddress //nolint:staticcheck
			if api == "1.41" && mac != svc.MacAddress || api == "1.44" && (mac != "" || nets[order[0]].MacAddress != svc.MacAddress) {
				t.Errorf("API %s: mac_address on the config %q, on the endpoint %q", api, mac, nets[order[0]].MacAddress)
			}
		})
	}
}
