package report

import (
	"sort"
	"strconv"
	"strings"

	"github.com/childflow/childflow/flows"
)

// topTargets is how many destinations TopByBytes and TopByConnections hold.
const topTargets = 10

// Ranked is a key and how often it occurred. Ranked lists are sorted by count,
// highest first, then by key.
type Ranked struct {
	Key   string `json:"key"`
	Count int    `json:"count"`
}

// Report is what a flow log shows. Lists are never nil, so the JSON form has
// [] rather than null, and every list has a defined order: the JSON of the
// same records is the same bytes.
type Report struct {
	// Run is set when the log has run_start or run_end lines.
	Run *RunInfo `json:"run,omitempty"`

	Events      int      `json:"events"`
	EventCounts []Ranked `json:"event_counts"`
	Protocols   []Ranked `json:"protocols"`

	// DNSNames counts the queried names; DNSAnswerModes the answers' modes.
	DNSNames       []Ranked      `json:"dns_names"`
	DNSAnswerModes []Ranked      `json:"dns_answer_modes"`
	Correlations   []Correlation `json:"correlations"`

	Connects      ConnectStats `json:"connects"`
	ConnectErrors []Ranked     `json:"connect_errors"`

	// Violations counts attempts: a line with count N counts N times.
	Violations              int      `json:"violations"`
	ViolationsByReason      []Ranked `json:"violations_by_reason"`
	ViolationsByControl     []Ranked `json:"violations_by_control"`
	ViolationsByDestination []Ranked `json:"violations_by_destination"`
	MatchedDomains          []Ranked `json:"matched_domains"`
	MatchedCIDRs            []Ranked `json:"matched_cidrs"`

	RuntimeFailures []RuntimeFailure `json:"runtime_failures"`
	// Loss sums the counts of loss lines per source (events, packets,
	// capture).
	Loss []Ranked `json:"loss"`

	Flows            FlowTotals `json:"flows"`
	TopByBytes       []Target   `json:"top_by_bytes"`
	TopByConnections []Target   `json:"top_by_connections"`
	// Targets lists every destination, ordered like TopByConnections.
	Targets []Target `json:"targets"`

	// MalformedLines counts the lines that could not be read; Malformed
	// lists the first of them.
	MalformedLines int               `json:"malformed_lines"`
	Malformed      []flows.LineError `json:"malformed"`
}

// RunInfo is what run_start and run_end lines say about the run.
type RunInfo struct {
	Backend    string   `json:"backend,omitempty"`
	Command    []string `json:"command,omitempty"`
	Controls   []string `json:"controls,omitempty"`
	ExitCode   *int     `json:"exit_code,omitempty"`
	Signal     string   `json:"signal,omitempty"`
	DurationMs int64    `json:"duration_ms,omitempty"`
}

// describe returns the run in one line: backend, command, outcome.
func (ri *RunInfo) describe() string {
	parts := []string{orDefault(ri.Backend, "unknown backend"), shellJoin(ri.Command)}
	if ri.ExitCode != nil {
		parts = append(parts, "exit code "+strconv.Itoa(*ri.ExitCode))
	}
	if ri.Signal != "" {
		parts = append(parts, ri.Signal)
	}
	if ri.DurationMs > 0 {
		parts = append(parts, strconv.FormatInt(ri.DurationMs, 10)+" ms")
	}

	return strings.Join(parts, ", ")
}

// Correlation follows one DNS name: how often it was asked, what it resolved
// to, which connects went to those addresses, and which domain rules matched
// it in policy violations.
type Correlation struct {
	Name           string   `json:"name"`
	Queries        int      `json:"queries"`
	AnswerIPs      []string `json:"answer_ips"`
	Connects       []Ranked `json:"connects"`
	MatchedDomains []string `json:"matched_domains"`
}

// ConnectStats counts connect attempts (direct or through the proxy) and
// their results.
type ConnectStats struct {
	Attempts int `json:"attempts"`
	Proxied  int `json:"proxied"`
	Direct   int `json:"direct"`
	Results  int `json:"results"`
	OK       int `json:"ok"`
	Errors   int `json:"errors"`
}

// FlowTotals sums the flow_end lines.
type FlowTotals struct {
	Flows      int    `json:"flows"`
	BytesIn    uint64 `json:"bytes_in"`
	BytesOut   uint64 `json:"bytes_out"`
	PacketsIn  uint64 `json:"packets_in"`
	PacketsOut uint64 `json:"packets_out"`
	OpenAtExit int    `json:"open_at_exit"`
}

// RuntimeFailure is one runtime_failure line.
type RuntimeFailure struct {
	Phase      string `json:"phase"`
	ReasonCode string `json:"reason_code"`
	Detail     string `json:"detail"`
}

// Target is one destination of the command (protocol and address) with the
// names that resolved to it and what happened there.
type Target struct {
	Protocol    string   `json:"protocol"`
	Address     string   `json:"address"`
	IP          string   `json:"ip,omitempty"`
	Port        int      `json:"port,omitempty"`
	Names       []string `json:"names"`
	Connections int      `json:"connections"`
	Errors      int      `json:"errors"`
	Violations  int      `json:"violations"`
	Flows       int      `json:"flows"`
	BytesIn     uint64   `json:"bytes_in"`
	BytesOut    uint64   `json:"bytes_out"`
}

// Bytes returns the bytes sent and received.
func (t Target) Bytes() uint64 { return t.BytesIn + t.BytesOut }

// Report returns the report of the records added so far. The Aggregator
// stays usable; the Report shares no memory with it.
func (a *Aggregator) Report() *Report {
	a.mu.Lock()
	defer a.mu.Unlock()

	r := &Report{
		EventCounts: a.events.ranked(), Protocols: a.protocols.ranked(),
		DNSNames: a.dnsNames.ranked(), DNSAnswerModes: a.dnsModes.ranked(),
		Connects: a.connects, ConnectErrors: a.connectErrors.ranked(),
		Violations: a.violations, ViolationsByReason: a.byReason.ranked(),
		ViolationsByControl: a.byControl.ranked(), ViolationsByDestination: a.byDest.ranked(),
		MatchedDomains: a.byDomain.ranked(), MatchedCIDRs: a.byCIDR.ranked(),
		RuntimeFailures: append([]RuntimeFailure{}, a.failures...), Loss: a.loss.ranked(),
		Flows: a.totals, MalformedLines: a.malformedCount,
		Malformed: append([]flows.LineError{}, a.malformed...),
	}
	for _, n := range a.events {
		r.Events += n
	}
	r.Run = a.runInfo()
	r.Targets = a.targetList()
	r.TopByConnections = topBy(r.Targets, func(t Target) uint64 { return uint64(t.Connections) })
	r.TopByBytes = topBy(r.Targets, Target.Bytes)
	r.Correlations = a.correlations(r.Targets)

	return r
}

func (a *Aggregator) runInfo() *RunInfo {
	if a.run == nil {
		return nil
	}
	ri := *a.run
	ri.Command = append([]string(nil), ri.Command...)
	ri.Controls = append([]string(nil), ri.Controls...)

	return &ri
}

// targetList returns every destination with its names, sorted by
// connections, bytes, then protocol and address.
func (a *Aggregator) targetList() []Target {
	out := make([]Target, 0, len(a.targets))
	for _, t := range a.targets {
		names := set{}
		for n := range t.names {
			names.add(n)
		}
		for n := range a.ipNames[t.IP] {
			names.add(n)
		}
		tt := t.Target
		tt.Names = names.sorted()
		out = append(out, tt)
	}
	sort.Slice(out, func(i, j int) bool { return targetLess(out[i], out[j]) })

	return out
}

func targetLess(x, y Target) bool {
	switch {
	case x.Connections != y.Connections:
		return x.Connections > y.Connections
	case x.Bytes() != y.Bytes():
		return x.Bytes() > y.Bytes()
	case x.Address != y.Address:
		return x.Address < y.Address
	}

	return x.Protocol < y.Protocol
}

// topBy returns up to topTargets destinations with a non-zero key, highest
// first; ties keep the order of ts.
func topBy(ts []Target, key func(Target) uint64) []Target {
	out := make([]Target, 0, topTargets)
	for _, t := range ts {
		if key(t) > 0 {
			out = append(out, t)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return key(out[i]) > key(out[j]) })

	return out[:min(len(out), topTargets)]
}

// correlations follows every DNS name, the most asked first.
func (a *Aggregator) correlations(targets []Target) []Correlation {
	out := make([]Correlation, 0, len(a.names))
	for n, ni := range a.names {
		c := Correlation{Name: n, Queries: ni.queries, AnswerIPs: ni.answerIPs.sorted(),
			MatchedDomains: ni.matched.sorted(), Connects: []Ranked{}}
		for _, t := range targets {
			if t.Connections > 0 && contains(t.Names, n) {
				c.Connects = append(c.Connects, Ranked{Key: t.Protocol + " " + t.Address,
					Count: t.Connections})
			}
		}
		sortRanked(c.Connects)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Queries != out[j].Queries {
			return out[i].Queries > out[j].Queries
		}
		return out[i].Name < out[j].Name
	})

	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}

	return false
}
