package rootless

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var childMAC = tcpip.LinkAddress("\x02\x00\x00\x00\x01\x00")

// echoRequest builds the frame of an echo request from the command.
func echoRequest(src, dst netip.Addr, id, seq uint16, payload string) []byte {
	// A reply with swapped roles has the request's layout; only the type
	// and the MACs differ.
	f := echoReply(echo{mac: gatewayMAC, src: dst, dst: src, id: id, seq: seq}, []byte(payload))
	eth := header.Ethernet(f)
	eth.Encode(&header.EthernetFields{SrcAddr: childMAC, DstAddr: gatewayMAC, Type: eth.Type()})

	msg := f[header.EthernetMinimumSize+header.IPv4MinimumSize:]
	if src.Is6() {
		msg = f[header.EthernetMinimumSize+header.IPv6MinimumSize:]
		msg[0] = byte(header.ICMPv6EchoRequest)
	} else {
		msg[0] = byte(header.ICMPv4Echo)
	}

	return f
}

func TestEchoRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.Addr
	}{
		{"ipv4", ChildAddr4.Addr(), netip.MustParseAddr("192.0.2.1")},
		{"ipv6", ChildAddr6.Addr(), netip.MustParseAddr("2001:db8::1")},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := echoRequest(tt.src, tt.dst, 0x1234, 7, "payload")
			if !isEchoRequest(header.Ethernet(req).Type(), req[header.EthernetMinimumSize:]) {
				t.Fatal("isEchoRequest = false for an echo request")
			}

			e, ok := parseEcho(req)
			if !ok || e.src != tt.src || e.dst != tt.dst || e.id != 0x1234 || e.seq != 7 ||
				string(e.payload) != "payload" || e.mac != childMAC {
				t.Fatalf("got %+v, %v, want the request's fields", e, ok)
			}

			reply := echoReply(e, e.payload)
			checkReply(t, reply, tt.dst, tt.src)
		})
	}
}

// checkReply verifies the addresses and every checksum of a reply frame.
func checkReply(t *testing.T, f []byte, src, dst netip.Addr) {
	t.Helper()

	eth := header.Ethernet(f)
	if eth.DestinationAddress() != childMAC || eth.SourceAddress() != gatewayMAC {
		t.Errorf("got MACs %s -> %s, want %s -> %s", eth.SourceAddress(), eth.DestinationAddress(),
			gatewayMAC, childMAC)
	}

	ipb := f[header.EthernetMinimumSize:]
	if src.Is4() {
		ip := header.IPv4(ipb)
		if !ip.IsChecksumValid() {
			t.Error("IPv4 header checksum is invalid")
		}
		if got := checksum.Checksum(ipb[ip.HeaderLength():], 0); got != 0xffff {
			t.Errorf("got ICMP checksum sum %#x, want 0xffff", got)
		}
		if ip.SourceAddress().String() != src.String() || ip.DestinationAddress().String() != dst.String() {
			t.Errorf("got %s -> %s, want %s -> %s", ip.SourceAddress(), ip.DestinationAddress(), src, dst)
		}
		return
	}

	ip := header.IPv6(ipb)
	msg := header.ICMPv6(ipb[header.IPv6MinimumSize:])
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: msg, Src: ip.SourceAddress(), Dst: ip.DestinationAddress(),
	})
	if msg.Checksum() != want || msg.Type() != header.ICMPv6EchoReply {
		t.Errorf("got ICMPv6 type %d checksum %#x, want reply with %#x", msg.Type(), msg.Checksum(), want)
	}
}

func TestIsEchoRequestRejects(t *testing.T) {
	req := echoRequest(ChildAddr4.Addr(), Gateway4, 1, 1, "x")
	frag := append([]byte(nil), req...)
	binary.BigEndian.PutUint16(frag[header.EthernetMinimumSize+6:], 0x2000)

	tests := []struct {
		name  string
		frame []byte
	}{
		{"reply", echoReply(echo{mac: childMAC, src: ChildAddr4.Addr(), dst: Gateway4}, nil)},
		{"fragment", frag},
		{"short", req[:header.EthernetMinimumSize+10]},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if isEchoRequest(header.IPv4ProtocolNumber, tt.frame[header.EthernetMinimumSize:]) {
				t.Errorf("isEchoRequest = true, want false")
			}
		})
	}
}

// FuzzEcho feeds frames from the command to the echo path: it must never
// panic, and every request it accepts must give a well-formed reply.
func FuzzEcho(f *testing.F) {
	f.Add(echoRequest(ChildAddr4.Addr(), Gateway4, 1, 2, "abc"))
	f.Add(echoRequest(ChildAddr6.Addr(), Gateway6, 3, 4, ""))

	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < header.EthernetMinimumSize {
			return
		}
		if !isEchoRequest(header.Ethernet(frame).Type(), frame[header.EthernetMinimumSize:]) {
			return
		}

		e, ok := parseEcho(frame)
		if !ok || !e.src.IsValid() || !e.dst.IsValid() {
			return
		}

		reply := echoReply(e, e.payload)
		if len(reply) != header.EthernetMinimumSize+len(e.payload)+8+ipHeaderLen(e.dst) {
			t.Fatalf("got reply of %d bytes for payload of %d", len(reply), len(e.payload))
		}
	})
}

func ipHeaderLen(a netip.Addr) int {
	if a.Is6() {
		return header.IPv6MinimumSize
	}

	return header.IPv4MinimumSize
}

// FuzzDiagAnswer checks that no answer of the kernel's sock_diag makes the
// parser read out of bounds.
func FuzzDiagAnswer(f *testing.F) {
	local, remote := netip.MustParseAddrPort("10.0.2.100:4000"), netip.MustParseAddrPort("1.2.3.4:80")
	f.Add(diagRequest(6, local, remote))
	f.Add(make([]byte, 16+inetDiagMsgLen))

	f.Fuzz(func(t *testing.T, b []byte) {
		parseDiagAnswer(b)
	})
}
