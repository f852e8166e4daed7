package rootless

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDP association timeouts: an association ends after this long without a
// datagram either way; a denied one is remembered (its datagrams dropped and
// counted, not checked and reported again) this long.
const (
	udpIdle       = 60 * time.Second
	udpDeniedTTL  = 10 * time.Second
	maxDatagram   = 65535
	maxDeniedKeys = 4096
)

// handleUDP is the netstack's handler for datagrams that match no endpoint:
// the first datagram of a new association. It runs on the packet path, so it
// only decides and creates the endpoint; dialling and relaying happen in a
// goroutine.
func (ns *netStack) handleUDP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	asked := addrPort(id.LocalAddress, id.LocalPort)
	if ns.cfg.DNS != nil && asked.Port() == 53 {
		ns.serveDNSUDP(id, pkt, asked)
		return true
	}

	dst, reachable := ns.target(asked)
	switch {
	case !reachable:
		ns.dropped.Add(1)
		return true
	case ns.recentlyDenied(id):
		ns.deniedPkts.Add(1)
		return true
	}

	// The sender may close its socket right after this datagram: look its
	// process up now, before anything slower.
	f := ns.newFlow("udp", dst)
	ns.lookProc(f, id)
	if ns.cfg.Check != nil && !ns.cfg.Check("udp", dst, f.process) {
		ns.denyUDP(id, f)
		return true
	}

	conn, ok := ns.udpEndpoint(id, pkt)
	if !ok {
		return true
	}

	if !ns.register(f, func() { conn.Close() }) {
		conn.Close()
		return true
	}

	go ns.relayUDP(f, conn)

	return true
}

func (ns *netStack) recentlyDenied(id stack.TransportEndpointID) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()

	t, ok := ns.udpDenied[id]
	if ok && time.Since(t) < udpDeniedTTL {
		return true
	}
	delete(ns.udpDenied, id)

	return false
}

// denyUDP records a denied association: the events are emitted and its
// datagrams are dropped (and counted as denied) for udpDeniedTTL.
func (ns *netStack) denyUDP(id stack.TransportEndpointID, f *flow) {
	ns.denied.Add(1)
	ns.deniedPkts.Add(1)

	ns.mu.Lock()
	if len(ns.udpDenied) >= maxDeniedKeys {
		clear(ns.udpDenied)
	}
	ns.udpDenied[id] = time.Now()
	ns.mu.Unlock()

	ns.emitResult(f, reasonDenied)
}

// udpEndpoint creates the netstack endpoint of a new association and
// queues its first datagram on it.
func (ns *netStack) udpEndpoint(id stack.TransportEndpointID, pkt *stack.PacketBuffer) (*gonet.UDPConn, bool) {
	var wq waiter.Queue
	req := udp.NewForwarderRequest(ns.st, id, pkt.Clone())
	ep, err := req.CreateEndpoint(&wq)
	if err != nil {
		ns.dropped.Add(1)
		ns.log.Debug("create UDP endpoint", "id", id, "error", err.String())
		return nil, false
	}

	return gonet.NewUDPConn(&wq, ep), true
}

// relayUDP dials the destination from the host and copies datagrams both
// ways until the association is idle for udpIdle or the session ends.
func (ns *netStack) relayUDP(f *flow, inner *gonet.UDPConn) {
	defer f.end()
	defer inner.Close()

	var d net.Dialer
	outer, err := d.DialContext(ns.ctx, "udp", f.remote.String())
	if err != nil {
		ns.failed.Add(1)
		ns.emitResult(f, dialReason(err))
		return
	}
	defer outer.Close()

	f.mu.Lock()
	f.closer = func() { inner.Close(); outer.Close() }
	f.mu.Unlock()
	ns.flowsN.Add(1)
	ns.emitResult(f, "")

	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{})
	go func() {
		copyDatagrams(inner, outer, &last, &f.bytesIn, &f.pktsIn, &ns.dropped)
		close(done)
	}()
	copyDatagrams(outer, inner, &last, &f.bytesOut, &f.pktsOut, &ns.dropped)
	inner.Close()
	outer.Close()
	<-done
}

// copyDatagrams copies datagrams from src to dst until an error, or until
// neither direction has seen one (last) for udpIdle. Datagrams that cannot
// be written are counted in dropped.
func copyDatagrams(dst, src net.Conn, last *atomic.Int64, bytes, pkts, dropped *atomic.Uint64) {
	buf := make([]byte, maxDatagram)
	for {
		src.SetReadDeadline(time.Now().Add(udpIdle))
		n, err := src.Read(buf)
		if isTimeout(err) {
			if time.Since(time.Unix(0, last.Load())) < udpIdle {
				continue
			}
			dst.Close()
			return
		}
		if err != nil {
			dst.Close()
			return
		}

		last.Store(time.Now().UnixNano())
		if _, err := dst.Write(buf[:n]); err != nil {
			dropped.Add(1)
			continue
		}
		bytes.Add(uint64(n))
		pkts.Add(1)
	}
}

// isTimeout reports whether err is a deadline expiry, from a host socket or
// a netstack one.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
