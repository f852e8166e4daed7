// Package report turns flow-log records into a Report: event and protocol
// counts, DNS names and what they led to, connects, ranked policy violations,
// errors, loss, and byte totals per destination. It renders the report, and
// the end-of-run Summary that wraps it, as text, Markdown or JSON, and can
// suggest a policy profile that allows what a log shows.
//
// The Aggregator reads records (flows.Record), not typed events, so that a log
// of the older tool (keys sorted, fewer fields), a current log and the live
// events of a run (through flows.RecordOf) are counted alike. Every field is
// optional except "event"; an event name this package does not know is
// counted as "unknown_event".
//
// Names are attached to an address when a DNS answer returned it or when a
// record lists them in "names". A name learned after a connect still applies
// to it: names are resolved when the Report is built, not when records arrive.
package report

import (
	"io"
	"net/netip"
	"sort"
	"strconv"
	"sync"

	"github.com/childflow/childflow/flows"
)

// UnknownEvent is the key under which events of unknown names are counted.
const UnknownEvent = "unknown_event"

// maxMalformed bounds how many malformed lines a Report lists; the count of
// all of them is kept in Report.MalformedLines.
const maxMalformed = 100

// knownEvents are the event names counted under their own name.
var knownEvents = map[string]bool{
	flows.EventDNSQuery: true, flows.EventDNSAnswer: true, flows.EventConnectAttempt: true,
	flows.EventConnectResult: true, flows.EventPolicyViolation: true, flows.EventFlowEnd: true,
	flows.EventRuntimeFailure: true, flows.EventLoss: true, flows.EventRunStart: true,
	flows.EventRunEnd: true,
}

// Aggregator accumulates records into a Report. The zero value is not ready;
// use NewAggregator. It is safe for concurrent use, and implements flows.Sink
// so that a run can feed it live.
type Aggregator struct {
	mu sync.Mutex

	events, protocols, dnsNames, dnsModes counter
	byReason, byControl, byDest, byDomain counter
	byCIDR, connectErrors, loss           counter
	violations                            int
	connects                              ConnectStats
	totals                                FlowTotals
	ipNames                               map[string]set
	names                                 map[string]*nameInfo
	targets                               map[string]*target
	failures                              []RuntimeFailure
	run                                   *RunInfo
	malformed                             []flows.LineError
	malformedCount                        int
}

// nameInfo is what the log says about one DNS name.
type nameInfo struct {
	queries   int
	answerIPs set
	matched   set
}

// target is one destination (protocol and address) of the command.
type target struct {
	Target
	names set
}

// NewAggregator returns an empty Aggregator.
func NewAggregator() *Aggregator {
	return &Aggregator{
		events: counter{}, protocols: counter{}, dnsNames: counter{}, dnsModes: counter{},
		byReason: counter{}, byControl: counter{}, byDest: counter{}, byDomain: counter{},
		byCIDR: counter{}, connectErrors: counter{}, loss: counter{},
		ipNames: map[string]set{}, names: map[string]*nameInfo{},
		targets: map[string]*target{},
	}
}

// Emit implements flows.Sink: it adds the record form of ev.
func (a *Aggregator) Emit(ev flows.Event) { a.Add(flows.RecordOf(ev)) }

// AddMalformed records a line of the log that could not be read.
func (a *Aggregator) AddMalformed(e flows.LineError) {
	a.mu.Lock()
	defer a.mu.Unlock()

	a.malformedCount++
	if len(a.malformed) < maxMalformed {
		a.malformed = append(a.malformed, e)
	}
}

// Add counts one record. Records without an event name are counted as
// unknown events.
func (a *Aggregator) Add(rec flows.Record) {
	a.mu.Lock()
	defer a.mu.Unlock()

	ev := rec.Event()
	if !knownEvents[ev] {
		ev = UnknownEvent
	}
	a.events.add(ev, 1)
	if p := rec.Str("protocol"); p != "" {
		a.protocols.add(p, 1)
	}
	for _, n := range rec.StrSlice("names") {
		a.learn(n, rec.Str("remote_ip"))
	}

	switch ev {
	case flows.EventDNSQuery:
		a.addQuery(rec)
	case flows.EventDNSAnswer:
		a.addAnswer(rec)
	case flows.EventConnectAttempt:
		a.addAttempt(rec)
	case flows.EventConnectResult:
		a.addResult(rec)
	case flows.EventPolicyViolation:
		a.addViolation(rec)
	case flows.EventFlowEnd:
		a.addFlowEnd(rec)
	case flows.EventRuntimeFailure:
		a.failures = append(a.failures, RuntimeFailure{Phase: rec.Str("phase"),
			ReasonCode: rec.Str("reason_code"), Detail: rec.Str("detail")})
	case flows.EventLoss:
		a.loss.add(orDefault(rec.Str("source"), "unknown"), int(min(rec.Uint("count"), 1<<31)))
	case flows.EventRunStart, flows.EventRunEnd:
		a.addRun(rec)
	}
}

// ReadLog reads a whole flow log into a new Report. Malformed lines are
// listed in the Report, not returned as errors; the error is a read error.
func ReadLog(r io.Reader) (*Report, error) {
	a := NewAggregator()
	bad, err := flows.ReadLog(r, func(_ int, rec flows.Record) error {
		a.Add(rec)
		return nil
	})
	for _, e := range bad {
		a.AddMalformed(e)
	}
	if err != nil {
		return nil, err
	}

	return a.Report(), nil
}

// name returns the info of a DNS name, creating it.
func (a *Aggregator) name(n string) *nameInfo {
	ni := a.names[n]
	if ni == nil {
		ni = &nameInfo{answerIPs: set{}, matched: set{}}
		a.names[n] = ni
	}

	return ni
}

// learn records that name n resolved to ip (ip may be empty).
func (a *Aggregator) learn(n, ip string) {
	if n == "" {
		return
	}
	ni := a.name(n)
	if ip == "" {
		return
	}
	ni.answerIPs.add(ip)
	if a.ipNames[ip] == nil {
		a.ipNames[ip] = set{}
	}
	a.ipNames[ip].add(n)
}

func (a *Aggregator) addQuery(rec flows.Record) {
	if q := rec.Str("qname"); q != "" {
		a.dnsNames.add(q, 1)
		a.name(q).queries++
	}
}

func (a *Aggregator) addAnswer(rec flows.Record) {
	a.dnsModes.add(orDefault(rec.Str("mode"), "unknown"), 1)
	q := rec.Str("qname")
	for _, ip := range rec.StrSlice("answer_ips") {
		a.learn(q, ip)
	}
}

func (a *Aggregator) addAttempt(rec flows.Record) {
	a.connects.Attempts++
	if rec.Bool("via_proxy") {
		a.connects.Proxied++
	} else {
		a.connects.Direct++
	}
	a.target(rec).Connections++
}

func (a *Aggregator) addResult(rec flows.Record) {
	a.connects.Results++
	if rec.Str("status") == flows.StatusOK {
		a.connects.OK++
		return
	}

	a.connects.Errors++
	a.connectErrors.add(orDefault(rec.Str("error"), orDefault(rec.Str("status"), "unknown")), 1)
	a.target(rec).Errors++
}

func (a *Aggregator) addViolation(rec flows.Record) {
	n := int(max(1, min(rec.Uint("count"), 1<<31)))
	a.violations += n
	a.byReason.add(orDefault(rec.Str("reason_code"), "unknown"), n)
	a.byControl.add(orDefault(rec.Str("control"), "unknown"), n)
	a.byDest.add(orDefault(rec.Str("remote"), addrOf(rec)), n)
	if c := rec.Str("matched_cidr"); c != "" {
		a.byCIDR.add(c, n)
	}
	if d := rec.Str("matched_domain"); d != "" {
		a.byDomain.add(d, n)
		a.matchDomain(rec, d)
	}
	if rec.Str("protocol") != "dns" {
		a.target(rec).Violations += n
	}
}

// matchDomain attaches a matched domain rule to the names of a violation:
// those that the rule covers, or all of them when it covers none.
func (a *Aggregator) matchDomain(rec flows.Record, d string) {
	assoc := set{}
	for _, n := range rec.StrSlice("names") {
		assoc.add(n)
	}
	for n := range a.ipNames[rec.Str("remote_ip")] {
		assoc.add(n)
	}
	if rec.Str("remote_ip") == "" && rec.Str("remote") != "" {
		assoc.add(rec.Str("remote"))
	}

	covered := assoc.filter(func(n string) bool { return coveredBy(n, d) })
	if len(covered) == 0 {
		covered = assoc
	}
	for n := range covered {
		a.name(n).matched.add(d)
	}
}

func (a *Aggregator) addFlowEnd(rec flows.Record) {
	a.totals.Flows++
	a.totals.BytesIn += rec.Uint("bytes_in")
	a.totals.BytesOut += rec.Uint("bytes_out")
	a.totals.PacketsIn += rec.Uint("packets_in")
	a.totals.PacketsOut += rec.Uint("packets_out")
	if rec.Bool("open_at_exit") {
		a.totals.OpenAtExit++
	}

	t := a.target(rec)
	t.Flows++
	t.BytesIn += rec.Uint("bytes_in")
	t.BytesOut += rec.Uint("bytes_out")
}

func (a *Aggregator) addRun(rec flows.Record) {
	if a.run == nil {
		a.run = &RunInfo{}
	}
	if rec.Event() == flows.EventRunStart {
		a.run.Backend = rec.Str("backend")
		a.run.Command = rec.StrSlice("command")
		a.run.Controls = rec.StrSlice("controls")
		return
	}

	code, ok := rec.IntOK("exit_code")
	if ok {
		c := int(code)
		a.run.ExitCode = &c
	}
	a.run.Signal = rec.Str("signal")
	a.run.DurationMs = rec.Int("duration_ms")
}

// target returns the destination of rec, creating it.
func (a *Aggregator) target(rec flows.Record) *target {
	proto := orDefault(rec.Str("protocol"), "unknown")
	addr := addrOf(rec)
	if rec.Event() == flows.EventPolicyViolation && rec.Str("remote") != "" {
		addr = rec.Str("remote")
	}
	key := proto + " " + addr

	t := a.targets[key]
	if t == nil {
		t = &target{Target: Target{Protocol: proto, Address: addr, IP: ipOf(rec, addr)},
			names: set{}}
		if p, ok := rec.IntOK("remote_port"); ok {
			t.Port = int(p)
		}
		a.targets[key] = t
	}
	for _, n := range rec.StrSlice("names") {
		t.names.add(n)
	}

	return t
}

// addrOf returns a record's destination as "ip:port" (or the bare IP when
// there is no port), preferring remote_addr.
func addrOf(rec flows.Record) string {
	if s := rec.Str("remote_addr"); s != "" {
		return s
	}
	ip := rec.Str("remote_ip")
	if ip == "" {
		return orDefault(rec.Str("remote"), "unknown")
	}
	if p, ok := rec.IntOK("remote_port"); ok {
		if a, err := netip.ParseAddr(ip); err == nil && a.Is6() && !a.Is4In6() {
			return "[" + ip + "]:" + strconv.FormatInt(p, 10)
		}
		return ip + ":" + strconv.FormatInt(p, 10)
	}

	return ip
}

// ipOf returns the destination IP of a record: remote_ip, or the address
// part of addr.
func ipOf(rec flows.Record, addr string) string {
	if ip := rec.Str("remote_ip"); ip != "" {
		return ip
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().String()
	}
	if ip, err := netip.ParseAddr(addr); err == nil {
		return ip.String()
	}

	return ""
}

// coveredBy reports whether name n is domain d or below it.
func coveredBy(n, d string) bool {
	return n == d || (len(n) > len(d) && n[len(n)-len(d)-1] == '.' && n[len(n)-len(d):] == d)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}

	return s
}

// counter counts occurrences per key.
type counter map[string]int

func (c counter) add(k string, n int) { c[k] += n }

// ranked returns the counts sorted by count, highest first, then by key.
func (c counter) ranked() []Ranked {
	out := make([]Ranked, 0, len(c))
	for k, n := range c {
		out = append(out, Ranked{Key: k, Count: n})
	}
	sortRanked(out)

	return out
}

func sortRanked(r []Ranked) {
	sort.Slice(r, func(i, j int) bool {
		if r[i].Count != r[j].Count {
			return r[i].Count > r[j].Count
		}
		return r[i].Key < r[j].Key
	})
}

// set is a set of strings.
type set map[string]struct{}

func (s set) add(k string) { s[k] = struct{}{} }

func (s set) sorted() []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	sort.Strings(out)

	return out
}

func (s set) filter(keep func(string) bool) set {
	out := set{}
	for k := range s {
		if keep(k) {
			out.add(k)
		}
	}

	return out
}
