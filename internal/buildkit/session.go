// Package buildkit drives the Docker Engine's BuildKit as the docker CLI did
// before buildx: a client session (moby/buildkit's session package), attached
// over the engine's hijacked /session endpoint, serves the build context, the
// Dockerfile and the build secrets from this machine, and the build's
// progress (BuildKit's StatusResponse messages) becomes plain lines.
//
// Only the berth CLI links this package (internal/guard keeps it, and
// BuildKit's gRPC, out of berthd): the engine package hands it the hijacked
// connection and the raw progress messages.
package buildkit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/filesync"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/tonistiigi/fsutil"
	fstypes "github.com/tonistiigi/fsutil/types"
)

// MaxSecretSize is the largest build secret a session serves.
const MaxSecretSize = secretsprovider.MaxSecretSize

// Dialer opens the engine's /session endpoint (engine.Client.DialSession).
type Dialer func(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error)

// Secret is a build secret the session serves: the contents of File, or of
// the environment variable Env, read when the build mounts it.
type Secret struct {
	ID   string
	File string
	Env  string
}

// Session is a client session attached to the engine. Close it when the
// build is over.
type Session struct {
	s    *session.Session
	done chan error
}

// Start attaches a session that serves contextDir as the build context,
// dockerfileDir as the directory the Dockerfile is read from, and the
// secrets. Files go with uid and gid 0, as in the classic builder's context
// tar; the engine's Dockerfile frontend applies .dockerignore.
func Start(ctx context.Context, dial Dialer, contextDir, dockerfileDir string, secrets []Secret) (*Session, error) {
	contextFS, err := rootOwned(contextDir)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	dockerfileFS, err := rootOwned(dockerfileDir)
	if err != nil {
		return nil, fmt.Errorf("dockerfile directory: %w", err)
	}
	var srcs []secretsprovider.Source
	for _, s := range secrets {
		srcs = append(srcs, secretsprovider.Source{ID: s.ID, FilePath: s.File, Env: s.Env})
	}
	store, err := secretsprovider.NewStore(srcs)
	if err != nil {
		return nil, fmt.Errorf("build secrets: %w", err)
	}
	// the shared key lets builds of the same directory share BuildKit's
	// cache of what was transferred before
	abs, err := filepath.Abs(contextDir)
	if err != nil {
		return nil, err
	}
	key := sha256.Sum256([]byte("berth:" + abs))
	s, err := session.NewSession(ctx, hex.EncodeToString(key[:]))
	if err != nil {
		return nil, fmt.Errorf("buildkit session: %w", err)
	}
	s.Allow(filesync.NewFSSyncProvider(filesync.StaticDirSource{"context": contextFS, "dockerfile": dockerfileFS}))
	s.Allow(secretsprovider.NewSecretProvider(store))
	return attach(ctx, s, dial)
}

// Probe attaches an empty session and closes it: whether the engine takes
// BuildKit sessions at all, before any build relies on one.
func Probe(ctx context.Context, dial Dialer) error {
	s, err := session.NewSession(ctx, "berth-probe")
	if err != nil {
		return fmt.Errorf("buildkit session: %w", err)
	}
	bs, err := attach(ctx, s, dial)
	if err != nil {
		return err
	}
	return bs.Close()
}

// attach runs s over a connection from dial until it is closed, and
// returns once the engine took the connection, or with why it did not.
func attach(ctx context.Context, s *session.Session, dial Dialer) (*Session, error) {
	bs := &Session{s: s, done: make(chan error, 1)}
	attached := make(chan struct{})
	go func() {
		bs.done <- s.Run(ctx, func(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error) {
			conn, err := dial(ctx, proto, meta)
			if err == nil {
				close(attached)
			}
			return conn, err
		})
	}()
	select {
	case <-attached:
		return bs, nil
	case err := <-bs.done:
		if err == nil {
			err = errors.New("the session ended before the engine took it")
		}
		return nil, fmt.Errorf("buildkit session: %w", err)
	}
}

// ID is what the build request names the session by.
func (s *Session) ID() string { return s.s.ID() }

// Close ends the session and waits for it.
func (s *Session) Close() error {
	err := s.s.Close()
	if rerr := <-s.done; err == nil && rerr != nil && !errors.Is(rerr, context.Canceled) {
		err = rerr
	}
	return err
}

func rootOwned(dir string) (fsutil.FS, error) {
	fs, err := fsutil.NewFS(dir)
	if err != nil {
		return nil, err
	}
	return fsutil.NewFilterFS(fs, &fsutil.FilterOpt{Map: func(_ string, st *fstypes.Stat) fsutil.MapResult {
		st.Uid, st.Gid = 0, 0
		return fsutil.MapResultKeep
	}})
}
