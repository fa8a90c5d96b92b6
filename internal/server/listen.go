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
// On store.LogsChannel it wakes the followers of the device's logs
// (`berth logs -f`, the dashboard) whichever replica took the lines.
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
	for _, ch := range []string{store.TargetsChannel, store.LogsChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("LISTEN %s: %w", ch, err)
		}
	}
	s.log.Debug("listening for target changes and log lines", "channels", []string{store.TargetsChannel, store.LogsChannel})
	s.hub.kick()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == store.LogsChannel {
			s.logs.notify(n.Payload)
			continue
		}
		s.hub.kick()
	}
}
