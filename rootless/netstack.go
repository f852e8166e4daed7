package rootless

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const nicID tcpip.NICID = 1

// gatewayMAC is the netstack's link address on the tap.
var gatewayMAC = tcpip.LinkAddress("\x02\xcf\x00\x00\x00\x02")

// TCP buffer sizes of the netstack's endpoints: large enough that one flow
// over the 64 KiB-MTU tap is not window-limited on a fast host.
const (
	tcpBufDefault = 1 << 20
	tcpBufMax     = 8 << 20
)

// netStack is the parent's side of the tap: gVisor's netstack with TCP and
// UDP forwarders that police, log, dial from the host and splice.
type netStack struct {
	cfg      *Config
	log      *slog.Logger
	st       *stack.Stack
	tap      int
	link     *tapEndpoint
	procRoot int
	diag     int
	diagMu   sync.Mutex
	// lastOwner is the pid that the last process lookup found.
	lastOwner atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	nextID                     atomic.Uint64
	flowsN, denied, failed     atomic.Uint64
	bytesOut, bytesIn, dropped atomic.Uint64
	deniedPkts, unsupported    atomic.Uint64

	mu        sync.Mutex
	open      map[uint64]*flow
	services  map[*flow]struct{}
	udpDenied map[stack.TransportEndpointID]time.Time
	closed    bool
}

// newNetStack serves the tap fd. diag is the namespace's sock_diag socket
// (or -1) and procRoot the init's pid, for finding the processes of flows;
// the netStack owns both descriptors.
func newNetStack(tap, diag, procRoot int, cfg *Config, log *slog.Logger) (*netStack, error) {
	ns := &netStack{
		cfg: cfg, log: log, tap: tap, procRoot: procRoot,
		open:      make(map[uint64]*flow),
		services:  make(map[*flow]struct{}),
		udpDenied: make(map[stack.TransportEndpointID]time.Time),
	}
	ns.ctx, ns.cancel = context.WithCancel(context.Background())
	ns.setDiag(diag)

	link, err := ns.newLink()
	if err != nil {
		closeFDs([]int{tap, diag})
		return nil, err
	}

	ns.st = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})

	if err := ns.configure(link); err != nil {
		ns.st.Close()
		ns.link.Close()
		closeFDs([]int{diag})
		return nil, err
	}

	return ns, nil
}

func (ns *netStack) newLink() (stack.LinkEndpoint, error) {
	ep, err := newTapEndpoint(ns, ns.tap, ns.cfg.MTU)
	if err != nil {
		return nil, err
	}
	ns.link = ep

	return ep, nil
}

// configure sets the TCP tuning and the forwarders, then creates the NIC
// (promiscuous and spoofing, so that it accepts and answers for every
// destination) with the gateway addresses and routes. The NIC starts
// disabled: its link reads from the tap as soon as it exists.
func (ns *netStack) configure(link stack.LinkEndpoint) error {
	if err := ns.tuneTCP(); err != nil {
		return err
	}

	fwd := tcp.NewForwarder(ns.st, 0, 4096, ns.handleTCP)
	ns.st.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	ns.st.SetTransportProtocolHandler(udp.ProtocolNumber, ns.handleUDP)

	if err := ns.st.CreateNICWithOptions(nicID, link, stack.NICOptions{Disabled: true}); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}

	ns.st.SetPromiscuousMode(nicID, true)
	ns.st.SetSpoofing(nicID, true)

	for _, gw := range []netip.Prefix{netip.PrefixFrom(Gateway4, 24), netip.PrefixFrom(Gateway6, 64)} {
		if err := ns.addAddress(gw); err != nil {
			return err
		}
	}

	ns.st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})

	if err := ns.st.EnableNIC(nicID); err != nil {
		return fmt.Errorf("enable NIC: %s", err)
	}

	return nil
}

func (ns *netStack) addAddress(p netip.Prefix) error {
	proto := ipv4.ProtocolNumber
	if p.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}

	pa := tcpip.ProtocolAddress{
		Protocol:          proto,
		AddressWithPrefix: tcpip.AddrFromSlice(p.Addr().AsSlice()).WithPrefix(),
	}
	pa.AddressWithPrefix.PrefixLen = p.Bits()

	if err := ns.st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("add gateway address %s: %s", p, err)
	}

	return nil
}

func (ns *netStack) tuneTCP() error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	cc := tcpip.CongestionControlOption("cubic")
	// No TIME-WAIT: the tap loses nothing and holds no old duplicates, and a
	// TIME-WAIT endpoint would swallow the SYN of the command's next
	// connection from the same port (the forwarder has no listener that it
	// could hand the SYN to).
	tw := tcpip.TCPTimeWaitTimeoutOption(0)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack, &moderate, &cc, &tw,
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: tcpBufDefault, Max: tcpBufMax},
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: tcpBufDefault, Max: tcpBufMax},
	}

	for _, o := range opts {
		if err := ns.st.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("set TCP option %T: %s", o, err)
		}
	}

	return nil
}

// shutdown closes every open flow (marking it open at exit), waits a bounded
// time for the relays to emit their flow_end events, and stops the stack.
func (ns *netStack) shutdown() {
	ns.mu.Lock()
	ns.closed = true
	open := make([]*flow, 0, len(ns.open))
	for _, f := range ns.open {
		open = append(open, f)
	}
	for f := range ns.services {
		open = append(open, f)
	}
	ns.mu.Unlock()

	for _, f := range open {
		f.openAtExit.Store(true)
		f.abort()
	}
	ns.cancel()

	done := make(chan struct{})
	go func() { ns.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		ns.log.Warn("rootless relays did not stop in time")
	}

	// Stop the tap's read loop before the stack: a frame being delivered
	// can need the stack's lock (a UDP forwarder creating its endpoint),
	// and Stack.Wait holds it while it waits for the link, which deadlocked
	// when both happened at once.
	ns.link.Close()
	ns.link.Wait()
	ns.st.Close()
	ns.st.Wait()

	ns.diagMu.Lock()
	if ns.diag >= 0 {
		unix.Close(ns.diag)
		ns.diag = -1
	}
	ns.diagMu.Unlock()
}

func (ns *netStack) stats() Stats {
	return Stats{
		Flows: ns.flowsN.Load(), Denied: ns.denied.Load(), Failed: ns.failed.Load(),
		BytesOut: ns.bytesOut.Load(), BytesIn: ns.bytesIn.Load(),
		DeniedPackets: ns.deniedPkts.Load(),
		Dropped:       ns.dropped.Load() + ns.st.Stats().DroppedPackets.Value(),
		Unsupported:   ns.unsupported.Load(),
	}
}

// writeFrame writes a frame built outside the netstack (ICMP replies) to the
// tap.
func (ns *netStack) writeFrame(frame []byte) {
	if err := ns.link.writeFrame(frame); err != nil && !tapGone(err) {
		ns.dropped.Add(1)
	}
}

// tapGone reports whether a tap write failed because the command's network
// namespace is gone (the command exited, and the kernel removed the tap
// with the namespace). Such a packet had no one left to receive it: like a
// reply to a closed socket, it is not counted as dropped.
func tapGone(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD) ||
		errors.Is(err, unix.EIO) || errors.Is(err, unix.ENODEV)
}
