package server

// HoldWake subscribes a long poll for the device that, woken, never
// answers until release is called: what the hub counts as a wake-up under
// way. Woken is how many the hub counts now.
func HoldWake(s *Server, deviceID string) (release func()) {
	return s.hub.subscribe(deviceID).close
}

// Woken is the hub's count of wake-ups signalled and not yet answered.
func Woken(s *Server) int {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.hub.woken
}
