package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
)

// maxStray bounds the datagrams read from an upstream socket that are not the
// awaited answer (wrong ID or question) before the attempt gives up.
const maxStray = 16

var (
	errStray      = errors.New("answer does not match the query")
	errMalformed  = errors.New("malformed answer")
	errNoUpstream = errors.New("ask upstream: no upstream configured")
)

// bufPool holds buffers for one message with its TCP length prefix.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 2+mdns.MaxMsgSize); return &b }}

// firstUpstream returns the index of the upstream tried first.
func (f *Forwarder) firstUpstream() int {
	return int(f.preferred.Load()) % len(f.cfg.Upstreams)
}

// forward asks the upstreams in turn, up to Config.Attempts times within
// Timeout*Attempts, and returns their answer, or SERVFAIL and the last error.
func (f *Forwarder) forward(q *query, req *mdns.Msg) result {
	budget := f.cfg.Timeout * time.Duration(f.cfg.Attempts)
	ctx, cancel := context.WithTimeout(f.ctx, budget)
	defer cancel()

	ups := f.cfg.Upstreams
	if len(ups) == 0 {
		return failed(req, mdns.RcodeServerFailure, errNoUpstream)
	}
	first := f.firstUpstream()
	var err error
	for i := 0; i < f.cfg.Attempts && ctx.Err() == nil; i++ {
		idx := (first + i) % len(ups)
		var resp *mdns.Msg
		resp, err = f.exchange(ctx, ups[idx], q.proto, req)
		if err == nil {
			f.preferred.Store(uint32(idx))
			q.ev.Upstream = ups[idx].String()
			return result{resp: resp, mode: flows.ModeRelayed}
		}

		f.stats.upstreamErrs.Add(1)
		f.warn(&f.warnedUp, "dns upstream failed", "upstream", ups[idx], "qname", q.name, "err", err)
	}
	if err == nil {
		err = fmt.Errorf("ask upstream: %w", ctx.Err())
	}

	return failed(req, mdns.RcodeServerFailure, err)
}

// upstreamQuery is a query as sent upstream: its wire form with a fresh ID.
type upstreamQuery struct {
	wire     []byte
	id       uint16
	question []mdns.Question
}

type exchangeFunc func(context.Context, netip.AddrPort, *upstreamQuery) (*mdns.Msg, error)

// exchange asks up once, over the program's transport; a truncated UDP
// answer is asked again over TCP. Each exchange gets Config.Timeout.
func (f *Forwarder) exchange(
	ctx context.Context, up netip.AddrPort, proto string, req *mdns.Msg,
) (*mdns.Msg, error) {
	uq, err := newUpstreamQuery(req)
	if err != nil {
		return nil, err
	}

	if proto == "udp" {
		resp, err := f.withTimeout(ctx, exchangeUDP, up, uq)
		if err != nil || !resp.Truncated {
			return resp, err
		}
	}

	return f.withTimeout(ctx, exchangeTCP, up, uq)
}

func (f *Forwarder) withTimeout(
	ctx context.Context, fn exchangeFunc, up netip.AddrPort, uq *upstreamQuery,
) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()

	return fn(ctx, up, uq)
}

// newUpstreamQuery packs req with a random ID, leaving req unchanged.
func newUpstreamQuery(req *mdns.Msg) (*upstreamQuery, error) {
	uq := &upstreamQuery{id: uint16(rand.Uint32()), question: req.Question}

	orig := req.Id
	req.Id = uq.id
	wire, err := req.Pack()
	req.Id = orig
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	uq.wire = wire

	return uq, nil
}

// exchangeUDP sends uq to up from a fresh socket and waits for its answer,
// skipping stray datagrams.
func exchangeUDP(ctx context.Context, up netip.AddrPort, uq *upstreamQuery) (*mdns.Msg, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(up))
	if err != nil {
		return nil, fmt.Errorf("dial upstream udp %s: %w", up, err)
	}
	defer conn.Close()

	defer bindDeadline(ctx, conn)()

	if _, err := conn.Write(uq.wire); err != nil {
		return nil, fmt.Errorf("send to upstream udp %s: %w", up, err)
	}

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for range maxStray {
		n, err := conn.Read(*bp)
		if err != nil {
			return nil, fmt.Errorf("read from upstream udp %s: %w", up, err)
		}

		resp, err := parseAnswer((*bp)[:n], uq.id, uq.question)
		if errors.Is(err, errStray) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read from upstream udp %s: %w", up, err)
		}

		return resp, nil
	}

	return nil, fmt.Errorf("read from upstream udp %s: %d stray answers", up, maxStray)
}

// exchangeTCP sends uq to up over a new TCP connection and reads the answer.
func exchangeTCP(ctx context.Context, up netip.AddrPort, uq *upstreamQuery) (*mdns.Msg, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", up.String())
	if err != nil {
		return nil, fmt.Errorf("dial upstream tcp %s: %w", up, err)
	}
	defer conn.Close()

	defer bindDeadline(ctx, conn)()

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:2+len(uq.wire)]
	binary.BigEndian.PutUint16(buf, uint16(len(uq.wire)))
	copy(buf[2:], uq.wire)
	if _, err := conn.Write(buf); err != nil {
		return nil, fmt.Errorf("send to upstream tcp %s: %w", up, err)
	}

	if _, err := io.ReadFull(conn, (*bp)[:2]); err != nil {
		return nil, fmt.Errorf("read from upstream tcp %s: %w", up, err)
	}
	n := int(binary.BigEndian.Uint16(*bp))
	if _, err := io.ReadFull(conn, (*bp)[:n]); err != nil {
		return nil, fmt.Errorf("read from upstream tcp %s: %w", up, err)
	}

	resp, err := parseAnswer((*bp)[:n], uq.id, uq.question)
	if err != nil {
		return nil, fmt.Errorf("read from upstream tcp %s: %w", up, err)
	}

	return resp, nil
}

// bindDeadline applies the deadline of ctx to conn and interrupts it when ctx
// is cancelled earlier (the forwarder closing). Call the result when done.
func bindDeadline(ctx context.Context, conn net.Conn) func() bool {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}

	return context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
}

// parseAnswer parses an upstream answer and checks it answers the query with
// ID id and question. A truncated answer that does not parse counts as an
// empty truncated one, to be asked again over TCP.
func parseAnswer(b []byte, id uint16, question []mdns.Question) (*mdns.Msg, error) {
	const qr, tc = 1 << 15, 1 << 9
	if len(b) < 12 {
		return nil, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}

	flags := binary.BigEndian.Uint16(b[2:])
	if binary.BigEndian.Uint16(b) != id || flags&qr == 0 {
		return nil, errStray
	}

	resp := new(mdns.Msg)
	if err := resp.Unpack(b); err != nil {
		if flags&tc != 0 {
			return &mdns.Msg{MsgHdr: mdns.MsgHdr{Id: id, Response: true, Truncated: true}}, nil
		}
		return nil, fmt.Errorf("%w: %w", errMalformed, err)
	}

	if len(resp.Question) > 0 && !sameQuestion(resp.Question[0], question) {
		return nil, errStray
	}

	return resp, nil
}

func sameQuestion(got mdns.Question, want []mdns.Question) bool {
	if len(want) == 0 {
		return false
	}

	w := want[0]
	return got.Qtype == w.Qtype && got.Qclass == w.Qclass && strings.EqualFold(got.Name, w.Name)
}
