package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
)

// hostsTTL is the TTL of answers made from Config.Hosts.
const hostsTTL = 60

var errBusy = errors.New("too many queries in flight")

// query is one query being served.
type query struct {
	ev      flows.DNSQuery
	name    string // lowercase without trailing dot; "" without a question
	qtype   uint16
	proto   string
	udpSize int // the program's UDP buffer size; 0 over TCP
	start   time.Time
}

// serveDNS serves one query. miekg/dns calls it in a goroutine per UDP
// datagram and per TCP connection.
func (f *Forwarder) serveDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	q := f.newQuery(w, req)
	f.stats.queries.Add(1)

	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	default:
		f.stats.dropped.Add(1)
		f.emitQuery(q)
		f.finish(w, q, req, localReply(req, mdns.RcodeServerFailure), flows.ModeFailed, errBusy, nil)
		return
	}

	resp, mode, v, err := f.answerLocally(q, req)
	if resp == nil {
		q.ev.Upstream = f.cfg.Upstreams[f.firstUpstream()].String()
	}

	f.emitQuery(q)
	if v != nil {
		f.emit(v)
	}

	if resp == nil {
		resp, mode, err = f.forward(q, req)
	}

	var sum *summary
	if err == nil && (mode == flows.ModeRelayed || mode == flows.ModeHostsFile) {
		resp, mode, sum, err = f.learn(q, req, resp, mode)
	}

	f.finish(w, q, req, resp, mode, err, sum)
}

// newQuery describes req: transport, the server the program asked, the
// process and the question.
func (f *Forwarder) newQuery(w mdns.ResponseWriter, req *mdns.Msg) *query {
	proto, src, local := transport(w)
	q := &query{proto: proto, start: time.Now()}

	var info ClientInfo
	if f.cfg.Client != nil {
		info, _ = f.cfg.Client(src, proto)
	}
	server := local
	if info.Server.IsValid() {
		server = info.Server
	}

	q.ev = flows.DNSQuery{
		Proc:       flows.Proc{Pid: info.Pid, Comm: info.Comm},
		Protocol:   proto,
		Server:     server.String(),
		ServerIP:   server.Addr().String(),
		ServerPort: int(server.Port()),
		QType:      "unknown",
		ID:         req.Id,
	}
	if len(req.Question) > 0 {
		q.name = normalizeName(req.Question[0].Name)
		q.qtype = req.Question[0].Qtype
		q.ev.QName = &q.name
		q.ev.QType = typeName(q.qtype)
	}

	if proto == "udp" {
		q.udpSize = mdns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			q.udpSize = max(int(opt.UDPSize()), mdns.MinMsgSize)
		}
	}

	return q
}

// transport returns the protocol, the client's address and the address the
// query arrived at.
func transport(w mdns.ResponseWriter) (proto string, src, local netip.AddrPort) {
	proto = "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}

	return proto, addrPort(w.RemoteAddr()), addrPort(w.LocalAddr())
}

func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}

	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// typeName names a query type as miekg/dns does, or "TYPEn" (RFC 3597).
func typeName(t uint16) string {
	if s, ok := mdns.TypeToString[t]; ok {
		return s
	}

	return fmt.Sprintf("TYPE%d", t)
}

// answerLocally returns the answer to a query that is not forwarded, with its
// mode, the policy violation to emit (if any) and the error of a failed one;
// or a nil answer when the query must be forwarded.
func (f *Forwarder) answerLocally(q *query, req *mdns.Msg) (*mdns.Msg, string, *flows.PolicyViolation, error) {
	if req.Opcode != mdns.OpcodeQuery {
		err := fmt.Errorf("serve opcode %d: not supported", req.Opcode)
		return localReply(req, mdns.RcodeNotImplemented), flows.ModeFailed, nil, err
	}
	if n := len(req.Question); n != 1 {
		err := fmt.Errorf("serve query with %d questions: want 1", n)
		return localReply(req, mdns.RcodeFormatError), flows.ModeFailed, nil, err
	}

	deny, v := f.checkName(q)
	if deny {
		f.stats.denied.Add(1)
		return localReply(req, mdns.RcodeSuccess), flows.ModeSyntheticEmpty, v, nil
	}

	if resp := f.fromHosts(q, req); resp != nil {
		return resp, flows.ModeHostsFile, v, nil
	}

	if f.cfg.Offline {
		return localReply(req, mdns.RcodeSuccess), flows.ModeSyntheticEmpty, v, nil
	}

	return nil, "", v, nil
}

// checkName asks the policy about the query name. A violation is returned
// even when not denying (audit mode) so that it is emitted.
func (f *Forwarder) checkName(q *query) (bool, *flows.PolicyViolation) {
	if f.cfg.Policy == nil {
		return false, nil
	}

	deny, v := f.cfg.Policy.CheckName(q.name)
	if v == nil && deny {
		v = &flows.PolicyViolation{Reason: "query for a name denied by policy"}
	}
	if v != nil {
		v.Protocol = "dns"
		v.Proc = q.ev.Proc
		if v.Action == "" {
			v.Action = flows.ActionDeny
		}
		if v.RemoteStr == "" {
			v.RemoteStr = q.name
		}
	}

	return deny, v
}

// fromHosts answers from Config.Hosts, or returns nil when the name is not
// listed there.
func (f *Forwarder) fromHosts(q *query, req *mdns.Msg) *mdns.Msg {
	if q.qtype == mdns.TypePTR {
		if host, ok := f.reverse[q.name]; ok {
			resp := localReply(req, mdns.RcodeSuccess)
			resp.Answer = append(resp.Answer, &mdns.PTR{Hdr: rrHeader(req, mdns.TypePTR), Ptr: host + "."})
			return resp
		}
	}

	addrs, ok := f.cfg.Hosts[q.name]
	if !ok {
		return nil
	}

	resp := localReply(req, mdns.RcodeSuccess)
	for _, a := range addrs {
		switch {
		case q.qtype == mdns.TypeA && a.Unmap().Is4():
			resp.Answer = append(resp.Answer, &mdns.A{Hdr: rrHeader(req, mdns.TypeA), A: a.Unmap().AsSlice()})
		case q.qtype == mdns.TypeAAAA && a.Is6() && !a.Is4In6():
			resp.Answer = append(resp.Answer, &mdns.AAAA{Hdr: rrHeader(req, mdns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}

	return resp
}

func rrHeader(req *mdns.Msg, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: req.Question[0].Name, Rrtype: t, Class: mdns.ClassINET, Ttl: hostsTTL}
}

// localReply is an answer of ours to req with rcode, echoing EDNS0 when the
// program sent it.
func localReply(req *mdns.Msg, rcode int) *mdns.Msg {
	resp := new(mdns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(mdns.DefaultMsgSize, opt.Do())
	}

	return resp
}

// learn hands every address of resp to Config.Learn and the Names table. If
// Learn fails, the answer becomes SERVFAIL.
func (f *Forwarder) learn(q *query, req, resp *mdns.Msg, mode string) (*mdns.Msg, string, *summary, error) {
	sum := summarize(q.name, resp)

	for _, a := range sum.addrs {
		names := sum.namesOf(a)
		ttl := time.Duration(a.ttl) * time.Second
		if f.cfg.Learn != nil {
			if err := f.cfg.Learn(a.ip, names, ttl); err != nil {
				f.stats.learnErrs.Add(1)
				f.warn("dns forwarder cannot learn an address; answering SERVFAIL",
					"ip", a.ip, "qname", q.name, "err", err)
				err = fmt.Errorf("learn %s for %s: %w", a.ip, q.name, err)
				return localReply(req, mdns.RcodeServerFailure), flows.ModeFailed, nil, err
			}
		}
		f.names.Add(a.ip, names, ttl)
	}

	return resp, mode, sum, nil
}

// finish writes resp to the program, cut to its UDP size, and emits the
// answer event. sum describes resp when known.
func (f *Forwarder) finish(w mdns.ResponseWriter, q *query, req, resp *mdns.Msg, mode string, err error, sum *summary) {
	resp.Id = req.Id
	if mode == flows.ModeRelayed {
		f.stats.relayed.Add(1)
	} else if mode != flows.ModeFailed {
		f.stats.local.Add(1)
	}
	if mode == flows.ModeFailed {
		f.stats.failures.Add(1)
	}

	resp.Compress = true
	if q.proto == "udp" {
		was := resp.Truncated
		resp.Truncate(q.udpSize)
		if resp.Truncated && !was {
			f.stats.truncated.Add(1)
			sum = nil
		}
	}

	n, werr := f.write(w, resp)
	if werr != nil && err == nil {
		err = werr
	}

	if sum == nil {
		sum = summarize(q.name, resp)
	}
	f.emitAnswer(q, resp, mode, n, err, sum)
}

// write packs and sends resp, returning its size on the wire.
func (f *Forwarder) write(w mdns.ResponseWriter, resp *mdns.Msg) (int, error) {
	wire, err := resp.Pack()
	if err != nil {
		f.stats.writeErrs.Add(1)
		return 0, fmt.Errorf("pack answer: %w", err)
	}

	if _, err := w.Write(wire); err != nil {
		f.stats.writeErrs.Add(1)
		return len(wire), fmt.Errorf("write answer to %s: %w", w.RemoteAddr(), err)
	}
	f.stats.answers.Add(1)

	return len(wire), nil
}

func (f *Forwarder) emitQuery(q *query) {
	if f.cfg.Sink == nil {
		return
	}

	ev := q.ev
	f.emit(&ev)
}

func (f *Forwarder) emitAnswer(q *query, resp *mdns.Msg, mode string, n int, err error, sum *summary) {
	latency := time.Since(q.start)
	if f.log.Enabled(context.Background(), slog.LevelDebug) {
		f.log.Debug("dns answer", "qname", q.name, "qtype", q.ev.QType, "mode", mode,
			"rcode", mdns.RcodeToString[resp.Rcode], "latency", latency, "err", err)
	}
	if f.cfg.Sink == nil {
		return
	}

	ev := &flows.DNSAnswer{
		DNSQuery:  q.ev,
		Mode:      mode,
		Bytes:     n,
		AnswerIPs: sum.ipStrings(),
		RCode:     mdns.RcodeToString[resp.Rcode],
		CNAMEs:    sum.cnames,
		Records:   sum.records,
		TTL:       sum.ttl,
		LatencyUs: latency.Microseconds(),
	}
	if err != nil {
		ev.Error = err.Error()
	}
	f.emit(ev)
}

func (f *Forwarder) emit(ev flows.Event) {
	if f.cfg.Sink != nil {
		f.cfg.Sink.Emit(ev)
	}
}

// warn logs the first of a kind of repeated failure at warning level and the
// rest at debug level, so that a broken upstream does not flood the log.
func (f *Forwarder) warn(msg string, args ...any) {
	if f.warned.CompareAndSwap(false, true) {
		f.log.Warn(msg, args...)
		return
	}
	f.log.Debug(msg, args...)
}
