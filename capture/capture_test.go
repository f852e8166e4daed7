package capture

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/childflow/childflow/internal/testenv"
)

// tcp4Packet builds an IPv4 TCP SYN with payload.
func tcp4Packet(t testing.TB, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{
		Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(192, 0, 2, 80),
	}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 443, SYN: true, Seq: 1, Window: 1000}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}

	return serialize(t, ip, tcp, gopacket.Payload(payload))
}

// udp6Ether builds an Ethernet frame holding an IPv6 UDP datagram.
func udp6Ether(t testing.TB, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{
		SrcMAC:       net.HardwareAddr{2, 0, 0, 0, 0, 1},
		DstMAC:       net.HardwareAddr{2, 0, 0, 0, 0, 2},
		EthernetType: layers.EthernetTypeIPv6,
	}
	ip := &layers.IPv6{
		Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
		SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::53"),
	}
	udp := &layers.UDP{SrcPort: 50000, DstPort: 53}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}

	return serialize(t, eth, ip, udp, gopacket.Payload(payload))
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize packet: %v", err)
	}

	return buf.Bytes()
}

type written struct {
	rec     Record
	capLen  int
	origLen int
	comment string
}

// writeSample writes a raw-IP view and an Ethernet view with a 64-byte snap
// length, and returns the file and what each packet should read back as.
func writeSample(t *testing.T) (string, []written) {
	t.Helper()
	base := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	tcp := tcp4Packet(t, []byte("hello"))
	udp := udp6Ether(t, bytes.Repeat([]byte{'x'}, 100))

	want := []written{
		{Record{Iface: 0, Time: base, Data: tcp, Pid: 1234, Comm: "curl",
			Direction: DirOutbound}, len(tcp), len(tcp), "pid=1234 comm=curl"},
		{Record{Iface: 1, Time: base.Add(1500 * time.Nanosecond), Data: udp, Pid: 77,
			Comm: "dig\x01\xff"}, 64, len(udp), "pid=77 comm=dig??"},
		{Record{Iface: 0, Time: base.Add(time.Second + 1), Data: tcp[:20], OrigLen: 1500,
			Direction: DirInbound}, 20, 1500, ""},
	}

	path := filepath.Join(t.TempDir(), "t.pcapng")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	w, err := New(f, []Interface{
		{Name: "child", Description: "child traffic (ebpf)", LinkType: LinkTypeRaw},
		{Name: "tap0", Description: "tap (rootless)", LinkType: LinkTypeEthernet,
			SnapLen: 64},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	for i := range want {
		if err := w.WriteRecord(&want[i].rec); err != nil {
			t.Fatalf("WriteRecord %d: %v", i, err)
		}
	}
	w.AddDropped(1, 5)

	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	wantStats := Stats{Packets: 3, Bytes: uint64(len(tcp) + 64 + 20), Dropped: 5}
	if got := w.Stats(); got != wantStats {
		t.Errorf("Stats: got %+v, want %+v", got, wantStats)
	}

	return path, want
}

func TestReadBackWithPcapgo(t *testing.T) {
	path, want := writeSample(t)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var dropped []uint64
	r, err := pcapgo.NewNgReader(f, pcapgo.NgReaderOptions{
		WantMixedLinkType: true,
		StatisticsCallback: func(_ int, s pcapgo.NgInterfaceStatistics) {
			dropped = append(dropped, s.PacketsDropped)
		},
	})
	if err != nil {
		t.Fatalf("NewNgReader: %v", err)
	}

	for i, w := range want {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}

		if !ci.Timestamp.Equal(w.rec.Time) || ci.InterfaceIndex != w.rec.Iface ||
			ci.CaptureLength != w.capLen || ci.Length != w.origLen ||
			!bytes.Equal(data, w.rec.Data[:w.capLen]) {
			t.Errorf("packet %d: got ts %v iface %d lengths %d/%d, want %v %d %d/%d", i,
				ci.Timestamp.UTC(), ci.InterfaceIndex, ci.CaptureLength, ci.Length,
				w.rec.Time, w.rec.Iface, w.capLen, w.origLen)
		}
	}

	if _, _, err := r.ReadPacketData(); !errors.Is(err, io.EOF) {
		t.Errorf("after the packets: got %v, want EOF", err)
	}

	if len(dropped) != 2 || dropped[1] != 5 {
		t.Errorf("dropped from statistics: got %v, want [0 5]", dropped)
	}
}

func TestReadBackWithTshark(t *testing.T) {
	tshark := testenv.RequireTool(t, "tshark")
	path, want := writeSample(t)

	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-E", "separator=|",
		"-e", "frame.comment", "-e", "frame.time_epoch", "-e", "frame.interface_id",
		"-e", "frame.cap_len", "-e", "frame.len", "-e", "ip.src", "-e", "ipv6.dst",
		"-e", "udp.dstport", "-e", "tcp.dstport", "-e", "frame.packet_flags_direction",
	).Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}

	wantLines := []string{
		"pid=1234 comm=curl|1740830400.123456789|0|45|45|10.0.0.1|||443|0x00000002",
		"pid=77 comm=dig??|1740830400.123458289|1|64|162||2001:db8::53|53||",
		"|1740830401.123456790|0|20|1500|10.0.0.1||||0x00000001",
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(got) != len(want) {
		t.Fatalf("tshark printed %d lines, want %d:\n%s", len(got), len(want), out)
	}

	for i := range wantLines {
		if got[i] != wantLines[i] {
			t.Errorf("packet %d:\ngot  %s\nwant %s", i, got[i], wantLines[i])
		}
	}
}

func TestCapinfos(t *testing.T) {
	capinfos := testenv.RequireTool(t, "capinfos")
	path, _ := writeSample(t)

	out, err := exec.Command(capinfos, path).CombinedOutput()
	if err != nil {
		t.Fatalf("capinfos: %v\n%s", err, out)
	}

	for _, want := range []string{"Number of packets:   3", "Number of stat entries = 1",
		"Description = child traffic (ebpf)", "Encapsulation = Raw IP",
		"Capture application: childflow"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("capinfos output lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteErrors(t *testing.T) {
	if _, err := New(io.Discard, nil); err == nil {
		t.Error("New without interfaces: got no error")
	}

	w, err := New(io.Discard, []Interface{{LinkType: LinkTypeRaw}})
	if err != nil {
		t.Fatal(err)
	}

	if err := w.WritePacket(1, time.Now(), []byte{1}, 1, 0, ""); err == nil {
		t.Error("write to interface 1 of 1: got no error")
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	if err := w.WritePacket(0, time.Now(), []byte{1}, 1, 0, ""); err == nil {
		t.Error("write after Close: got no error")
	}
}

func TestWriteAllocations(t *testing.T) {
	w, err := New(io.Discard, []Interface{{LinkType: LinkTypeRaw}})
	if err != nil {
		t.Fatal(err)
	}

	pkt := make([]byte, 1500)
	now := time.Now()
	allocs := testing.AllocsPerRun(100, func() {
		if err := w.WritePacket(0, now, pkt, 0, 4242, "curl"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per packet, want 0", allocs)
	}
}

func benchmarkWrite(b *testing.B, size int) {
	w, err := New(io.Discard, []Interface{{LinkType: LinkTypeRaw}})
	if err != nil {
		b.Fatal(err)
	}

	pkt := make([]byte, size)
	now := time.Now()
	b.SetBytes(int64(size))
	for b.Loop() {
		if err := w.WritePacket(0, now, pkt, 0, 4242, "curl"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWrite64KiB(b *testing.B) { benchmarkWrite(b, 64<<10) }
func BenchmarkWrite128B(b *testing.B)  { benchmarkWrite(b, 128) }
