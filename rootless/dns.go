package rootless

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/childflow/childflow/flows"
)

// DNS serving bounds: how long an idle DNS socket is kept, and how long one
// answer may take.
const (
	dnsIdle    = 10 * time.Second
	dnsTimeout = 15 * time.Second
)

// serveDNSUDP answers the datagrams of a new association to port 53 with
// Config.DNS, each query in its own goroutine (resolvers send A and AAAA
// queries together on one socket).
func (ns *netStack) serveDNSUDP(id stack.TransportEndpointID, pkt *stack.PacketBuffer, server netip.AddrPort) {
	conn, ok := ns.udpEndpoint(id, pkt)
	if !ok {
		return
	}

	f := &flow{ns: ns, proto: "dns"}
	if !ns.registerService(f, func() { conn.Close() }) {
		conn.Close()
		return
	}

	go func() {
		defer ns.wg.Done()
		defer conn.Close()

		// The query waits on the socket, which stays open for the answer,
		// so the lookup can leave the packet path.
		proc := ns.procFor(unix.IPPROTO_UDP, addrPort(id.RemoteAddress, id.RemotePort), server)
		buf := make([]byte, maxDatagram)
		for {
			conn.SetReadDeadline(time.Now().Add(dnsIdle))
			n, err := conn.Read(buf)
			if err != nil {
				ns.unregisterService(f)
				return
			}

			q := append([]byte(nil), buf[:n]...)
			ns.wg.Add(1)
			go func() {
				defer ns.wg.Done()
				ns.answerDNS(conn, "udp", server, proc, q)
			}()
		}
	}()
}

func (ns *netStack) answerDNS(w io.Writer, proto string, server netip.AddrPort, proc flows.Proc,
	q []byte) bool {
	ctx, cancel := context.WithTimeout(ns.ctx, dnsTimeout)
	defer cancel()

	ans, err := ns.cfg.DNS(ctx, proto, server, proc, q)
	if err != nil || len(ans) == 0 {
		ns.dropped.Add(1)
		ns.log.Debug("DNS callback gave no answer", "server", server, "error", err)
		return false
	}

	if proto == "tcp" {
		msg := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(ans)), uint16(len(ans)))
		ans = append(msg, ans...)
	}

	if _, err := w.Write(ans); err != nil {
		ns.dropped.Add(1)
		return false
	}

	return true
}

// serveDNSTCP accepts a TCP connection to port 53 and answers its
// length-prefixed queries one after the other.
func (ns *netStack) serveDNSTCP(req *tcp.ForwarderRequest, server netip.AddrPort) {
	id := req.ID()
	var wq waiter.Queue
	ep, terr := req.CreateEndpoint(&wq)
	if terr != nil {
		req.Complete(true)
		return
	}
	req.Complete(false)

	conn := gonet.NewTCPConn(&wq, ep)
	f := &flow{ns: ns, proto: "dns"}
	if !ns.registerService(f, func() { conn.Close() }) {
		conn.Close()
		return
	}
	defer ns.wg.Done()
	defer ns.unregisterService(f)
	defer conn.Close()

	proc := ns.procFor(unix.IPPROTO_TCP, addrPort(id.RemoteAddress, id.RemotePort), server)
	var hdr [2]byte
	for {
		conn.SetReadDeadline(time.Now().Add(dnsIdle))
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}

		q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(conn, q); err != nil {
			return
		}

		if !ns.answerDNS(conn, "tcp", server, proc, q) {
			return
		}
	}
}
