package loader

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/childflow/childflow/internal/testenv"
)

// frame builds an Ethernet frame around an IPv4 packet of proto to dst, with
// a payload of n bytes after an 8-byte transport header.
func frame(proto uint8, dst netip.Addr, n int) []byte {
	ip := make([]byte, 20+8+n)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:16], []byte{192, 0, 2, 1})
	d := dst.As4()
	copy(ip[16:20], d[:])
	eth := make([]byte, 14, 14+len(ip))
	binary.BigEndian.PutUint16(eth[12:], 0x0800)

	return append(eth, ip...)
}

// TestEgressProgram runs the egress program on crafted packets with
// BPF_PROG_TEST_RUN: ICMP to a private address is dropped under
// --block-private and reported; other packets pass and are captured.
func TestEgressProgram(t *testing.T) {
	testenv.RequireRoot(t)
	tr, err := Load(Config{Policy: PolicyActive | PolicyBlockPrivate, Capture: true})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()

	for _, tc := range []struct {
		name  string
		proto uint8
		dst   string
		want  uint32
	}{
		{"icmp to private", 1, "10.1.2.3", 0},
		{"icmp to public", 1, "192.0.2.77", 1},
		{"udp to private (judged at sendmsg)", 17, "10.1.2.3", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each packet has no socket: a fresh cookie-0 flow of its
			// own protocol, so clear it between cases.
			var zero uint64
			_ = tr.objs.CfFlows.Delete(&zero)
			ret, err := tr.objs.CfEgress.Run(&ebpf.RunOptions{Data: frame(tc.proto, netip.MustParseAddr(tc.dst), 32)})
			if err != nil {
				t.Fatalf("test run: %v", err)
			}
			if ret != tc.want {
				t.Errorf("egress returned %d, want %d", ret, tc.want)
			}
		})
	}

	// One violation event for the denied ICMP, one captured packet per
	// allowed packet.
	stop := make(chan struct{})
	close(stop)
	var viol []Event
	if err := tr.ReadEvents(stop, func(e *Event) {
		if e.Kind == KindViolation {
			viol = append(viol, *e)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(viol) != 1 || viol[0].Reason != 3 || viol[0].Dst.Addr() != netip.MustParseAddr("10.1.2.3") {
		t.Errorf("violations = %+v, want one private (3) to 10.1.2.3", viol)
	}
	var pkts []int
	if err := tr.ReadPackets(stop, func(p *Packet) { pkts = append(pkts, len(p.Data)) }); err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 2 || pkts[0] != 60 {
		t.Errorf("captured packet lengths %v, want two of 60 bytes", pkts)
	}
}

// TestCaptureSnapLen checks that the capture copies at most the snap length
// and records the packet's real length.
func TestCaptureSnapLen(t *testing.T) {
	testenv.RequireRoot(t)
	tr, err := Load(Config{Capture: true, SnapLen: 100})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()

	for _, n := range []int{10, 1000, 3000} {
		if _, err := tr.objs.CfEgress.Run(&ebpf.RunOptions{Data: frame(17, netip.MustParseAddr("192.0.2.9"), n)}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	close(stop)
	var got [][2]int
	_ = tr.ReadPackets(stop, func(p *Packet) { got = append(got, [2]int{len(p.Data), p.Len}) })
	want := [][2]int{{38, 38}, {100, 1028}, {100, 3028}}
	if len(got) != len(want) {
		t.Fatalf("got %d packets, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("packet %d: captured/len %v, want %v", i, got[i], want[i])
		}
	}
}
