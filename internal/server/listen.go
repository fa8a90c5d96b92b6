package server

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berth-robotics/berth/internal/store"
)

// listen holds a connection of its own to PostgreSQL, LISTENing on
// store.TargetsChannel, and kicks the hub on every notification: a change
// another replica committed wakes this replica's long polls within moments.
// A lost connection is re-established with backoff; after each (re)connect
// the hub is kicked, so that changes made meanwhile are not missed (and the
// hub's rescan covers the gap in any case).
func (s *Server) listen(ctx context.Context, dsn string) {
	backoff := time.Second
	for {
		start := time.Now()
		err := s.listenOnce(ctx, dsn)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		s.log.Warn("LISTEN for target changes lost; reconnecting", "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (s *Server) listenOnce(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{store.TargetsChannel}.Sanitize()); err != nil {
		return fmt.Errorf("LISTEN %s: %w", store.TargetsChannel, err)
	}
	s.log.Debug("listening for target changes", "channel", store.TargetsChannel)
	s.hub.kick()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		s.hub.kick()
	}
}
