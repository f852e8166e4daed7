package rootless

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pingTimeout bounds the wait for a host's echo reply.
const pingTimeout = 3 * time.Second

// isEchoRequest reports whether the IP packet b of Ethernet type proto is
// an unfragmented ICMP or ICMPv6 echo request.
func isEchoRequest(proto tcpip.NetworkProtocolNumber, b []byte) bool {
	switch proto {
	case header.IPv4ProtocolNumber:
		if len(b) < header.IPv4MinimumSize {
			return false
		}

		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		return ip.TransportProtocol() == header.ICMPv4ProtocolNumber && ip.FragmentOffset() == 0 &&
			ip.Flags()&header.IPv4FlagMoreFragments == 0 && len(b) > hl &&
			header.ICMPv4Type(b[hl]) == header.ICMPv4Echo
	case header.IPv6ProtocolNumber:
		return len(b) > header.IPv6MinimumSize &&
			header.IPv6(b).TransportProtocol() == header.ICMPv6ProtocolNumber &&
			header.ICMPv6Type(b[header.IPv6MinimumSize]) == header.ICMPv6EchoRequest
	}

	return false
}

// echo is one echo request of the command.
type echo struct {
	mac      tcpip.LinkAddress
	src, dst netip.Addr
	id, seq  uint16
	payload  []byte
}

// parseEcho reads an echo request from an Ethernet frame that
// isEchoRequest accepted.
func parseEcho(frame []byte) (echo, bool) {
	if len(frame) < header.EthernetMinimumSize {
		return echo{}, false
	}
	eth := header.Ethernet(frame)
	e := echo{mac: eth.SourceAddress()}
	pkt := frame[header.EthernetMinimumSize:]

	var msg []byte
	switch eth.Type() {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) {
			return echo{}, false
		}
		e.src, _ = netip.AddrFromSlice(ip.SourceAddressSlice())
		e.dst, _ = netip.AddrFromSlice(ip.DestinationAddressSlice())
		msg = pkt[ip.HeaderLength():ip.TotalLength()]
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) {
			return echo{}, false
		}
		e.src, _ = netip.AddrFromSlice(ip.SourceAddressSlice())
		e.dst, _ = netip.AddrFromSlice(ip.DestinationAddressSlice())
		msg = pkt[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
	default:
		return echo{}, false
	}

	if len(msg) < header.ICMPv4MinimumSize {
		return echo{}, false
	}
	e.id = binary.BigEndian.Uint16(msg[4:])
	e.seq = binary.BigEndian.Uint16(msg[6:])
	e.payload = append([]byte(nil), msg[8:]...)

	return e, true
}

// handleEcho answers an echo request of the command: the gateway answers
// itself unless HostLoopback sends it to the host's loopback; other
// destinations are checked and pinged from the host. Denied requests are
// counted as denied, others that get no reply as dropped.
func (ns *netStack) handleEcho(frame []byte) {
	e, ok := parseEcho(frame)
	if !ok || !ns.startTask() {
		ns.dropped.Add(1)
		return
	}

	go func() {
		defer ns.wg.Done()

		if !ns.answerEcho(e) {
			ns.dropped.Add(1)
		}
	}()
}

func (ns *netStack) answerEcho(e echo) bool {
	host, reachable := ns.target(netip.AddrPortFrom(e.dst, 0))
	if !reachable {
		ns.writeFrame(echoReply(e, e.payload))
		return true
	}

	proto := "icmpv4"
	if e.dst.Is6() {
		proto = "icmpv6"
	}
	if ns.cfg.Check != nil && !ns.cfg.Check(proto, host, noProc) {
		ns.denied.Add(1)
		ns.deniedPkts.Add(1)
		return true
	}

	payload, err := ns.hostPing(host.Addr(), e)
	if err != nil {
		ns.log.Debug("ping from the host", "dst", host.Addr(), "error", err)
		return false
	}

	ns.writeFrame(echoReply(e, payload))
	return true
}

// startTask counts a goroutine of the session in ns.wg unless the session
// is shutting down.
func (ns *netStack) startTask() bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()

	if ns.closed {
		return false
	}
	ns.wg.Add(1)

	return true
}

// pingWarned makes the missing ping socket a one-time warning.
var pingWarned atomic.Bool

// hostPing sends e's request to dst from the host and returns the reply's
// payload. It uses an unprivileged ping socket, or a raw socket when ping
// sockets are not allowed for this group (net.ipv4.ping_group_range) and the
// process may open raw sockets.
func (ns *netStack) hostPing(dst netip.Addr, e echo) ([]byte, error) {
	fam, proto, typ := unix.AF_INET, unix.IPPROTO_ICMP, byte(header.ICMPv4Echo)
	if dst.Is6() {
		fam, proto, typ = unix.AF_INET6, unix.IPPROTO_ICMPV6, byte(header.ICMPv6EchoRequest)
	}

	raw := false
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		raw = true
		fd, err = unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	}
	if err != nil {
		if !pingWarned.Swap(true) {
			ns.log.Warn("cannot ping from the host: no ping or raw socket (see net.ipv4.ping_group_range)")
		}
		return nil, fmt.Errorf("open ICMP socket: %w", err)
	}
	defer unix.Close(fd)

	tv := unix.NsecToTimeval(int64(250 * time.Millisecond))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	msg := make([]byte, 8+len(e.payload))
	msg[0] = typ
	binary.BigEndian.PutUint16(msg[4:], e.id)
	binary.BigEndian.PutUint16(msg[6:], e.seq)
	copy(msg[8:], e.payload)
	if raw && !dst.Is6() {
		binary.BigEndian.PutUint16(msg[2:], ^checksum.Checksum(msg, 0))
	}

	if err := unix.Sendto(fd, msg, 0, sockaddr(dst)); err != nil {
		return nil, fmt.Errorf("send echo request to %s: %w", dst, err)
	}

	return awaitReply(fd, dst, e, raw)
}

// awaitReply reads the reply matching e's sequence number (and, on a raw
// socket, which sees every ICMP packet of the host, its source and id).
func awaitReply(fd int, dst netip.Addr, e echo, raw bool) ([]byte, error) {
	replyType := byte(header.ICMPv4EchoReply)
	if dst.Is6() {
		replyType = byte(header.ICMPv6EchoReply)
	}

	buf := make([]byte, 65536)
	deadline := time.Now().Add(pingTimeout)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("receive echo reply from %s: %w", dst, err)
		}

		msg := buf[:n]
		if raw && !dst.Is6() && n >= header.IPv4MinimumSize {
			msg = msg[header.IPv4(msg).HeaderLength():]
		}
		if len(msg) < 8 || msg[0] != replyType || binary.BigEndian.Uint16(msg[6:]) != e.seq {
			continue
		}
		if raw && (binary.BigEndian.Uint16(msg[4:]) != e.id || !sameAddr(from, dst)) {
			continue
		}

		return append([]byte(nil), msg[8:]...), nil
	}

	return nil, fmt.Errorf("wait for echo reply from %s: timed out", dst)
}

func sockaddr(a netip.Addr) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4()}
	}

	return &unix.SockaddrInet6{Addr: a.As16()}
}

func sameAddr(sa unix.Sockaddr, a netip.Addr) bool {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr) == a
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr) == a
	}

	return false
}

// echoReply builds the Ethernet frame of the reply to e carrying payload.
func echoReply(e echo, payload []byte) []byte {
	src := tcpip.AddrFromSlice(e.dst.AsSlice())
	dst := tcpip.AddrFromSlice(e.src.AsSlice())

	ipLen, ethType := header.IPv4MinimumSize, header.IPv4ProtocolNumber
	if e.dst.Is6() {
		ipLen, ethType = header.IPv6MinimumSize, header.IPv6ProtocolNumber
	}

	frame := make([]byte, header.EthernetMinimumSize+ipLen+8+len(payload))
	header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: gatewayMAC, DstAddr: e.mac, Type: ethType})
	ipb := frame[header.EthernetMinimumSize:]
	msg := ipb[ipLen:]
	binary.BigEndian.PutUint16(msg[4:], e.id)
	binary.BigEndian.PutUint16(msg[6:], e.seq)
	copy(msg[8:], payload)

	if e.dst.Is6() {
		msg[0] = byte(header.ICMPv6EchoReply)
		header.IPv6(ipb).Encode(&header.IPv6Fields{
			PayloadLength: uint16(len(msg)), TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst,
		})
		header.ICMPv6(msg).SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: msg, Src: src, Dst: dst,
		}))
		return frame
	}

	msg[0] = byte(header.ICMPv4EchoReply)
	binary.BigEndian.PutUint16(msg[2:], ^checksum.Checksum(msg, 0))
	ip := header.IPv4(ipb)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(ipb)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: src, DstAddr: dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())

	return frame
}
