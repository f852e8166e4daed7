package rootless

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// dialTimeout bounds a host dial; the command's SYN waits for it.
const dialTimeout = 30 * time.Second

// relayBufSize is the copy buffer of each direction of a TCP splice.
const relayBufSize = 256 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// handleTCP is the TCP forwarder's handler, run in its own goroutine for
// each SYN: check, dial from the host, then complete the handshake with the
// command and splice. The command's connect succeeds only once the host's
// did; a denied or failed connect is answered with a reset.
//
// The process lookup runs alongside the check and the dial (the command's
// socket waits in connect meanwhile); only a violation waits for it, and
// the handshake completes only once it is done.
func (ns *netStack) handleTCP(req *tcp.ForwarderRequest) {
	id := req.ID()
	asked := addrPort(id.LocalAddress, id.LocalPort)
	if ns.cfg.DNS != nil && asked.Port() == 53 {
		ns.serveDNSTCP(req, asked)
		return
	}

	dst, reachable := ns.target(asked)
	f := ns.newFlow("tcp", dst)
	go ns.lookProc(f, id)

	switch {
	case !reachable:
		ns.failed.Add(1)
		ns.refuse(req, f, reasonRefused)
		return
	case ns.cfg.Check != nil && !ns.cfg.Check("tcp", dst, f.process):
		ns.denied.Add(1)
		ns.refuse(req, f, reasonDenied)
		return
	}

	conn, err := ns.dialTCP(dst)
	if err != nil {
		ns.failed.Add(1)
		ns.refuse(req, f, dialReason(err))
		return
	}

	f.process()
	ns.accept(req, f, conn)
}

func (ns *netStack) refuse(req *tcp.ForwarderRequest, f *flow, reason string) {
	f.process()
	req.Complete(true)
	ns.emitResult(f, reason)
}

func (ns *netStack) dialTCP(dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ns.ctx, dialTimeout)
	defer cancel()

	if ns.cfg.DialTCP != nil {
		return ns.cfg.DialTCP(ctx, dst)
	}

	var d net.Dialer
	return d.DialContext(ctx, "tcp", dst.String())
}

// accept completes the command's handshake and starts the splice.
func (ns *netStack) accept(req *tcp.ForwarderRequest, f *flow, conn net.Conn) {
	var wq waiter.Queue
	ep, terr := req.CreateEndpoint(&wq)
	if terr != nil {
		// The command gave up (its SYN timed out or it was reset).
		req.Complete(true)
		conn.Close()
		ns.failed.Add(1)
		ns.emitResult(f, "handshake with the command failed: "+terr.String())
		return
	}
	req.Complete(false)

	inner := gonet.NewTCPConn(&wq, ep)
	if !ns.register(f, func() { inner.Close(); conn.Close() }) {
		inner.Close()
		conn.Close()
		return
	}

	ns.flowsN.Add(1)
	ns.emitResult(f, "")
	ns.splice(f, ep, inner, conn)
}

// splice copies both ways until both directions are done, passing
// half-closes on; an error in one direction ends both.
func (ns *netStack) splice(f *flow, ep tcpip.Endpoint, inner *gonet.TCPConn, outer net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		relay(outer, inner, &f.bytesOut, f.sniff, func() { inner.Close(); outer.Close() })
	}()
	go func() {
		defer wg.Done()
		relay(inner, outer, &f.bytesIn, nil, func() { inner.Close(); outer.Close() })
	}()
	wg.Wait()

	inner.Close()
	outer.Close()
	if st, ok := ep.Stats().(*tcp.Stats); ok {
		f.pktsOut.Store(st.SegmentsReceived.Value())
		f.pktsIn.Store(st.SegmentsSent.Value())
	}
	f.end()
}

type counter interface{ Add(uint64) uint64 }

type closeWriter interface{ CloseWrite() error }

// relay copies src to dst with a large buffer (never through ReadFrom or
// WriteTo, whose small buffers cap throughput), counting bytes. The first
// chunk read goes to first (when not nil) once it has been written, so that
// looking at it does not delay it. At EOF relay half-closes dst; on an error
// it calls fail.
func relay(dst io.Writer, src io.Reader, n counter, first func([]byte), fail func()) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)

	buf := *bp
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			n.Add(uint64(w))
			if werr != nil {
				fail()
				return
			}

			if first != nil {
				first(buf[:r])
				first = nil
			}
		}

		if errors.Is(rerr, io.EOF) {
			if cw, ok := dst.(closeWriter); ok {
				cw.CloseWrite()
			}
			return
		}
		if rerr != nil {
			fail()
			return
		}
	}
}
