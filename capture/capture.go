// Package capture writes the packets of a run as pcapng, each annotated with
// the process that owns its socket.
//
// The package writes every block itself (section header, interface
// descriptions, Enhanced Packet Blocks and closing statistics): each packet
// carries an opt_comment such as "pid=1234 comm=curl" (Wireshark shows it as
// frame.comment) and, when known, the direction in epb_flags
// (frame.packet_flags_direction). Timestamps have nanosecond resolution. No
// pcap library is linked: gopacket's layers package alone cost 4 ms of
// start-up, and childflow's start-up is a product figure.
//
// pcapng has no standard per-packet process option: Apple's process
// information blocks are vendor-specific and tshark 4.0 has no field for them
// (checked with tshark -G fields), so the comment is the portable carrier.
//
// A Writer is not safe for concurrent writes; Stats may be called from any
// goroutine.
package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// LinkType is a pcapng link type (the LINKTYPE_ values of tcpdump.org).
type LinkType uint16

// The link types childflow writes.
const (
	LinkTypeEthernet LinkType = 1
	LinkTypeRaw      LinkType = 101 // raw IPv4 or IPv6, from the IP header
	LinkTypeIPv4     LinkType = 228
	LinkTypeIPv6     LinkType = 229
)

// Interface describes one view of the traffic, written as one pcapng
// interface block. The eBPF view starts at the IP header (LinkTypeRaw, or
// LinkTypeIPv4/LinkTypeIPv6); the rootless view is Ethernet.
type Interface struct {
	Name        string
	Description string // the view and backend, for example "child traffic (ebpf)"
	LinkType    LinkType
	SnapLen     uint32 // longest packet prefix kept; 0 means no limit
}

// Direction is the way a packet went, relative to the traced command.
type Direction uint8

// Directions, as pcapng's epb_flags encodes them.
const (
	DirUnknown  Direction = 0
	DirInbound  Direction = 1
	DirOutbound Direction = 2
)

// Record is one packet with what is known about it.
type Record struct {
	Iface     int       // index into the interfaces given to New
	Time      time.Time // capture time
	Data      []byte    // the bytes captured, cut to the snap length on write
	OrigLen   int       // length on the wire; 0 (or less than len(Data)) means len(Data)
	Pid       uint32    // 0 when unknown
	Comm      string    // "" when unknown
	Direction Direction
}

// Stats counts what a Writer wrote and what its caller reported lost.
type Stats struct {
	Packets uint64 // Enhanced Packet Blocks written
	Bytes   uint64 // captured packet bytes written (not file bytes)
	Dropped uint64 // packets the caller reported lost (see AddDropped)
}

// Writer writes one pcapng section. It buffers: call Close (or Flush) before
// the underlying writer is closed. The Writer never closes it.
type Writer struct {
	bw     *bufio.Writer
	ifaces []Interface
	start  time.Time

	hdr     [28]byte
	opt     []byte // reused options buffer
	packets []uint64
	dropped []uint64
	stats   struct{ packets, bytes, dropped atomic.Uint64 }
	closed  bool
}

// bufferSize keeps file writes large: a 64 KiB packet plus its block.
const bufferSize = 256 << 10

// New writes a section header and one interface block per entry of ifaces
// to w, and returns a Writer for their packets. Packets name their interface
// by its index in ifaces.
func New(w io.Writer, ifaces []Interface) (*Writer, error) {
	if len(ifaces) == 0 {
		return nil, errors.New("create pcapng writer: no interfaces")
	}

	cw := &Writer{
		bw:      bufio.NewWriterSize(w, bufferSize),
		ifaces:  append([]Interface(nil), ifaces...),
		start:   time.Now(),
		opt:     make([]byte, 0, 128),
		packets: make([]uint64, len(ifaces)),
		dropped: make([]uint64, len(ifaces)),
	}

	if err := cw.writeHeader(); err != nil {
		return nil, err
	}

	return cw, nil
}

func (w *Writer) writeHeader() error {
	var b block
	b.start(blockSHB)
	b.u32(byteOrderMagic)
	b.u16(1)          // major version
	b.u16(0)          // minor version
	b.u64(^uint64(0)) // section length: not given
	b.optString(shbHardware, runtime.GOARCH)
	b.optString(shbOS, runtime.GOOS)
	b.optString(shbUserAppl, "childflow")
	b.end()

	for _, i := range w.ifaces {
		b.start(blockIDB)
		b.u16(uint16(i.LinkType))
		b.u16(0) // reserved
		b.u32(i.SnapLen)
		b.optString(ifName, i.Name)
		b.optString(ifDescription, i.Description)
		b.opt(ifTsresol, []byte{9}) // nanoseconds
		b.optString(ifOS, runtime.GOOS)
		b.end()
	}

	if _, err := w.bw.Write(b.buf); err != nil {
		return fmt.Errorf("write pcapng header: %w", err)
	}

	return nil
}

// Codes of the pcapng blocks and options this package writes.
const (
	blockSHB       = 0x0A0D0D0A
	blockIDB       = 1
	blockISB       = 5
	byteOrderMagic = 0x1A2B3C4D

	shbHardware   = 2
	shbOS         = 3
	shbUserAppl   = 4
	ifName        = 2
	ifDescription = 3
	ifTsresol     = 9
	ifOS          = 12
	isbStartTime  = 2
	isbEndTime    = 3
	isbIfRecv     = 4
	isbIfDrop     = 5
)

// block builds pcapng blocks in a buffer: start, fields and options, end.
type block struct {
	buf   []byte
	begin int
	opts  bool
}

func (b *block) start(typ uint32) {
	b.begin = len(b.buf)
	b.opts = false
	b.u32(typ)
	b.u32(0) // total length, filled by end
}

func (b *block) u16(v uint16) { b.buf = binary.LittleEndian.AppendUint16(b.buf, v) }
func (b *block) u32(v uint32) { b.buf = binary.LittleEndian.AppendUint32(b.buf, v) }
func (b *block) u64(v uint64) { b.buf = binary.LittleEndian.AppendUint64(b.buf, v) }

// opt appends one option, padded to 32 bits.
func (b *block) opt(code uint16, v []byte) {
	b.opts = true
	b.u16(code)
	b.u16(uint16(len(v)))
	b.buf = append(append(b.buf, v...), zeros[:padLen(len(v))]...)
}

func (b *block) optString(code uint16, v string) {
	if v != "" {
		b.opt(code, []byte(v))
	}
}

// optTime appends a timestamp option in the interface's resolution (ns).
func (b *block) optTime(code uint16, t time.Time) {
	ns := uint64(t.UnixNano())
	var v [8]byte
	binary.LittleEndian.PutUint32(v[0:], uint32(ns>>32))
	binary.LittleEndian.PutUint32(v[4:], uint32(ns))
	b.opt(code, v[:])
}

// end closes the options and writes the total length at both ends.
func (b *block) end() {
	if b.opts {
		b.u32(optEnd)
	}
	total := len(b.buf) - b.begin + 4
	b.u32(uint32(total))
	binary.LittleEndian.PutUint32(b.buf[b.begin+4:], uint32(total))
}

// WritePacket writes one packet of interface iface captured at ts, with the
// process that owns its socket as a comment. See Record for the arguments.
func (w *Writer) WritePacket(
	iface int, ts time.Time, data []byte, origLen int, pid uint32, comm string,
) error {
	return w.WriteRecord(&Record{
		Iface: iface, Time: ts, Data: data, OrigLen: origLen, Pid: pid, Comm: comm,
	})
}

// WriteRecord writes one packet as an Enhanced Packet Block. Data longer than
// the interface's snap length is cut to it; the original length is kept.
func (w *Writer) WriteRecord(r *Record) error {
	if r.Iface < 0 || r.Iface >= len(w.ifaces) {
		return fmt.Errorf("write packet: interface %d does not exist (have %d)",
			r.Iface, len(w.ifaces))
	}

	if w.closed {
		return errors.New("write packet: writer is closed")
	}

	data := r.Data
	if snap := w.ifaces[r.Iface].SnapLen; snap > 0 && uint32(len(data)) > snap {
		data = data[:snap]
	}

	if err := w.writeEPB(r, data); err != nil {
		return fmt.Errorf("write packet: %w", err)
	}

	w.packets[r.Iface]++
	w.stats.packets.Add(1)
	w.stats.bytes.Add(uint64(len(data)))

	return nil
}

// Block and option codes of the pcapng specification.
const (
	blockEPB     = 6
	optEnd       = 0
	optComment   = 1
	optEPBFlags  = 2
	epbFixedSize = 32 // type, length, interface, 2x timestamp, 2x length, trailing length
)

// writeEPB writes the block header, the data and the options; the buffered
// writer makes the three writes one.
func (w *Writer) writeEPB(r *Record, data []byte) error {
	opts := w.options(r)
	pad := padLen(len(data))
	total := epbFixedSize + len(data) + pad + len(opts)

	origLen := max(r.OrigLen, len(r.Data))
	ts := uint64(r.Time.UnixNano())

	h := w.hdr[:]
	binary.LittleEndian.PutUint32(h[0:], blockEPB)
	binary.LittleEndian.PutUint32(h[4:], uint32(total))
	binary.LittleEndian.PutUint32(h[8:], uint32(r.Iface))
	binary.LittleEndian.PutUint32(h[12:], uint32(ts>>32))
	binary.LittleEndian.PutUint32(h[16:], uint32(ts))
	binary.LittleEndian.PutUint32(h[20:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[24:], uint32(origLen))
	w.bw.Write(h)
	w.bw.Write(data)

	w.bw.Write(zeros[:pad])
	w.bw.Write(opts)
	binary.LittleEndian.PutUint32(h[:4], uint32(total))
	_, err := w.bw.Write(h[:4])

	return err // bufio.Writer keeps the first error and returns it from every call
}

// options builds the packet's options (comment, flags, end) in w.opt.
func (w *Writer) options(r *Record) []byte {
	b := w.opt[:0]
	if r.Pid != 0 || r.Comm != "" {
		start := len(b)
		b = appendComment(append(b, 0, 0, 0, 0), r)
		b = endOption(b, start, optComment)
	}

	if r.Direction == DirInbound || r.Direction == DirOutbound {
		start := len(b)
		b = binary.LittleEndian.AppendUint32(append(b, 0, 0, 0, 0), uint32(r.Direction))
		b = endOption(b, start, optEPBFlags)
	}

	if len(b) > 0 {
		b = binary.LittleEndian.AppendUint32(b, optEnd)
	}
	w.opt = b

	return b
}

// endOption fills the header of the option that starts at start (4 bytes
// reserved by the caller, then the value) and pads the value.
func endOption(b []byte, start int, code uint16) []byte {
	n := len(b) - start - 4
	binary.LittleEndian.PutUint16(b[start:], code)
	binary.LittleEndian.PutUint16(b[start+2:], uint16(n))

	return append(b, zeros[:padLen(n)]...)
}

// maxComm bounds the comm written; the kernel's is at most 15 bytes.
const maxComm = 64

// appendComment writes "pid=1234 comm=curl", leaving out an unknown part.
// comm comes from the kernel and may hold any bytes: the comment must be
// UTF-8, so other bytes and control characters become '?'.
func appendComment(b []byte, r *Record) []byte {
	if r.Pid != 0 {
		b = append(b, "pid="...)
		b = strconv.AppendUint(b, uint64(r.Pid), 10)
	}

	if r.Comm == "" {
		return b
	}

	if r.Pid != 0 {
		b = append(b, ' ')
	}
	b = append(b, "comm="...)

	comm := r.Comm[:min(len(r.Comm), maxComm)]
	for _, c := range []byte(comm) {
		if c < 0x20 || c >= utf8.RuneSelf || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}

	return b
}

// zeros is padding; never written to.
var zeros [4]byte

func padLen(n int) int { return (4 - n&3) & 3 }

// AddDropped records that n packets of interface iface were lost before they
// reached the Writer. Close writes the total into the interface statistics
// (isb_ifdrop) and Stats reports it. Like the writes, it is not safe for
// concurrent use.
func (w *Writer) AddDropped(iface int, n uint64) {
	if iface >= 0 && iface < len(w.dropped) {
		w.dropped[iface] += n
		w.stats.dropped.Add(n)
	}
}

// Stats returns the counts so far. It is safe to call concurrently with
// writes.
func (w *Writer) Stats() Stats {
	return Stats{
		Packets: w.stats.packets.Load(),
		Bytes:   w.stats.bytes.Load(),
		Dropped: w.stats.dropped.Load(),
	}
}

// Flush writes buffered blocks to the underlying writer.
func (w *Writer) Flush() error {
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("flush pcapng: %w", err)
	}

	return nil
}

// Close writes an Interface Statistics Block per interface (packets written,
// packets dropped, start and end time) and flushes. It does not close the
// underlying writer. Later writes fail; a second Close does nothing.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true

	end := time.Now()
	ts := uint64(end.UnixNano())
	var b block
	for i := range w.ifaces {
		b.start(blockISB)
		b.u32(uint32(i))
		b.u32(uint32(ts >> 32))
		b.u32(uint32(ts))
		b.optTime(isbStartTime, w.start)
		b.optTime(isbEndTime, end)
		var v [8]byte
		binary.LittleEndian.PutUint64(v[:], w.packets[i]+w.dropped[i])
		b.opt(isbIfRecv, v[:])
		binary.LittleEndian.PutUint64(v[:], w.dropped[i])
		b.opt(isbIfDrop, v[:])
		b.end()
	}
	if _, err := w.bw.Write(b.buf); err != nil {
		return fmt.Errorf("write pcapng statistics: %w", err)
	}

	return w.Flush()
}
