package proxy_test

import (
	"bufio"
	"io"
	"net"
	"testing"

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
