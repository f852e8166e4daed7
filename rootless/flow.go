package rootless

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/sniff"
)

// maxSniff is how much of a flow's first bytes is searched for a server
// name: a ClientHello without large extensions fits in it.
const maxSniff = 512

// flow is one TCP connection or UDP association of the command, from the
// first packet to the flow_end event.
type flow struct {
	ns     *netStack
	id     uint64
	proto  string
	remote netip.AddrPort
	proc   flows.Proc
	names  []string
	start  time.Time
	// server is the server name in the first bytes the command sent (TCP
	// only), set by the outbound relay before the flow ends.
	server string

	bytesOut, bytesIn, pktsOut, pktsIn atomic.Uint64
	openAtExit                         atomic.Bool

	// known is closed once proc is set and connect_attempt emitted.
	known chan struct{}

	mu     sync.Mutex
	closer func()
	ended  bool
}

// newFlow describes a flow of the command from the local port of id to
// remote (the host-side destination). Its process is not known until
// lookProc has run.
func (ns *netStack) newFlow(proto string, remote netip.AddrPort) *flow {
	f := &flow{ns: ns, id: ns.nextID.Add(1), proto: proto, remote: remote, start: time.Now(),
		known: make(chan struct{})}
	if ns.cfg.Names != nil {
		f.names = ns.cfg.Names(remote.Addr())
	}

	return f
}

// lookProc finds the process of f's socket, from the local port of id to
// the address the command asked, and emits connect_attempt (stamped with
// the time of the attempt). It must run while the command's socket is
// still open: for TCP, before the handshake completes.
func (ns *netStack) lookProc(f *flow, id stack.TransportEndpointID) {
	f.proc = ns.procFor(ipProto(f.proto), addrPort(id.RemoteAddress, id.RemotePort),
		addrPort(id.LocalAddress, id.LocalPort))
	ns.emitAttempt(f)
	close(f.known)
}

// process waits for lookProc and returns the process of f. Every path of a
// flow calls it before emitting anything after connect_attempt.
func (f *flow) process() flows.Proc {
	<-f.known
	return f.proc
}

// register adds f to the open flows, with closer ending its relay. It fails
// once the session is shutting down.
func (ns *netStack) register(f *flow, closer func()) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()

	if ns.closed {
		return false
	}

	f.closer = closer
	ns.open[f.id] = f
	ns.wg.Add(1)

	return true
}

// registerService adds a socket that the netstack serves itself (DNS) and
// that emits no flow events; the caller must call ns.wg.Done when it ends.
func (ns *netStack) registerService(f *flow, closer func()) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()

	if ns.closed {
		return false
	}

	f.closer = closer
	ns.services[f] = struct{}{}
	ns.wg.Add(1)

	return true
}

func (ns *netStack) unregisterService(f *flow) {
	ns.mu.Lock()
	delete(ns.services, f)
	ns.mu.Unlock()
}

// sniff records the server name found in the first bytes the command sent
// on the flow, looking at no more than maxSniff of them.
func (f *flow) sniff(first []byte) {
	name, _ := sniff.ServerName(first[:min(len(first), maxSniff)])

	f.mu.Lock()
	f.server = name
	f.mu.Unlock()
}

func (f *flow) serverName() string {
	f.mu.Lock()
	defer f.mu.Unlock()

	return f.server
}

// abort closes the flow's sockets; its relay then ends it.
func (f *flow) abort() {
	f.mu.Lock()
	c := f.closer
	f.mu.Unlock()

	if c != nil {
		c()
	}
}

// end emits flow_end once and removes f from the open flows.
func (f *flow) end() {
	f.mu.Lock()
	if f.ended {
		f.mu.Unlock()
		return
	}
	f.ended = true
	f.mu.Unlock()

	f.ns.bytesOut.Add(f.bytesOut.Load())
	f.ns.bytesIn.Add(f.bytesIn.Load())
	f.ns.emit(&flows.FlowEnd{
		Remote: remoteOf(f.proto, f.remote), Proc: f.proc,
		Names:  flows.Names{Names: f.names, ServerName: f.serverName()},
		FlowID: f.id, BytesOut: f.bytesOut.Load(), BytesIn: f.bytesIn.Load(),
		PacketsOut: f.pktsOut.Load(), PacketsIn: f.pktsIn.Load(),
		DurationMs: time.Since(f.start).Milliseconds(), OpenAtExit: f.openAtExit.Load(),
	})

	f.ns.mu.Lock()
	delete(f.ns.open, f.id)
	f.ns.mu.Unlock()
	f.ns.wg.Done()
}

func (ns *netStack) emit(ev flows.Event) {
	if ns.cfg.Sink != nil {
		ns.cfg.Sink.Emit(ev)
	}
}

func (ns *netStack) emitAttempt(f *flow) {
	ev := &flows.ConnectAttempt{
		Remote: remoteOf(f.proto, f.remote), Proc: f.proc, Names: flows.Names{Names: f.names},
		FlowID: f.id, Backend: Backend,
	}
	flows.Stamp(ev, f.start)
	ns.emit(ev)
}

// emitResult emits connect_result: ok when reason is empty, else error.
func (ns *netStack) emitResult(f *flow, reason string) {
	ev := &flows.ConnectResult{
		Remote: remoteOf(f.proto, f.remote), Proc: f.proc, Names: flows.Names{Names: f.names},
		FlowID: f.id, Status: flows.StatusOK,
	}
	if reason != "" {
		ev.Status = flows.StatusError
		ev.Error = &reason
	}

	ns.emit(ev)
}

func remoteOf(proto string, ap netip.AddrPort) flows.Remote {
	return flows.Remote{
		Protocol: proto, RemoteAddr: ap.String(), RemoteIP: ap.Addr().String(), RemotePort: int(ap.Port()),
	}
}

// Reasons of failed connects, in the words of the flow-log contract.
const (
	reasonDenied  = "denied by policy"
	reasonRefused = "connection refused"
)

// dialReason turns a host dial error into the contract's short reason.
func dialReason(err error) string {
	var errno syscall.Errno
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return "timed out"
	case errors.As(err, &errno) && errno == syscall.ECONNREFUSED:
		return reasonRefused
	case errors.As(err, &errno) && errno == syscall.ENETUNREACH:
		return "network unreachable"
	case errors.As(err, &errno) && errno == syscall.EHOSTUNREACH:
		return "host unreachable"
	}

	var te interface{ Timeout() bool }
	if errors.As(err, &te) && te.Timeout() {
		return "timed out"
	}

	return err.Error()
}

// addrPort converts a netstack address and port.
func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}

// target maps the address the command asked for to the host-side one: the
// gateway is the host's loopback when HostLoopback is set and unreachable
// otherwise; every other address is itself.
func (ns *netStack) target(asked netip.AddrPort) (netip.AddrPort, bool) {
	var lo netip.Addr
	switch asked.Addr() {
	case Gateway4:
		lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case Gateway6:
		lo = netip.IPv6Loopback()
	default:
		return asked, true
	}

	return netip.AddrPortFrom(lo, asked.Port()), ns.cfg.HostLoopback
}

func ipProto(proto string) int {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}

	return unix.IPPROTO_TCP
}
