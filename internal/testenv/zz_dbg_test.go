package testenv

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

func TestDbgVeth3(t *testing.T) {
	for i := 0; i < 10; i++ {
		a, b := NewNetns(t, "a"), NewNetns(t, "b")
		v := Veth(t, a, b, netip.MustParsePrefix("198.18.7.1/24"), netip.MustParsePrefix("198.18.7.2/24"))
		v.AddAddrs(t, netip.MustParsePrefix("2001:db8:7::1/64"), netip.MustParsePrefix("2001:db8:7::2/64"))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		cmd := b.Exec(ctx, "tcpdump", "-nn", "-i", v.Name2, "-ttt", "-l", "ip6")
		out := &lockedBuf{}
		cmd.Stdout = out
		cmd.Start()
		time.Sleep(500 * time.Millisecond)
		ln6 := ListenIn(t, b, "tcp6", "[2001:db8:7::2]:0")
		echoOnce(ln6)
		s := time.Now()
		dialEcho(t, a, ln6.Addr().String())
		d := time.Since(s)
		time.Sleep(200 * time.Millisecond)
		cancel()
		cmd.Wait()
		if d > 500*time.Millisecond {
			t.Logf("v6 %v\n%s", d, out.String())
			return
		}
	}
}

type lockedBuf struct{ b []byte }

func (l *lockedBuf) Write(p []byte) (int, error) { l.b = append(l.b, p...); return len(p), nil }
func (l *lockedBuf) String() string             { return string(l.b) }
