package rootless

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The tap carries a virtio-net header before every frame (IFF_VNET_HDR), so
// that checksums need not be computed on either side: the kernel hands us
// frames with partial checksums (TUN_F_CSUM) and we hand it frames marked
// as needing one, which it accepts for local delivery without computing it.
// Both ends are on this host, so there is no wire to protect.
const (
	vnetHdrLen       = 10
	vnetFlagNeedCsum = 1

	udpChecksumOffset = 6
)

// tapEndpoint is the netstack's link endpoint on the tap: Ethernet frames
// behind a virtio-net header. It also copies frames to Config.Capture and
// takes ICMP echo requests out of the netstack (which would answer them for
// any address itself) to the host's ping sockets.
type tapEndpoint struct {
	ns   *netStack
	file *os.File
	rc   syscall.RawConn
	mtu  uint32

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	wg         sync.WaitGroup
}

func newTapEndpoint(ns *netStack, fd int, mtu int) (*tapEndpoint, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("set tap non-blocking: %w", err)
	}

	f := os.NewFile(uintptr(fd), "tap")
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("use tap: %w", err)
	}

	return &tapEndpoint{ns: ns, file: f, rc: rc, mtu: uint32(mtu)}, nil
}

// MTU implements stack.LinkEndpoint.
func (e *tapEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements stack.LinkEndpoint.
func (e *tapEndpoint) SetMTU(mtu uint32) { e.mtu = mtu }

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *tapEndpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (e *tapEndpoint) LinkAddress() tcpip.LinkAddress { return gatewayMAC }

// SetLinkAddress implements stack.LinkEndpoint; the address is fixed.
func (e *tapEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.
func (e *tapEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload | stack.CapabilityTXChecksumOffload |
		stack.CapabilityResolutionRequired
}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *tapEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *tapEndpoint) SetOnCloseAction(func()) {}

// Close implements stack.LinkEndpoint: it closes the tap, which ends the
// read loop.
func (e *tapEndpoint) Close() { e.file.Close() }

// Wait implements stack.LinkEndpoint.
func (e *tapEndpoint) Wait() { e.wg.Wait() }

// IsAttached implements stack.LinkEndpoint.
func (e *tapEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()

	return e.dispatcher != nil
}

// Attach implements stack.LinkEndpoint: the first dispatcher starts the read
// loop; nil (the NIC being removed) closes the tap, which ends it.
func (e *tapEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()

	switch {
	case d == nil:
		e.file.Close()
	case e.dispatcher == nil:
		e.wg.Add(1)
		go e.readLoop()
	}
	e.dispatcher = d
}

// AddHeader implements stack.LinkEndpoint.
func (e *tapEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *tapEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	b, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if ok {
		pkt.NetworkProtocolNumber = header.Ethernet(b).Type()
	}

	return ok
}

// readLoop delivers the tap's frames until the tap is closed or gone. Each
// frame is read into one scratch buffer and copied into a view of its own
// size: most frames are small (ACKs), and a fresh MTU-sized view per frame
// costs more in clearing memory than the copy.
func (e *tapEndpoint) readLoop() {
	defer e.wg.Done()

	scratch := make([]byte, vnetHdrLen+header.EthernetMinimumSize+int(e.mtu))
	for {
		n, err := e.read(scratch)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				e.ns.log.Debug("read tap", "error", err)
			}
			return
		}

		e.deliver(buffer.NewViewWithData(scratch[:n]))
	}
}

func (e *tapEndpoint) read(b []byte) (int, error) {
	var n int
	var rerr error
	err := e.rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), b)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}

	return n, rerr
}

// deliver passes one frame (with its virtio-net header) to the capture, the
// echo handler or the netstack. It owns v.
func (e *tapEndpoint) deliver(v *buffer.View) {
	b := v.AsSlice()
	if len(b) < vnetHdrLen+header.EthernetMinimumSize {
		v.Release()
		return
	}

	frame := b[vnetHdrLen:]
	if e.ns.cfg.Capture != nil {
		e.ns.cfg.Capture(time.Now(), completeChecksum(b[:vnetHdrLen], frame))
	}

	eth := header.Ethernet(frame)
	dst := eth.DestinationAddress()
	if dst != gatewayMAC && dst[0]&1 == 0 {
		v.Release()
		return
	}

	if !forwarded(eth.Type(), frame[header.EthernetMinimumSize:]) {
		e.ns.unsupported.Add(1)
		v.Release()
		return
	}

	if isEchoRequest(eth.Type(), frame[header.EthernetMinimumSize:]) {
		e.ns.handleEcho(append([]byte(nil), frame...))
		v.Release()
		return
	}

	v.TrimFront(vnetHdrLen)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	defer pkt.DecRef()
	if !e.ParseHeader(pkt) {
		return
	}

	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d != nil {
		d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
	}
}

// WritePackets implements stack.LinkEndpoint. A packet the tap does not
// take is dropped (and counted); TCP retransmits it.
func (e *tapEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if err := e.writePacket(pkt); err != nil {
			if !tapGone(err) {
				e.ns.dropped.Add(1)
			}
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			break
		}
		n++
	}

	return n, nil
}

func (e *tapEndpoint) writePacket(pkt *stack.PacketBuffer) error {
	var hdr [vnetHdrLen]byte
	partialChecksum(pkt, hdr[:])

	views := pkt.AsSlices()
	iov := make([][]byte, 0, len(views)+1)
	iov = append(iov, hdr[:])
	iov = append(iov, views...)

	if e.ns.cfg.Capture != nil {
		frame := pkt.ToView().AsSlice()
		e.ns.cfg.Capture(time.Now(), completeChecksum(hdr[:], frame))
	}

	return e.writev(iov)
}

func (e *tapEndpoint) writev(iov [][]byte) error {
	var werr error
	err := e.rc.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), iov)
		return werr != unix.EAGAIN
	})
	if err != nil {
		return err
	}

	return werr
}

// writeFrame writes a frame built outside the netstack (ICMP replies, with
// complete checksums).
func (e *tapEndpoint) writeFrame(frame []byte) error {
	if e.ns.cfg.Capture != nil {
		e.ns.cfg.Capture(time.Now(), frame)
	}

	var hdr [vnetHdrLen]byte
	return e.writev([][]byte{hdr[:], frame})
}

// partialChecksum prepares a TCP or UDP packet, whose checksum the netstack
// left out, for the kernel: the checksum field gets the pseudo-header sum
// and hdr asks the kernel to complete it if the packet ever needs one.
func partialChecksum(pkt *stack.PacketBuffer, hdr []byte) {
	var off int
	switch pkt.TransportProtocolNumber {
	case header.TCPProtocolNumber:
		off = header.TCPChecksumOffset
	case header.UDPProtocolNumber:
		off = udpChecksumOffset
	default:
		return
	}

	nh := pkt.NetworkHeader().Slice()
	th := pkt.TransportHeader().Slice()
	if len(th) < off+2 {
		return
	}

	var src, dst tcpip.Address
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		src, dst = header.IPv4(nh).SourceAddress(), header.IPv4(nh).DestinationAddress()
	case header.IPv6ProtocolNumber:
		src, dst = header.IPv6(nh).SourceAddress(), header.IPv6(nh).DestinationAddress()
	default:
		return
	}

	length := len(th) + pkt.Data().Size()
	sum := header.PseudoHeaderChecksum(pkt.TransportProtocolNumber, src, dst, uint16(length))
	binary.BigEndian.PutUint16(th[off:], sum)

	hdr[0] = vnetFlagNeedCsum
	binary.LittleEndian.PutUint16(hdr[6:], uint16(header.EthernetMinimumSize+len(nh)))
	binary.LittleEndian.PutUint16(hdr[8:], uint16(off))
}

// completeChecksum returns frame with the checksum that hdr marks as partial
// computed (a copy; frame is left alone), so that captures show valid
// packets. Frames without a partial checksum are returned as they are.
func completeChecksum(hdr, frame []byte) []byte {
	if hdr[0]&vnetFlagNeedCsum == 0 {
		return frame
	}

	start := int(binary.LittleEndian.Uint16(hdr[6:]))
	field := start + int(binary.LittleEndian.Uint16(hdr[8:]))
	if field+2 > len(frame) {
		return frame
	}

	out := append([]byte(nil), frame...)
	sum := checksum.Checksum(out[start:], 0)
	binary.BigEndian.PutUint16(out[field:], ^sum)

	return out
}

// forwarded reports whether a frame of Ethernet type proto carrying b is one
// the netstack handles: ARP, and IP packets of TCP, UDP or ICMP (IPv6 also
// behind the extension headers the kernel itself sends, such as the
// hop-by-hop header of MLD reports). Anything else, for example a raw socket
// of another protocol, cannot be forwarded from the host without
// privileges, so it is dropped and counted rather than handed to a stack
// that would drop it silently or answer for a host it cannot reach.
func forwarded(proto tcpip.NetworkProtocolNumber, b []byte) bool {
	switch proto {
	case header.ARPProtocolNumber:
		return true
	case header.IPv4ProtocolNumber:
		if len(b) < header.IPv4MinimumSize {
			return true // malformed: the netstack counts it
		}
		switch header.IPv4(b).TransportProtocol() {
		case header.TCPProtocolNumber, header.UDPProtocolNumber, header.ICMPv4ProtocolNumber:
			return true
		}
		return false
	case header.IPv6ProtocolNumber:
		if len(b) < header.IPv6MinimumSize {
			return true
		}
		switch header.IPv6(b).NextHeader() {
		case uint8(header.TCPProtocolNumber), uint8(header.UDPProtocolNumber),
			uint8(header.ICMPv6ProtocolNumber), uint8(header.IPv6HopByHopOptionsExtHdrIdentifier),
			uint8(header.IPv6FragmentExtHdrIdentifier), uint8(header.IPv6RoutingExtHdrIdentifier),
			uint8(header.IPv6DestinationOptionsExtHdrIdentifier):
			return true
		}
		return false
	}

	return false
}
