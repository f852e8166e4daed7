package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
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
		f.finish(w, q, req, failed(req, mdns.RcodeServerFailure, errBusy))
		return
	}

	res, v, local := f.answerLocally(q, req)
	if !local && len(f.cfg.Upstreams) > 0 {
		q.ev.Upstream = f.cfg.Upstreams[f.firstUpstream()].String()
	}

	f.emitQuery(q)
	if v != nil {
		f.emit(v)
	}

	if !local {
		res = f.forward(q, req)
	}

	if res.mode == flows.ModeRelayed {
		res = f.checkChain(q, req, res)
	}

	if res.mode == flows.ModeRelayed || res.mode == flows.ModeHostsFile {
		res = f.learn(q, req, res)
	}

	f.finish(w, q, req, res)
}

// result is the answer to a query: the message, its mode, the error of a
// failed one and, once known, its summary.
type result struct {
	resp *mdns.Msg
	mode string
	err  error
	sum  *summary
}

// failed is a result of ours with rcode, for err.
func failed(req *mdns.Msg, rcode int, err error) result {
	return result{resp: localReply(req, rcode), mode: flows.ModeFailed, err: err}
}

// newQuery describes req: transport, the server the program asked, the
// process and the question.
func (f *Forwarder) newQuery(w mdns.ResponseWriter, req *mdns.Msg) *query {
	proto, src, local := transport(w)
	q := &query{proto: proto, start: time.Now()}

	var info ClientInfo
	if f.cfg.Client != nil {
		if i, ok := f.cfg.Client(src, proto); ok {
			info = i
		}
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

// answerLocally returns the answer to a query that is not forwarded and
// true, or false when the query must be forwarded; and the policy violation
// to emit, if any.
func (f *Forwarder) answerLocally(q *query, req *mdns.Msg) (result, *flows.PolicyViolation, bool) {
	if req.Opcode != mdns.OpcodeQuery {
		err := fmt.Errorf("serve opcode %d: not supported", req.Opcode)
		return failed(req, mdns.RcodeNotImplemented, err), nil, true
	}
	if n := len(req.Question); n != 1 {
		err := fmt.Errorf("serve query with %d questions: want 1", n)
		return failed(req, mdns.RcodeFormatError, err), nil, true
	}

	deny, v := f.checkName(q, q.name)
	if deny {
		f.stats.denied.Add(1)
		return empty(req), v, true
	}

	if resp := f.fromHosts(q, req); resp != nil {
		return result{resp: resp, mode: flows.ModeHostsFile}, v, true
	}

	if f.cfg.Offline {
		return empty(req), v, true
	}

	return result{}, v, false
}

// empty is the NOERROR answer without records given for denied names and
// offline runs.
func empty(req *mdns.Msg) result {
	return result{resp: localReply(req, mdns.RcodeSuccess), mode: flows.ModeSyntheticEmpty}
}

// checkName asks the policy about name, the query name or a name its CNAME
// chain led to. A violation is returned even when not denying (audit mode)
// so that it is emitted.
func (f *Forwarder) checkName(q *query, name string) (bool, *flows.PolicyViolation) {
	if f.cfg.Policy == nil {
		return false, nil
	}

	deny, v := f.cfg.Policy.CheckName(name)
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
			v.RemoteStr = name
		}
	}

	return deny, v
}

// checkChain applies the name policy to the names an answer's CNAME chain
// led to, which the query name alone did not reveal. A denied one turns the
// answer into an empty one, as if it had been asked for; its addresses are
// still learned (as denied), in case the program learns them another way.
func (f *Forwarder) checkChain(q *query, req *mdns.Msg, res result) result {
	if f.cfg.Policy == nil {
		return res
	}

	chain := summarize(q.name, res.resp).chain
	for _, name := range chain[1:] {
		deny, v := f.checkName(q, name)
		if v != nil {
			v.Names = chain
			f.emit(v)
		}
		if deny {
			f.stats.denied.Add(1)
			f.learn(q, req, res)
			return empty(req)
		}
	}

	return res
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
func (f *Forwarder) learn(q *query, req *mdns.Msg, res result) result {
	sum := summarize(q.name, res.resp)

	for _, a := range sum.addrs {
		names := sum.namesOf(a)
		ttl := time.Duration(a.ttl) * time.Second
		if f.cfg.Learn != nil {
			if err := f.cfg.Learn(a.ip, names, ttl); err != nil {
				f.stats.learnErrs.Add(1)
				f.warn(&f.warnedLrn, "dns forwarder cannot learn an address; answering SERVFAIL",
					"ip", a.ip, "qname", q.name, "err", err)
				err = fmt.Errorf("learn %s for %s: %w", a.ip, q.name, err)
				return failed(req, mdns.RcodeServerFailure, err)
			}
		}
		f.names.Add(a.ip, names, ttl)
	}
	res.sum = sum

	return res
}

// finish writes the answer to the program, cut to its UDP size, and emits
// the answer event.
func (f *Forwarder) finish(w mdns.ResponseWriter, q *query, req *mdns.Msg, res result) {
	f.count(res.mode)

	resp := res.resp
	resp.Id = req.Id
	resp.Compress = true
	if q.proto == "udp" {
		was := resp.Truncated
		resp.Truncate(q.udpSize)
		if resp.Truncated && !was {
			f.stats.truncated.Add(1)
			res.sum = nil
		}
	}

	n, err := f.write(w, resp)
	if res.err == nil {
		res.err = err
	}

	if res.sum == nil {
		res.sum = summarize(q.name, resp)
	}
	f.emitAnswer(q, n, res)
}

func (f *Forwarder) count(mode string) {
	switch mode {
	case flows.ModeRelayed:
		f.stats.relayed.Add(1)
	case flows.ModeFailed:
		f.stats.failures.Add(1)
	default:
		f.stats.local.Add(1)
	}
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

func (f *Forwarder) emitAnswer(q *query, n int, res result) {
	latency := time.Since(q.start)
	rcode := mdns.RcodeToString[res.resp.Rcode]
	if f.log.Enabled(context.Background(), slog.LevelDebug) {
		f.log.Debug("dns answer", "qname", q.name, "qtype", q.ev.QType, "mode", res.mode,
			"rcode", rcode, "latency", latency, "err", res.err)
	}
	if f.cfg.Sink == nil {
		return
	}

	ev := &flows.DNSAnswer{
		DNSQuery:  q.ev,
		Mode:      res.mode,
		Bytes:     n,
		AnswerIPs: res.sum.ipStrings(),
		RCode:     rcode,
		CNAMEs:    res.sum.cnames,
		Records:   res.sum.records,
		TTL:       res.sum.ttl,
		LatencyUs: latency.Microseconds(),
	}
	if res.err != nil {
		ev.Error = res.err.Error()
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
func (f *Forwarder) warn(once *atomic.Bool, msg string, args ...any) {
	if once.CompareAndSwap(false, true) {
		f.log.Warn(msg, args...)
		return
	}
	f.log.Debug(msg, args...)
}
