package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/localreg"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/signing"
	"github.com/berth-robotics/berth/internal/transfer"
)

// newRelease is `berth release`: releases on a fleet server. (`berth
// releases`, in releases.go, lists the ones a device keeps.)
func newRelease() *cobra.Command {
	var sf serverFlags
	var fleet string
	var asJSON bool
	c := &cobra.Command{
		Use:   "release",
		Short: "Create a fleet's releases from Compose files, list them, assign them to devices",
	}
	addServerFlags(c, &sf)
	c.PersistentFlags().StringVar(&fleet, "fleet", "", "the fleet (name or ID; required)")
	needFleet := func() error {
		if fleet == "" {
			return errors.New("which fleet? give --fleet")
		}
		return nil
	}

	var pf projectFlags
	var app, version string
	var noUpload bool
	var bf buildFlags
	var signKey string
	create := &cobra.Command{
		Use:   "create [-f compose.yaml] --fleet FLEET [-p APP] [--version V] [--no-upload] [--json]",
		Short: "Upload an app's images and make a release of it from a Compose file in a fleet",
		Long: `create reads the Compose file(s) as berth deploy does, uploads the services'
images from the local Docker Engine to the server (services with a build:
section are built first when their image is stale, as berth build does), and stores the release in
the fleet with every image pinned to the ID uploaded: immutable, its ID the
digest of its app, version and spec, so the same file, images and version
always make the same release (creating it again changes nothing). The version
defaults to git describe --tags --dirty --always.

The upload sends only what the server lacks: each layer is split into tar
headers and file contents, the server is asked which pieces it lacks, and a
changed file goes as a binary delta against the version the server holds.
Progress goes to stderr. --no-upload records the images by the references the
file gives instead, for devices that get them another way.

Nothing runs anywhere until the release is assigned:
berth release assign ID --fleet FLEET --all.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			ctx := c.Context()
			p, err := pf.load(ctx)
			if err != nil {
				return err
			}
			if len(p.Files) > 0 {
				return fmt.Errorf("%s uses runtime configs or secrets, which only berth deploy sends to a device for now (a fleet release cannot carry their values yet); nothing was created: %w", p.App, release.ErrInvalid)
			}
			name, spec := p.App, p.Spec
			if err := buildStale(ctx, p, version, bf, bf.platform, c.ErrOrStderr()); err != nil {
				return err
			}
			if version == "" {
				version = gitVersion(p.Dir)
			}
			if signKey == "" {
				signKey = os.Getenv("BERTH_SIGN_KEY")
			}
			var signer *signing.Signer
			if signKey != "" {
				if signer, err = signing.LoadPrivate(signKey); err != nil {
					return err
				}
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				req := serverapi.CreateReleaseRequest{App: name, Version: version, Spec: *spec}
				var up *uploadResult
				if !noUpload {
					if up, err = uploadImages(ctx, cl, spec, c.ErrOrStderr(), asJSON); err != nil {
						return fmt.Errorf("release of %s: uploading its images (nothing was created; what arrived is kept, so a rerun sends only the rest): %w", name, err)
					}
					req.Images = up.Images
				}
				if signer != nil {
					f, err := cl.Fleet(ctx, fleet) // the signature names the fleet by name; --fleet may be its ID
					if err != nil {
						return fmt.Errorf("fleet %s: %w", fleet, err)
					}
					req.KeyID, req.Signature = signer.Public().ID(), signer.Sign(f.Name, req.Release().ID)
				}
				r, created, err := cl.CreateRelease(ctx, fleet, req)
				if err != nil {
					return fmt.Errorf("create a release of %s in fleet %s: %w", name, fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), releaseCreated{Release: r, Upload: up})
				}
				what := "created"
				if !created {
					what = "already there, unchanged"
				}
				fmt.Fprintf(c.OutOrStdout(), "release %s of %s %s in fleet %s: %s\n  id %s\n", release.ShortID(r.ID), r.App, r.Version, fleet, what, r.ID)
				if r.KeyID != "" {
					fmt.Fprintf(c.OutOrStdout(), "  signed by key %s\n", r.KeyID)
				}
				return nil
			})
		},
	}
	pf.add(create, true)
	create.Flags().StringVar(&version, "version", "", "release version (default: git describe --tags --dirty --always)")
	create.Flags().StringVar(&signKey, "sign-key", "", "sign the release with this private key (berth keys generate; env BERTH_SIGN_KEY); required by fleets with signing keys")
	create.Flags().BoolVar(&noUpload, "no-upload", false, "do not upload images; record them by reference (devices must get them another way)")
	create.Flags().StringVar(&bf.platform, "platform", "", "build services with build: for os/arch[/variant] (default: the local engine's)")
	bf.add(create, true)
	create.Flags().BoolVar(&asJSON, "json", false, "print the release as JSON (with \"id\", and the upload under \"upload\")")

	var limit int
	list := &cobra.Command{
		Use:   "list --fleet FLEET [--app NAME] [--json]",
		Short: "List a fleet's releases, newest first",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				rs, err := cl.Releases(c.Context(), fleet, app, limit)
				if err != nil {
					return fmt.Errorf("releases of %s: %w", fleet, err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), nonNil(rs))
				}
				tw := tabwriter.NewWriter(c.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "RELEASE\tAPP\tVERSION\tCREATED\tBY")
				for _, r := range rs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", release.ShortID(r.ID), r.App, r.Version, r.Created.Local().Format("2006-01-02 15:04:05"), r.CreatedBy)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&app, "app", "", "only this app's releases")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (up to 1000)")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var devices []string
	var all bool
	assign := &cobra.Command{
		Use:   "assign RELEASE --fleet FLEET (--device DEVICE ... | --all)",
		Short: "Move devices of a fleet to a release (pinned devices stay where they are)",
		Long: `assign points the devices named (names or IDs), or all the fleet's devices, at
the release; with --all, devices that register later start with it too.
Devices pinned to another release of the app stay where they are. Each device
switches as soon as its agent's long poll hears of it — all at once: staged
rollouts come later.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := needFleet(); err != nil {
				return err
			}
			if all == (len(devices) > 0) {
				return errors.New("give --device DEVICE (one or more), or --all")
			}
			return withClient(&sf, func(cl *serverapi.Client) error {
				ctx := c.Context()
				id, err := resolveRelease(ctx, cl, fleet, args[0])
				if err != nil {
					return err
				}
				a, err := cl.Assign(ctx, fleet, id, serverapi.AssignRequest{Devices: devices, All: all})
				if err != nil {
					return fmt.Errorf("assign release %s: %w", args[0], err)
				}
				if asJSON {
					return printJSON(c.OutOrStdout(), a)
				}
				fmt.Fprintf(c.OutOrStdout(), "%s release %s: %d device(s) moved, %d already there or pinned\n", a.App, release.ShortID(a.Release), len(a.Changed), a.Unchanged)
				if len(a.Changed) > 0 {
					fmt.Fprintf(c.OutOrStdout(), "  %s\n", strings.Join(a.Changed, " "))
				}
				return nil
			})
		},
	}
	assign.Flags().StringSliceVar(&devices, "device", nil, "a device (name or ID) to move; repeat for more")
	assign.Flags().BoolVar(&all, "all", false, "every device of the fleet, and those that register later")
	assign.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	c.AddCommand(create, list, assign)
	return c
}

// pinnedID is the ID a release pins an image of the local engine by: the
// digest of its config, which names it on devices and the fleet server. On
// the classic image store that is the engine's ID; on the containerd store
// the engine's ID is its manifest's digest, and the cache knows the config
// once the image was pushed (until then the engine's ID stands, and the
// upload's summary corrects it).
func pinnedID(cache *content.Store, dir, engineID string) string {
	if id, ok := localreg.ConfigID(cache, dir, engineID); ok {
		return id
	}
	return engineID
}

// pinUploaded pins each reference to the ID its image was uploaded as: the
// config's digest, which is not the engine's ID on the containerd image
// store (engineID: reference → the engine's ID).
func pinUploaded(pins, engineID map[string]string, results []pushResult) {
	for _, r := range results {
		if r.Summary == nil {
			continue
		}
		for _, pi := range r.Summary.PerImage {
			for ref, id := range engineID {
				if pi.EngineID == id && pi.ID != "" {
					pins[ref] = pi.ID
				}
			}
		}
	}
}

// releaseCreated is release create's --json output: the release, and what
// uploading its images cost.
type releaseCreated struct {
	*serverapi.Release
	Upload *uploadResult `json:"upload,omitempty"`
}

// uploadResult is what uploading a release's images did.
type uploadResult struct {
	// Images pins each image reference of the Compose file to the ID
	// uploaded (or found on the server already).
	Images       map[string]string `json:"images"`
	BytesChanged int64             `json:"bytes_changed"` // uncompressed bytes of the pieces the server lacked
	BytesSent    int64             `json:"bytes_sent"`    // what went into the exchange
	Transfer     []pushResult      `json:"transfer"`      // per source, as push --json
}

// uploadImages uploads the images of spec's services from the local engine
// to the server, sending only what the server lacks, and returns the IDs to
// pin. Progress goes to log unless quiet.
func uploadImages(ctx context.Context, cl *serverapi.Client, spec *release.Spec, log io.Writer, quiet bool) (*uploadResult, error) {
	say := func(format string, args ...any) {
		if !quiet {
			fmt.Fprintf(log, format+"\n", args...)
		}
	}
	var refs []string
	service := map[string]string{} // a service using each reference, for messages
	for _, name := range sortedServices(spec) {
		if ref := spec.Services[name].Image; ref != "" && service[ref] == "" {
			service[ref] = name
			refs = append(refs, ref)
		}
	}
	res := &uploadResult{Images: map[string]string{}, Transfer: []pushResult{}}
	if len(refs) == 0 {
		return res, nil
	}
	eng, err := engine.New(ctx, "", "berth-cli")
	if err != nil {
		return nil, fmt.Errorf("the images are read from the local Docker Engine, which does not answer (give --no-upload to record them by reference only): %w", err)
	}
	defer eng.Close()
	up := cl.Uploader()
	info, err := up.ContentInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("ask the server what it holds: %w", err)
	}
	have := map[string]bool{}
	for _, id := range info.Images {
		have[id] = true
	}
	cache, cacheDir, err := cacheStore()
	if err != nil {
		return nil, err
	}
	defer cache.Close()
	var send []string
	engineID := map[string]string{}
	for _, ref := range refs {
		img, err := eng.Image(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("image %s of service %s is not in the local engine (docker images lists them; build it first, or give --no-upload): %w", ref, service[ref], err)
		}
		res.Images[ref] = pinnedID(cache, cacheDir, img.ID)
		engineID[ref] = img.ID
		if have[res.Images[ref]] {
			say("%s (%s) is on the server already", ref, release.ShortID(res.Images[ref]))
			res.Transfer = append(res.Transfer, pushResult{Source: ref, Skipped: "on the server already"})
			continue
		}
		send = append(send, ref)
	}
	if len(send) > 0 {
		results, err := push(ctx, up, send, log, quiet, false)
		res.Transfer = append(res.Transfer, results...)
		if err != nil {
			return nil, err
		}
		pinUploaded(res.Images, engineID, results)
	}
	for _, r := range res.Transfer {
		if r.Summary != nil {
			res.BytesChanged += r.Summary.BytesChanged
			res.BytesSent += r.Summary.BytesSent
		}
	}
	say("uploaded %d of %d images: %s changed, %s sent", len(send), len(refs), transfer.Human(res.BytesChanged), transfer.Human(res.BytesSent))
	return res, nil
}
