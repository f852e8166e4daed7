// Package flows is the event model of childflow: the typed events that the
// backends, the DNS forwarder and the proxy relay produce, the JSON Lines flow
// log that stores them (schema_version 1, the contract shared with childflow
// 0.8), and the sinks that fan events out to the log, the summary and the live
// view.
//
// Field names are a contract: consumers ignore unknown fields, so adding a
// field is fine, but renaming or redefining one needs a new schema version.
// Keys whose value can be absent in the contract (qname, remote_port, error)
// are pointers so that they are written as JSON null rather than left out.
package flows

import "time"

// SchemaVersion is the flow-log schema written by this package.
const SchemaVersion = 1

// Event names of the flow-log contract.
const (
	EventDNSQuery        = "dns_query"
	EventDNSAnswer       = "dns_answer"
	EventConnectAttempt  = "connect_attempt"
	EventConnectResult   = "connect_result"
	EventPolicyViolation = "policy_violation"
	EventFlowEnd         = "flow_end"
	EventRuntimeFailure  = "runtime_failure"
	EventLoss            = "loss"
	EventRunStart        = "run_start"
	EventRunEnd          = "run_end"
)

// Event is implemented by every event type. Name returns the contract's event
// name; header gives the writer access to the common fields.
type Event interface {
	Name() string
	header() *Header
}

// Header holds the fields every flow-log line carries. Writers fill
// SchemaVersion, Event and (when zero) TsMs.
type Header struct {
	SchemaVersion int    `json:"schema_version"`
	TsMs          int64  `json:"ts_ms"`
	Event         string `json:"event"`
}

func (h *Header) header() *Header { return h }

// Stamp sets the timestamp of an event to t.
func Stamp(ev Event, t time.Time) { ev.header().TsMs = t.UnixMilli() }

// Proc identifies the process behind an event: the one that created or last
// used the socket. Zero values mean unknown and are left out.
type Proc struct {
	Pid  uint32 `json:"pid,omitempty"`
	Comm string `json:"comm,omitempty"`
}

// Remote is a destination in the contract's form: "ip:port" (IPv6 bracketed),
// the bare IP and the port.
type Remote struct {
	Protocol   string `json:"protocol"`
	RemoteAddr string `json:"remote_addr"`
	RemoteIP   string `json:"remote_ip"`
	RemotePort int    `json:"remote_port"`
}

// Names are the DNS names this run saw resolve to a remote address, and the
// server name the program sent in its first bytes (TLS SNI or HTTP Host).
type Names struct {
	Names      []string `json:"names,omitempty"`
	ServerName string   `json:"server_name,omitempty"`
}

// ConnectAttempt is a TCP connect or a connected-UDP connect of the tree, or
// the first datagram of an unconnected UDP socket to a destination.
type ConnectAttempt struct {
	Header
	Remote
	Proc
	Names
	ViaProxy bool   `json:"via_proxy"`
	FlowID   uint64 `json:"flow_id,omitempty"`
	Backend  string `json:"backend,omitempty"`
}

// Name implements Event.
func (*ConnectAttempt) Name() string { return EventConnectAttempt }

// Connect result statuses.
const (
	StatusOK    = "ok"
	StatusError = "error"
)

// ConnectResult is the outcome of a connect: ok, or error with a reason such
// as "connection refused", "timed out", "network unreachable", "denied by
// policy" or the proxy's answer.
type ConnectResult struct {
	Header
	Remote
	Proc
	Names
	ViaProxy bool    `json:"via_proxy"`
	Status   string  `json:"status"`
	Error    *string `json:"error"`
	FlowID   uint64  `json:"flow_id,omitempty"`
	// Proxy is the proxy used, without credentials, when ViaProxy is set.
	Proxy string `json:"proxy,omitempty"`
}

// Name implements Event.
func (*ConnectResult) Name() string { return EventConnectResult }

// FlowEnd closes a flow (a socket) with its counters. Bytes are payload bytes
// (TCP stream bytes, UDP datagram payloads); packets count segments as seen
// on the wire side of segmentation offload.
type FlowEnd struct {
	Header
	Remote
	Proc
	Names
	FlowID   uint64 `json:"flow_id,omitempty"`
	ViaProxy bool   `json:"via_proxy,omitempty"`
	// Direction is "in" for a connection the tree accepted; "" (left out)
	// for one it opened.
	Direction  string `json:"direction,omitempty"`
	BytesOut   uint64 `json:"bytes_out"`
	BytesIn    uint64 `json:"bytes_in"`
	PacketsOut uint64 `json:"packets_out"`
	PacketsIn  uint64 `json:"packets_in"`
	DurationMs int64  `json:"duration_ms"`
	// OpenAtExit is set when the flow was still open when the run ended.
	OpenAtExit bool `json:"open_at_exit,omitempty"`
}

// Name implements Event.
func (*FlowEnd) Name() string { return EventFlowEnd }

// Policy actions.
const (
	ActionDeny  = "deny"
	ActionAudit = "audit"
)

// PolicyViolation is one denied (or, in audit mode, one would-be denied)
// attempt. Count is 1 for a single attempt; a line that sums up identical
// repeated attempts carries their number and Repeated.
type PolicyViolation struct {
	Header
	Proc
	Protocol      string   `json:"protocol"`
	RemoteStr     string   `json:"remote"`
	RemoteIP      *string  `json:"remote_ip"`
	RemotePort    *int     `json:"remote_port"`
	Action        string   `json:"action"`
	ReasonCode    string   `json:"reason_code"`
	Control       string   `json:"control"`
	MatchedCIDR   *string  `json:"matched_cidr"`
	MatchedDomain *string  `json:"matched_domain"`
	Reason        string   `json:"reason"`
	Names         []string `json:"names,omitempty"`
	Count         uint64   `json:"count,omitempty"`
	Repeated      bool     `json:"repeated,omitempty"`
}

// Name implements Event.
func (*PolicyViolation) Name() string { return EventPolicyViolation }

// DNSQuery is a query of the tree as the forwarder received it. Server is the
// server the program asked; Upstream the one the forwarder used.
type DNSQuery struct {
	Header
	Proc
	Protocol   string  `json:"protocol"`
	Server     string  `json:"server"`
	ServerIP   string  `json:"server_ip"`
	ServerPort int     `json:"server_port"`
	QName      *string `json:"qname"`
	QType      string  `json:"qtype"`
	ID         uint16  `json:"id,omitempty"`
	Upstream   string  `json:"upstream,omitempty"`
}

// Name implements Event.
func (*DNSQuery) Name() string { return EventDNSQuery }

// DNS answer modes.
const (
	ModeRelayed        = "relayed"
	ModeSyntheticEmpty = "synthetic_empty"
	ModeHostsFile      = "hosts_file"
	ModeFailed         = "failed"
)

// DNSAnswer is the answer returned to the program.
type DNSAnswer struct {
	DNSQuery
	Mode      string   `json:"mode"`
	Bytes     int      `json:"bytes"`
	AnswerIPs []string `json:"answer_ips"`
	RCode     string   `json:"rcode,omitempty"`
	CNAMEs    []string `json:"cnames,omitempty"`
	// Records lists answer records of other types as "TYPE value".
	Records   []string `json:"records,omitempty"`
	TTL       uint32   `json:"ttl,omitempty"`
	LatencyUs int64    `json:"latency_us,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// Name implements Event.
func (*DNSAnswer) Name() string { return EventDNSAnswer }

// Runtime failure phases.
const (
	PhaseCLIValidate    = "cli_validate"
	PhasePreflight      = "preflight"
	PhaseRun            = "run"
	PhaseChildBootstrap = "child_bootstrap"
)

// RuntimeFailure records that the run itself failed (not the command).
type RuntimeFailure struct {
	Header
	Phase      string `json:"phase"`
	ReasonCode string `json:"reason_code"`
	Detail     string `json:"detail"`
}

// Name implements Event.
func (*RuntimeFailure) Name() string { return EventRuntimeFailure }

// Loss reports events or packets that could not be delivered to user space.
// It is written at the end of a run whenever a count is not zero.
type Loss struct {
	Header
	Source string `json:"source"` // "events", "packets", "capture"
	Count  uint64 `json:"count"`
	Detail string `json:"detail,omitempty"`
}

// Name implements Event.
func (*Loss) Name() string { return EventLoss }

// RunStart opens a flow log with what was run and how.
type RunStart struct {
	Header
	Backend  string   `json:"backend"`
	Command  []string `json:"command"`
	Controls []string `json:"controls,omitempty"`
	Version  string   `json:"childflow_version,omitempty"`
}

// Name implements Event.
func (*RunStart) Name() string { return EventRunStart }

// RunEnd closes a flow log with the command's outcome.
type RunEnd struct {
	Header
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	DurationMs int64  `json:"duration_ms"`
}

// Name implements Event.
func (*RunEnd) Name() string { return EventRunEnd }
