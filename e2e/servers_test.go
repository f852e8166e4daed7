package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// httpServer is a loopback HTTP server that counts the bytes it read and
// wrote per client port, so tests can check the flow log's byte counts.
type httpServer struct {
	url  string
	port int

	mu    sync.Mutex
	conns map[int]*countConn // by client port
	paths []string
}

type countConn struct {
	net.Conn
	read, written atomic.Int64
}

func (c *countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

type countListener struct {
	net.Listener
	s *httpServer
}

func (l countListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countConn{Conn: c}
	port := c.RemoteAddr().(*net.TCPAddr).Port
	l.s.mu.Lock()
	l.s.conns[port] = cc
	l.s.mu.Unlock()

	return cc, nil
}

// startHTTP serves GET /bytes/N (N bytes of 'x') and anything else with a
// short body, on network ("tcp4" or "tcp6") loopback.
func startHTTP(t testing.TB, network string) *httpServer {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &httpServer{conns: map[int]*countConn{}}
	s.port = ln.Addr().(*net.TCPAddr).Port
	s.url = "http://" + ln.Addr().String()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.paths = append(s.paths, r.URL.Path)
		s.mu.Unlock()
		if n, ok := strings.CutPrefix(r.URL.Path, "/bytes/"); ok {
			size, _ := strconv.Atoi(n)
			w.Header().Set("Content-Length", strconv.Itoa(size))
			chunk := []byte(strings.Repeat("x", 64<<10))
			for size > 0 {
				k := min(size, len(chunk))
				if _, err := w.Write(chunk[:k]); err != nil {
					return
				}
				size -= k
			}
			return
		}
		fmt.Fprintf(w, "hello from %s\n", r.URL.Path)
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(countListener{Listener: ln, s: s}) }()
	t.Cleanup(func() { _ = srv.Close() })

	return s
}

// counts returns what the server read from and wrote to the client that
// used local port port.
func (s *httpServer) counts(port int) (read, written int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[port]
	if c == nil {
		return 0, 0, false
	}

	return c.read.Load(), c.written.Load(), true
}

func (s *httpServer) sawPath(p string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.paths {
		if x == p {
			return true
		}
	}

	return false
}
