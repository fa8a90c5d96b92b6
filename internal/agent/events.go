package agent

import (
	"context"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/localapi"
)

// eventLog keeps the last events in memory and wakes followers.
type eventLog struct {
	mu     sync.Mutex
	seq    uint64
	events []localapi.Event
	wake   chan struct{}
}

const eventsKept = 2000

func newEventLog() *eventLog { return &eventLog{wake: make(chan struct{})} }

func (l *eventLog) add(e localapi.Event) localapi.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e.Seq = l.seq
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	l.events = append(l.events, e)
	if len(l.events) > eventsKept {
		l.events = append([]localapi.Event(nil), l.events[len(l.events)-eventsKept:]...)
	}
	close(l.wake)
	l.wake = make(chan struct{})
	return e
}

func (l *eventLog) last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// since returns the events after seq, the newest sequence number looked at,
// and a channel closed when more arrive.
func (l *eventLog) since(seq uint64, app string) ([]localapi.Event, uint64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []localapi.Event
	for _, e := range l.events {
		if e.Seq > seq && (app == "" || e.App == app) {
			out = append(out, e)
		}
	}
	return out, l.seq, l.wake
}

// follow calls fn for each event after seq until fn returns false or ctx ends.
func (l *eventLog) follow(ctx context.Context, seq uint64, app string, follow bool, fn func(localapi.Event) bool) {
	for {
		evs, newest, wake := l.since(seq, app)
		for _, e := range evs {
			if !fn(e) {
				return
			}
		}
		seq = newest
		if !follow {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-time.After(15 * time.Second):
			if !fn(localapi.Event{}) { // keep-alive; lets the writer notice a gone client
				return
			}
		}
	}
}
