package server

import (
	"crypto/sha256"
	"sync"

	"github.com/berth-robotics/berth/internal/store"
)

// deviceTokens keeps devices by the hash of their token, each with the
// hub's handled mark as of which its target version is known (hub.go): the
// requests of 10,000 devices — a long poll every 30 s each, the polls of a
// whole fleet again right after a release woke it, a report a minute — then
// read nothing to find who is asking, and a long poll nothing to know its
// version.
//
// An entry holds only while the hub's mark is still the entry's: any
// target change handled since, on any replica, sends the next request back
// to the store. Deleting a device takes a target version for this reason
// (store.DeleteDevice), so a deleted device's token stops working on every
// replica as soon as its hub has handled that version; the replica that
// deleted it forgets it at once. Nothing else a device request reads from
// the device (its ID and fleet) changes.
type deviceTokens struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]deviceEntry
}

type deviceEntry struct {
	device  store.Device
	handled int64 // the hub's mark as of which device.TargetVersion is its version
}

// maxDeviceTokens bounds the cache; past it, it starts again empty.
const maxDeviceTokens = 200_000

func tokenKey(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// get returns the device of a token if its entry is as of handled, the
// hub's mark now.
func (c *deviceTokens) get(key [sha256.Size]byte, handled int64) (store.Device, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || e.handled != handled || handled < 0 {
		return store.Device{}, false
	}
	return e.device, true
}

// put records what is known of a token's device as of the hub's mark
// handled; what is known as of a later mark stays.
func (c *deviceTokens) put(key [sha256.Size]byte, d store.Device, handled int64) {
	if handled < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok && e.handled > handled {
		return
	}
	if c.m == nil || len(c.m) >= maxDeviceTokens {
		c.m = map[[sha256.Size]byte]deviceEntry{}
	}
	d.State, d.Tags = nil, nil // never read by device requests
	c.m[key] = deviceEntry{device: d, handled: handled}
}

// known updates the target version of a token's device as of a later mark,
// if the device is kept.
func (c *deviceTokens) known(key [sha256.Size]byte, version, handled int64) {
	c.mu.Lock()
	e, ok := c.m[key]
	c.mu.Unlock()
	if !ok {
		return
	}
	e.device.TargetVersion = version
	c.put(key, e.device, handled)
}

// forget drops a device's entries.
func (c *deviceTokens) forget(deviceID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if e.device.ID == deviceID {
			delete(c.m, k)
		}
	}
}
