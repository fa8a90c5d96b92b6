// Package engine is berth's only door to the Docker Engine. It negotiates the
// API version (robots run old engines), labels everything it creates with the
// agent instance, app, release and service, and lists only what carries this
// instance's label, so several agents share one engine without touching each
// other or anything else on it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/berth-robotics/berth/internal/release"
)

// Labels berth puts on everything it creates.
const (
	LabelInstance = "berth.instance"
	LabelApp      = "berth.app"
	LabelRelease  = "berth.release"
	LabelService  = "berth.service"
	LabelSpec     = "berth.spec"
	LabelVersion  = "berth.version"
)

// Client drives one Docker Engine on behalf of one agent instance.
type Client struct {
	api      *client.Client
	instance string
}

// New connects to the engine at host ("" means DOCKER_HOST, else the local
// socket) and negotiates the API version.
func New(ctx context.Context, host, instance string) (*Client, error) {
	if instance == "" {
		return nil, fmt.Errorf("engine: empty instance name: %w", release.ErrInvalid)
	}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	api, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := api.Ping(pctx); err != nil {
		api.Close()
		return nil, fmt.Errorf("docker engine at %s does not answer: %w (is dockerd running? set --docker-host or DOCKER_HOST)", api.DaemonHost(), err)
	}
	api.NegotiateAPIVersion(ctx)
	return &Client{api: api, instance: instance}, nil
}

// Close releases the client's connections.
func (c *Client) Close() error { return c.api.Close() }

// Instance is the agent instance name this client labels with.
func (c *Client) Instance() string { return c.instance }

// Info describes the engine.
type Info struct {
	Version    string
	APIVersion string
	Arch       string
	RootDir    string
	Runtimes   []string // the OCI runtimes the engine knows (runc, nvidia, …), sorted
}

// Info asks the engine who it is.
func (c *Client) Info(ctx context.Context) (Info, error) {
	v, err := c.api.ServerVersion(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("engine version: %w", err)
	}
	i, err := c.api.Info(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("engine info: %w", err)
	}
	var runtimes []string
	for r := range i.Runtimes {
		runtimes = append(runtimes, r)
	}
	sort.Strings(runtimes)
	return Info{Version: v.Version, APIVersion: c.api.ClientVersion(), Arch: v.Arch, RootDir: i.DockerRootDir, Runtimes: runtimes}, nil
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_-]+`)

// prefix is the engine-object name prefix for an app of this instance:
// "<instance>.<app>". App, service, volume and network names cannot contain
// '.', and the instance's dots are replaced, so names of different agents and
// apps never collide.
func (c *Client) prefix(app string) string {
	return strings.Trim(unsafeName.ReplaceAllString(c.instance, "-"), "-_") + "." + app
}

// ContainerName is the deterministic name of a service's container for one spec.
func (c *Client) ContainerName(app, service, specHash string) string {
	return c.prefix(app) + "." + service + "." + release.ShortID(specHash)
}

func (c *Client) ownFilter(app string) filters.Args {
	f := filters.NewArgs(filters.Arg("label", LabelInstance+"="+c.instance))
	if app != "" {
		f.Add("label", LabelApp+"="+app)
	}
	return f
}

// Containers lists this instance's containers of app ("" for every app), inspected.
func (c *Client) Containers(ctx context.Context, app string) ([]release.Container, error) {
	list, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: c.ownFilter(app)})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]release.Container, 0, len(list))
	for _, s := range list {
		ct, err := c.Inspect(ctx, s.ID)
		if errors.Is(err, release.ErrNotFound) {
			continue // removed while we looked
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ct)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Inspect reads one container. It refuses containers this instance does not own.
func (c *Client) Inspect(ctx context.Context, id string) (release.Container, error) {
	j, err := c.api.ContainerInspect(ctx, id)
	if err != nil {
		return release.Container{}, wrapNotFound(fmt.Sprintf("container %s", id), err)
	}
	l := j.Config.Labels
	if l[LabelInstance] != c.instance {
		return release.Container{}, fmt.Errorf("container %s is not managed by agent %s: %w", id, c.instance, release.ErrNotFound)
	}
	ct := release.Container{
		ID: j.ID, Name: strings.TrimPrefix(j.Name, "/"),
		App: l[LabelApp], Service: l[LabelService], Release: l[LabelRelease], SpecHash: l[LabelSpec],
		Restarts: j.RestartCount, Image: j.Image, Health: release.HealthNone,
	}
	if j.State != nil {
		ct.State = string(j.State.Status)
		ct.ExitCode = j.State.ExitCode
		ct.StartedAt, _ = time.Parse(time.RFC3339Nano, j.State.StartedAt)
		if h := j.State.Health; h != nil {
			ct.Health = string(h.Status)
			if n := len(h.Log); n > 0 && h.Log[n-1].ExitCode != 0 {
				ct.HealthLog = strings.TrimSpace(h.Log[n-1].Output)
			}
		}
	}
	return ct, nil
}

// Start starts a container.
//
// A container the engine cannot start because it still holds a task for it
// ("task … already exists": seen after the engine crashed while stopping the
// container) is release.ErrConflict, so that the caller can make it again.
func (c *Client) Start(ctx context.Context, id string) error {
	if err := c.api.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		if strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("start container %s: %v: %w", id, err, release.ErrConflict)
		}
		return fmt.Errorf("start container %s: %w", id, err)
	}
	return nil
}

// Stop stops a container, leaving it in place for a rollback. grace <= 0
// means the container's own stop timeout.
func (c *Client) Stop(ctx context.Context, id string, grace time.Duration) error {
	var opts container.StopOptions
	if grace > 0 {
		s := int(grace.Round(time.Second) / time.Second)
		opts.Timeout = &s
	}
	if err := c.api.ContainerStop(ctx, id, opts); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("stop container %s: %w", id, err)
	}
	return nil
}

// Remove removes a stopped container. Its named volumes are never removed.
func (c *Client) Remove(ctx context.Context, id string) error {
	err := c.api.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: false})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return nil
}

// ImageID resolves a reference (name:tag, name@digest or ID) to the image ID
// in the engine. A missing image is release.ErrNotFound.
func (c *Client) ImageID(ctx context.Context, ref string) (string, error) {
	i, err := c.api.ImageInspect(ctx, ref)
	if err != nil {
		return "", wrapNotFound("image "+ref, err)
	}
	return i.ID, nil
}

// TagImage points ref (name:tag) at the image id, moving the tag if it
// named another image.
func (c *Client) TagImage(ctx context.Context, id, ref string) error {
	if err := c.api.ImageTag(ctx, id, ref); err != nil {
		return wrapNotFound("tag "+ref+" as image "+id, err)
	}
	return nil
}

// RemoveImage removes an image by ID unless a container still uses it.
func (c *Client) RemoveImage(ctx context.Context, id string) error {
	_, err := c.api.ImageRemove(ctx, id, image.RemoveOptions{Force: false, PruneChildren: true})
	if err != nil && !errdefs.IsNotFound(err) {
		if errdefs.IsConflict(err) {
			return fmt.Errorf("remove image %s: still in use: %w", id, release.ErrConflict)
		}
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	return nil
}

// Logs copies a container's stdout and stderr to w. tail is a line count or "all".
func (c *Client) Logs(ctx context.Context, id string, follow bool, tail string, stdout, stderr io.Writer) error {
	if tail == "" {
		tail = "all"
	}
	return c.logs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: follow, Tail: tail}, stdout, stderr)
}

// FollowLogs copies a container's log lines logged after since to stdout
// and stderr, each line starting with its RFC 3339 timestamp and a space,
// and goes on with new lines until the container stops or ctx ends.
func (c *Client) FollowLogs(ctx context.Context, id string, since time.Time, stdout, stderr io.Writer) error {
	o := container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true}
	if !since.IsZero() {
		o.Since = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	return c.logs(ctx, id, o, stdout, stderr)
}

func (c *Client) logs(ctx context.Context, id string, o container.LogsOptions, stdout, stderr io.Writer) error {
	j, err := c.api.ContainerInspect(ctx, id)
	if err != nil {
		return wrapNotFound("container "+id, err)
	}
	if j.Config.Labels[LabelInstance] != c.instance {
		return fmt.Errorf("container %s is not managed by agent %s: %w", id, c.instance, release.ErrNotFound)
	}
	rc, err := c.api.ContainerLogs(ctx, id, o)
	if err != nil {
		return fmt.Errorf("logs of %s: %w", id, err)
	}
	defer rc.Close()
	if j.Config.Tty {
		_, err = io.Copy(stdout, rc)
	} else {
		_, err = stdcopy.StdCopy(stdout, stderr, rc)
	}
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs of %s: %w", id, err)
	}
	return nil
}

// NetworkName is the engine name of an app network.
func (c *Client) NetworkName(app, name string, n release.Network) string {
	if n.External || n.Name != "" {
		if n.Name != "" {
			return n.Name
		}
		return name
	}
	return c.prefix(app) + "." + name
}

// EnsureNetwork creates the app's network if it is missing. External
// networks must exist already.
func (c *Client) EnsureNetwork(ctx context.Context, app, name string, n release.Network) error {
	engineName := c.NetworkName(app, name, n)
	list, err := c.api.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", engineName))})
	if err != nil {
		return fmt.Errorf("list networks: %w", err)
	}
	for _, nw := range list {
		if nw.Name != engineName {
			continue
		}
		if !n.External && n.Name == "" && (nw.Labels[LabelInstance] != c.instance || nw.Labels[LabelApp] != app) {
			return fmt.Errorf("a network named %s exists but agent %s did not create it for app %s; remove or rename it: %w", engineName, c.instance, app, release.ErrConflict)
		}
		return nil
	}
	if n.External {
		return fmt.Errorf("external network %s does not exist on this engine (create it with docker network create): %w", engineName, release.ErrNotFound)
	}
	labels := map[string]string{LabelInstance: c.instance, LabelApp: app, "berth.network": name}
	for k, v := range n.Labels {
		labels[k] = v
	}
	opts := network.CreateOptions{Driver: n.Driver, Internal: n.Internal, Options: n.DriverOpts, Labels: labels, EnableIPv6: n.EnableIPv6, Attachable: n.Attachable}
	if ip := n.IPAM; ip != nil {
		opts.IPAM = &network.IPAM{Driver: ip.Driver, Options: ip.Options}
		for _, p := range ip.Config {
			opts.IPAM.Config = append(opts.IPAM.Config, network.IPAMConfig{Subnet: p.Subnet, Gateway: p.Gateway, IPRange: p.IPRange, AuxAddress: p.AuxAddresses})
		}
	}
	_, err = c.api.NetworkCreate(ctx, engineName, opts)
	if err != nil && !errdefs.IsConflict(err) {
		return fmt.Errorf("create network %s: %w", engineName, err)
	}
	return nil
}

// RemoveNetworks removes the app's networks whose compose name is not in keep.
func (c *Client) RemoveNetworks(ctx context.Context, app string, keep map[string]bool) error {
	list, err := c.api.NetworkList(ctx, network.ListOptions{Filters: c.ownFilter(app)})
	if err != nil {
		return fmt.Errorf("list networks: %w", err)
	}
	var errs []error
	for _, nw := range list {
		if keep[nw.Labels["berth.network"]] {
			continue
		}
		if err := c.api.NetworkRemove(ctx, nw.ID); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove network %s: %w", nw.Name, err))
		}
	}
	return errors.Join(errs...)
}

// VolumeName is the engine name of an app volume.
func (c *Client) VolumeName(app, name string, v release.Volume) string {
	if v.Name != "" {
		return v.Name
	}
	if v.External {
		return name
	}
	return c.prefix(app) + "." + name
}

// EnsureVolume creates the app's named volume if it is missing.
func (c *Client) EnsureVolume(ctx context.Context, app, name string, v release.Volume) error {
	engineName := c.VolumeName(app, name, v)
	if got, err := c.api.VolumeInspect(ctx, engineName); err == nil {
		if !v.External && v.Name == "" && (got.Labels[LabelInstance] != c.instance || got.Labels[LabelApp] != app) {
			return fmt.Errorf("a volume named %s exists but agent %s did not create it for app %s; berth will not use data it does not own: %w", engineName, c.instance, app, release.ErrConflict)
		}
		return nil
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("inspect volume %s: %w", engineName, err)
	}
	if v.External {
		return fmt.Errorf("external volume %s does not exist on this engine (create it with docker volume create): %w", engineName, release.ErrNotFound)
	}
	labels := map[string]string{LabelInstance: c.instance, LabelApp: app, "berth.volume": name}
	for k, val := range v.Labels {
		labels[k] = val
	}
	if _, err := c.api.VolumeCreate(ctx, volume.CreateOptions{Name: engineName, Driver: v.Driver, DriverOpts: v.DriverOpts, Labels: labels}); err != nil {
		return fmt.Errorf("create volume %s: %w", engineName, err)
	}
	return nil
}

// Volumes lists the engine names of the app's volumes that this instance created.
func (c *Client) Volumes(ctx context.Context, app string) ([]string, error) {
	resp, err := c.api.VolumeList(ctx, volume.ListOptions{Filters: c.ownFilter(app)})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	var out []string
	for _, v := range resp.Volumes {
		out = append(out, v.Name)
	}
	sort.Strings(out)
	return out, nil
}

// RemoveVolume removes one volume by engine name, only if this instance owns it.
func (c *Client) RemoveVolume(ctx context.Context, name string) error {
	v, err := c.api.VolumeInspect(ctx, name)
	if err != nil {
		return wrapNotFound("volume "+name, err)
	}
	if v.Labels[LabelInstance] != c.instance {
		return fmt.Errorf("volume %s is not managed by agent %s: %w", name, c.instance, release.ErrNotFound)
	}
	if err := c.api.VolumeRemove(ctx, name, false); err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	return nil
}

func wrapNotFound(what string, err error) error {
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("%s: %w", what, release.ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Purge removes every container and network of this instance, and its
// volumes when volumes is set. Tests use it to leave a shared engine clean.
func (c *Client) Purge(ctx context.Context, volumes bool) error {
	var errs []error
	cs, err := c.api.ContainerList(ctx, container.ListOptions{All: true, Filters: c.ownFilter("")})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, ct := range cs {
		if err := c.Remove(ctx, ct.ID); err != nil {
			errs = append(errs, err)
		}
	}
	nets, err := c.api.NetworkList(ctx, network.ListOptions{Filters: c.ownFilter("")})
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range nets {
		if err := c.api.NetworkRemove(ctx, n.ID); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if volumes {
		vs, err := c.api.VolumeList(ctx, volume.ListOptions{Filters: c.ownFilter("")})
		if err != nil {
			errs = append(errs, err)
		} else {
			for _, v := range vs.Volumes {
				if err := c.api.VolumeRemove(ctx, v.Name, true); err != nil && !errdefs.IsNotFound(err) {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}
