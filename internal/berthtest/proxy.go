package berthtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is one address in front of server replicas, as a load balancer
// would be: it forwards each TCP connection to the backend set now. A
// device pins its server's URL at registration, so replicas that replace
// each other must sit behind one address. Closed at cleanup, with every
// connection it holds.
type Proxy struct {
	URL string
	ln  net.Listener

	mu      sync.Mutex
	backend string
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to backend.
func NewProxy(t testing.TB, backend string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{URL: "http://" + ln.Addr().String(), ln: ln, backend: backend, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.closeAll()
		p.wg.Wait()
	})
	return p
}

// SetBackend sends new connections to addr and cuts those open to the
// previous backend, as a load balancer does when its backend goes.
func (p *Proxy) SetBackend(addr string) {
	p.mu.Lock()
	p.backend = addr
	p.mu.Unlock()
	p.closeAll()
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		backend := p.backend
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(c, backend)
		}()
	}
}

// forward copies between a client and the backend until either closes.
func (p *Proxy) forward(c net.Conn, backend string) {
	defer c.Close()
	b, err := net.Dial("tcp", backend)
	if err != nil {
		return // the backend is down: the client sees the connection close
	}
	defer b.Close()
	p.track(c, true)
	p.track(b, true)
	defer p.track(c, false)
	defer p.track(b, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go cp(b, c)
	go cp(c, b)
	<-done
	<-done
}
