package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/childflow/childflow/flows"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func strp(s string) *string { return &s }
func intp(i int) *int       { return &i }

const t0 = 1700000000000

// scenario returns the events of testdata/old.jsonl as the current tool
// emits them, with the fields the older tool did not write.
func scenario() []flows.Event {
	srv := flows.DNSQuery{Protocol: "udp", Server: "192.0.2.53:53", ServerIP: "192.0.2.53",
		ServerPort: 53, Proc: flows.Proc{Pid: 100, Comm: "curl"}, Upstream: "127.0.0.53:53"}
	q := func(ts int64, name, qtype string) flows.DNSQuery {
		d := srv
		d.Header.TsMs, d.QName, d.QType = t0+ts, strp(name), qtype
		return d
	}
	ans := func(ts int64, name, qtype, mode string, n int, ips ...string) *flows.DNSAnswer {
		return &flows.DNSAnswer{DNSQuery: q(ts, name, qtype), Mode: mode, Bytes: n,
			AnswerIPs: append([]string{}, ips...), TTL: 60, LatencyUs: 900}
	}
	web := flows.Remote{Protocol: "tcp", RemoteAddr: "93.184.216.34:443",
		RemoteIP: "93.184.216.34", RemotePort: 443}
	api := flows.Remote{Protocol: "tcp", RemoteAddr: "[2001:db8::10]:443",
		RemoteIP: "2001:db8::10", RemotePort: 443}
	lo := flows.Remote{Protocol: "tcp", RemoteAddr: "127.0.0.1:9", RemoteIP: "127.0.0.1",
		RemotePort: 9}
	ntp := flows.Remote{Protocol: "udp", RemoteAddr: "192.0.2.1:123", RemoteIP: "192.0.2.1",
		RemotePort: 123}
	p := flows.Proc{Pid: 100, Comm: "curl"}
	webN := flows.Names{Names: []string{"example.com"}, ServerName: "example.com"}
	apiN := flows.Names{Names: []string{"api.example.com"}}
	h := func(ts int64) flows.Header { return flows.Header{TsMs: t0 + ts} }
	viol := func(ts int64, proto, remote string, ip *string, port *int, code, control string,
		cidr, domain *string, reason string) *flows.PolicyViolation {
		return &flows.PolicyViolation{Header: h(ts), Proc: p, Protocol: proto, RemoteStr: remote,
			RemoteIP: ip, RemotePort: port, Action: flows.ActionDeny, ReasonCode: code,
			Control: control, MatchedCIDR: cidr, MatchedDomain: domain, Reason: reason}
	}
	d0 := q(0, "example.com", "A")
	d1 := q(40, "api.example.com", "AAAA")
	d2 := q(100, "tracker.bad.example", "A")

	return []flows.Event{
		&d0,
		ans(10, "example.com", "A", flows.ModeRelayed, 56, "93.184.216.34"),
		&flows.ConnectAttempt{Header: h(20), Remote: web, Proc: p, Names: webN, FlowID: 1},
		&flows.ConnectResult{Header: h(30), Remote: web, Proc: p, Names: webN,
			Status: flows.StatusOK, FlowID: 1},
		&d1,
		ans(50, "api.example.com", "AAAA", flows.ModeRelayed, 68, "2001:db8::10"),
		&flows.ConnectAttempt{Header: h(60), Remote: api, Proc: p, Names: apiN, ViaProxy: true,
			FlowID: 2},
		&flows.ConnectResult{Header: h(70), Remote: api, Proc: p, Names: apiN, ViaProxy: true,
			Status: flows.StatusOK, FlowID: 2, Proxy: "socks5://127.0.0.1:1080"},
		&flows.ConnectAttempt{Header: h(75), Remote: web, Proc: p, Names: webN, FlowID: 3},
		&flows.ConnectResult{Header: h(78), Remote: web, Proc: p, Names: webN,
			Status: flows.StatusOK, FlowID: 3},
		&flows.ConnectAttempt{Header: h(80), Remote: lo, Proc: p, FlowID: 4},
		&flows.ConnectResult{Header: h(90), Remote: lo, Proc: p, Status: flows.StatusError,
			Error: strp("connection refused"), FlowID: 4},
		&flows.ConnectAttempt{Header: h(95), Remote: ntp, Proc: flows.Proc{Pid: 101,
			Comm: "ntpdate"}, FlowID: 5},
		&d2,
		viol(105, "dns", "tracker.bad.example", nil, nil, "deny_domain", "--deny-domain", nil,
			strp("bad.example"), "tracker.bad.example matches --deny-domain bad.example"),
		ans(110, "tracker.bad.example", "A", flows.ModeSyntheticEmpty, 37),
		viol(120, "tcp", "10.0.0.5:22", strp("10.0.0.5"), intp(22), "private",
			"--block-private", strp("10.0.0.0/8"), nil, "10.0.0.5 is a private address"),
		viol(130, "tcp", "169.254.169.254:80", strp("169.254.169.254"), intp(80), "metadata",
			"--block-metadata", strp("169.254.169.254/32"), nil,
			"169.254.169.254 is a cloud metadata endpoint"),
		viol(140, "tcp", "203.0.113.7:443", strp("203.0.113.7"), intp(443), "default_deny",
			"--default-policy", nil, nil, "no allow rule matches 203.0.113.7"),
		viol(145, "icmpv4", "203.0.113.7", strp("203.0.113.7"), nil, "default_deny",
			"--default-policy", nil, nil, "no allow rule matches 203.0.113.7"),
		&flows.FlowEnd{Header: h(150), Remote: web, Proc: p, Names: webN, FlowID: 1,
			BytesOut: 517, BytesIn: 4096, PacketsOut: 6, PacketsIn: 8, DurationMs: 130},
		&flows.FlowEnd{Header: h(160), Remote: api, Proc: p, Names: apiN, FlowID: 2,
			ViaProxy: true, BytesOut: 300, BytesIn: 120000, PacketsOut: 9, PacketsIn: 90,
			DurationMs: 100},
		&flows.FlowEnd{Header: h(165), Remote: web, Proc: p, Names: webN, FlowID: 3,
			BytesOut: 1, BytesIn: 2, PacketsOut: 1, PacketsIn: 1, DurationMs: 90,
			OpenAtExit: true},
		&flows.RuntimeFailure{Header: h(170), Phase: flows.PhaseRun,
			ReasonCode: "capture_write_failed", Detail: "capture writer stopped: disk full"},
	}
}

// fullScenario adds the events only the current tool writes.
func fullScenario() []flows.Event {
	evs := []flows.Event{&flows.RunStart{Header: flows.Header{TsMs: t0 - 5}, Backend: "ebpf",
		Command:  []string{"sh", "-c", "curl https://example.com"},
		Controls: []string{"--block-private", "--block-metadata", "--default-policy deny"}}}
	evs = append(evs, scenario()...)

	return append(evs,
		&flows.Loss{Header: flows.Header{TsMs: t0 + 190}, Source: "packets", Count: 12,
			Detail: "packet ring buffer full"},
		&flows.Loss{Header: flows.Header{TsMs: t0 + 191}, Source: "packets", Count: 3},
		&flows.RunEnd{Header: flows.Header{TsMs: t0 + 200}, ExitCode: 0, DurationMs: 205})
}

func writeLog(t *testing.T, evs []flows.Event) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := flows.NewWriter(&buf)
	for _, ev := range evs {
		w.Emit(ev)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("write log: %v", err)
	}

	return buf.Bytes()
}

func readReport(t *testing.T, data []byte) *Report {
	t.Helper()
	rep, err := ReadLog(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("read log: %v", err)
	}

	return rep
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatalf("update %s: %v", path, err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden (run with -update after checking):\n--- got\n%s\n--- want\n%s",
			name, got, want)
	}
}

// TestOldLogIsOldStyle checks the fixture: every line has sorted keys and
// only the fields of the older tool's contract.
func TestOldLogIsOldStyle(t *testing.T) {
	allowed := map[string]bool{}
	for _, k := range strings.Fields(`schema_version ts_ms event protocol server server_ip
		server_port qname qtype mode bytes answer_ips remote_addr remote_ip remote_port
		via_proxy status error remote action reason_code control matched_cidr matched_domain
		reason phase detail whatever`) {
		allowed[k] = true
	}
	data, err := os.ReadFile("testdata/old.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		keys := topLevelKeys(t, line)
		if !sort.StringsAreSorted(keys) {
			t.Errorf("line %d: keys not sorted: %v", i+1, keys)
		}
		for _, k := range keys {
			if !allowed[k] {
				t.Errorf("line %d: key %q is not in the older tool's contract", i+1, k)
			}
		}
	}
}

func topLevelKeys(t *testing.T, line string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}

	return keys
}

// countsOnly clears what the older tool's log cannot hold (bytes, packets,
// open flows), so that the rest can be compared.
func countsOnly(r *Report) *Report {
	c := *r
	c.Flows = FlowTotals{Flows: r.Flows.Flows}
	c.TopByBytes = nil
	for _, l := range []*[]Target{&c.Targets, &c.TopByConnections} {
		ts := append([]Target(nil), (*l)...)
		for i := range ts {
			ts[i].BytesIn, ts[i].BytesOut = 0, 0
		}
		sort.Slice(ts, func(i, j int) bool { return targetLess(ts[i], ts[j]) })
		*l = ts
	}

	return &c
}

func TestOldAndNewLogsGiveSameCounts(t *testing.T) {
	oldData, err := os.ReadFile("testdata/old.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	old := readReport(t, oldData)
	// A newer tool's event, unknown to this one, as the old log has.
	future := `{"schema_version":1,"ts_ms":1700000000180,"event":"future_event","x":[1]}` + "\n"
	cur := readReport(t, append(writeLog(t, scenario()), future...))

	if got, want := countsOnly(cur), countsOnly(old); !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("new-style report differs from old-style:\n--- new\n%s\n--- old\n%s", g, w)
	}

	checks := []struct {
		name      string
		got, want any
	}{
		{"events", old.Events, 25},
		{"unknown", find(old.EventCounts, UnknownEvent), 1},
		{"attempts", old.Connects.Attempts, 5},
		{"proxied", old.Connects.Proxied, 1},
		{"errors", old.Connects.Errors, 1},
		{"violations", old.Violations, 5},
		{"default_deny", find(old.ViolationsByReason, "default_deny"), 2},
		{"bad.example", find(old.MatchedDomains, "bad.example"), 1},
		{"refused", find(old.ConnectErrors, "connection refused"), 1},
		{"flows", old.Flows.Flows, 3},
		{"tcp", find(old.Protocols, "tcp"), 14},
		{"top target", old.TopByConnections[0].Address, "93.184.216.34:443"},
		{"top names", strings.Join(old.TopByConnections[0].Names, ","), "example.com"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func find(rs []Ranked, key string) int {
	for _, r := range rs {
		if r.Key == key {
			return r.Count
		}
	}

	return -1
}

func TestLiveEqualsFile(t *testing.T) {
	evs := fullScenario()
	fromFile := readReport(t, writeLog(t, evs))

	a := NewAggregator()
	var wg sync.WaitGroup
	for _, ev := range evs {
		wg.Add(1)
		go func() { defer wg.Done(); a.Emit(ev) }()
	}
	wg.Wait()

	var live, file bytes.Buffer
	if err := a.Report().Write(&live, JSON); err != nil {
		t.Fatal(err)
	}
	if err := fromFile.Write(&file, JSON); err != nil {
		t.Fatal(err)
	}
	if live.String() != file.String() {
		t.Fatalf("live report differs from file report:\n--- live\n%s\n--- file\n%s", &live, &file)
	}
}

func TestCorrelations(t *testing.T) {
	rep := readReport(t, writeLog(t, scenario()))
	got := map[string]Correlation{}
	for _, c := range rep.Correlations {
		got[c.Name] = c
	}
	tests := []struct {
		name, ips, connects, matched string
	}{
		{"example.com", "93.184.216.34", "tcp 93.184.216.34:443 x2", ""},
		{"api.example.com", "2001:db8::10", "tcp [2001:db8::10]:443 x1", ""},
		{"tracker.bad.example", "", "", "bad.example"},
	}
	for _, tt := range tests {
		c, ok := got[tt.name]
		if !ok {
			t.Errorf("%s: no correlation", tt.name)
			continue
		}
		if g := strings.Join(c.AnswerIPs, ","); g != tt.ips {
			t.Errorf("%s answer ips: got %q, want %q", tt.name, g, tt.ips)
		}
		if g := rankedInline(c.Connects); g != tt.connects {
			t.Errorf("%s connects: got %q, want %q", tt.name, g, tt.connects)
		}
		if g := strings.Join(c.MatchedDomains, ","); g != tt.matched {
			t.Errorf("%s matched: got %q, want %q", tt.name, g, tt.matched)
		}
	}
}

func TestMalformedLinesReported(t *testing.T) {
	log := "{\"event\":\"dns_query\",\"qname\":\"a.example\"}\n{oops\n\n[1]\n{\"event\":\"x\"}\n"
	rep := readReport(t, []byte(log))
	if rep.MalformedLines != 2 || len(rep.Malformed) != 2 {
		t.Fatalf("got %d malformed (%v), want 2", rep.MalformedLines, rep.Malformed)
	}
	if rep.Malformed[0].Line != 2 || rep.Malformed[1].Line != 4 {
		t.Errorf("got malformed lines %d and %d, want 2 and 4", rep.Malformed[0].Line,
			rep.Malformed[1].Line)
	}
	if rep.Events != 2 || find(rep.EventCounts, UnknownEvent) != 1 {
		t.Errorf("got %d events %v, want 2 with one unknown", rep.Events, rep.EventCounts)
	}
}

func TestEmptyReportJSONHasNoNulls(t *testing.T) {
	var buf bytes.Buffer
	if err := NewAggregator().Report().Write(&buf, JSON); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "null") {
		t.Errorf("empty report JSON has null:\n%s", &buf)
	}
}

// goldenInput is the new-style full log plus one malformed line.
func goldenInput(t *testing.T) []byte {
	t.Helper()
	data := writeLog(t, fullScenario())
	golden(t, "new.jsonl", data)

	return append(data, "{\"event\": truncated\n"...)
}

func TestReportGolden(t *testing.T) {
	rep := readReport(t, goldenInput(t))
	for _, f := range []Format{Text, Markdown, JSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			if err := rep.Write(&buf, f); err != nil {
				t.Fatal(err)
			}
			golden(t, "report."+string(f)+".golden", buf.Bytes())
		})
	}
}

func TestSummaryGolden(t *testing.T) {
	s := &Summary{
		Backend: "ebpf", Command: []string{"sh", "-c", "curl https://example.com"},
		ExitCode: 0, DurationMs: 1234,
		Controls: []string{"--block-private", "--block-metadata", "--default-policy=deny"},
		Capture:  &CaptureStatus{Paths: []string{"out.pcapng"}, Packets: 140, Lost: 15},
		FlowLog:  &FlowLogStatus{Path: "flows.jsonl", Events: 30},
		Warnings: []string{"15 packets were not captured (ring buffer full)"},
		Report:   readReport(t, goldenInput(t)),
	}
	for _, f := range []Format{Text, Markdown, JSON} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			if err := s.Write(&buf, f); err != nil {
				t.Fatal(err)
			}
			golden(t, "summary."+string(f)+".golden", buf.Bytes())
		})
	}
}

func TestSuggestPolicyGolden(t *testing.T) {
	rep := readReport(t, goldenInput(t))
	golden(t, "suggest-policy.toml.golden", []byte(SuggestPolicy(rep)))
}

func TestParseFormat(t *testing.T) {
	tests := []struct {
		in   string
		want Format
		ok   bool
	}{
		{"text", Text, true}, {"JSON", JSON, true}, {"md", Markdown, true},
		{"markdown", Markdown, true}, {"yaml", "", false},
	}
	for _, tt := range tests {
		got, err := ParseFormat(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParseFormat(%q): got %q, %v, want %q, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzReport(f *testing.F) {
	old, err := os.ReadFile("testdata/old.jsonl")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(old)
	f.Add([]byte(`{"event":"policy_violation","count":18446744073709551615,"remote_ip":"::1"}`))
	f.Add([]byte(`{"event":"dns_answer","qname":"a|b","answer_ips":["1.2.3.4",null]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := ReadLog(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []Format{Text, Markdown, JSON} {
			var buf bytes.Buffer
			if err := rep.Write(&buf, f); err != nil {
				t.Fatalf("write %s: %v", f, err)
			}
			if f == JSON && !json.Valid(buf.Bytes()) {
				t.Fatalf("invalid JSON report:\n%s", &buf)
			}
		}
		_ = SuggestPolicy(rep)
	})
}
