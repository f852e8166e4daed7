package proxy_test

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/proxy/proxytest"
)

// BenchmarkThroughput streams data to an echoing origin through an HTTP
// proxy, once straight from the Dialer ("direct") and once through the relay
// ("relay"), which adds the loopback hop of a redirected program. Compare
// the two MB/s figures: the relay/direct ratio is the relay's cost.
func BenchmarkThroughput(b *testing.B) {
	p := startProxy(b, "http", proxytest.Options{}, "", "")
	origin := proxytest.StartOrigin(b, "127.0.0.1:0")

	b.Run("direct", func(b *testing.B) {
		c, err := dialDirect(p.dialer, origin.Addr())
		if err != nil {
			b.Fatal(err)
		}
		benchEcho(b, c)
	})

	b.Run("relay", func(b *testing.B) {
		relay, o := startRelay(b, p.dialer, nil, 0)
		og := proxy.Origin{Target: proxy.Target{Addr: origin.Addr()}}
		c, err := o.dial(relay.Addrs()[0], og)
		if err != nil {
			b.Fatal(err)
		}
		benchEcho(b, c)
	})
}

// benchEcho writes b.N chunks to c while reading their echo back.
func benchEcho(b *testing.B, c net.Conn) {
	defer c.Close()

	br := bufio.NewReader(c)
	if _, err := proxytest.ReadPeer(br); err != nil {
		b.Fatal(err)
	}

	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()

	go func() {
		for range b.N {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()

	if _, err := io.CopyN(io.Discard, br, int64(b.N)*int64(len(chunk))); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRelayRatio alternates the same echo transfer through the Dialer
// alone and through the relay, so that both see the same machine load, and
// reports relay/direct, the relay's share of the direct throughput.
func BenchmarkRelayRatio(b *testing.B) {
	p := startProxy(b, "http", proxytest.Options{}, "", "")
	origin := proxytest.StartOrigin(b, "127.0.0.1:0")
	relay, o := startRelay(b, p.dialer, nil, 0)

	direct, err := dialDirect(p.dialer, origin.Addr())
	if err != nil {
		b.Fatal(err)
	}
	og := proxy.Origin{Target: proxy.Target{Addr: origin.Addr()}}
	relayed, err := o.dial(relay.Addrs()[0], og)
	if err != nil {
		b.Fatal(err)
	}

	ds, rs := newEchoStream(b, direct), newEchoStream(b, relayed)
	const size = 4 << 20
	var td, tr time.Duration
	b.SetBytes(2 * size)
	b.ResetTimer()
	for range b.N {
		td += ds.transfer(b, size)
		tr += rs.transfer(b, size)
	}

	b.ReportMetric(float64(td)/float64(tr), "relay/direct")
	b.ReportMetric(float64(b.N)*size/tr.Seconds()/1e6, "relay-MB/s")
	b.ReportMetric(float64(b.N)*size/td.Seconds()/1e6, "direct-MB/s")
}

// echoStream is an open tunnel to an echoing origin.
type echoStream struct {
	c     net.Conn
	br    *bufio.Reader
	chunk []byte
}

func newEchoStream(b *testing.B, c net.Conn) *echoStream {
	b.Helper()
	b.Cleanup(func() { c.Close() })

	br := bufio.NewReader(c)
	if _, err := proxytest.ReadPeer(br); err != nil {
		b.Fatal(err)
	}

	return &echoStream{c: c, br: br, chunk: make([]byte, 128<<10)}
}

// transfer sends size bytes (a multiple of the chunk size), reads their echo
// and returns how long that took.
func (s *echoStream) transfer(b *testing.B, size int) time.Duration {
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		var err error
		for sent := 0; sent < size && err == nil; sent += len(s.chunk) {
			_, err = s.c.Write(s.chunk)
		}
		errc <- err
	}()

	if _, err := io.CopyN(io.Discard, s.br, int64(size)); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}

	return time.Since(start)
}
