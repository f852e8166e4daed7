package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/internal/testenv"
)

// The policy matrix: every control against every way a program can send, in
// both families, on the eBPF and the rootless backend. Destinations live in
// the server namespace of testenv.TopologyForPolicyTests (or on the client
// namespace's loopback) and childflow runs in the client namespace, so
// nothing can leave the machine; for the rootless backend the client
// namespace is the host side of its netstack, and loopback destinations are
// reached through its gateway (--host-loopback). Each control runs childflow
// once per family; every attempt is a separate process, which makes its
// violation findable by pid and keeps the kernel from summing it with
// another attempt's. How a denial shows differs by backend; the differences
// are in expectation (trace_test.go).

// Attempt kinds of attemptScript, per family. The -mapped kinds use an IPv6
// socket towards the IPv4 destination as ::ffff:a.b.c.d.
var (
	policyKinds4 = []string{
		"tcp", "tcp-mapped", "tfo", "udp-connect", "udp-connect-mapped", "udp-sendto",
		"udp-sendto-mapped", "udp-sendmsg", "udp-sendmmsg", "ping", "ping-connect",
		"raw-icmp", "raw-ip",
	}
	policyKinds6 = []string{
		"tcp", "tfo", "udp-connect", "udp-sendto", "udp-sendmsg", "udp-sendmmsg", "ping",
		"ping-connect", "raw-icmp", "raw-ip",
	}
)

// policyControl is one row of the matrix: flags, the destination they deny
// (or audit) and one they leave alone, per family, and what the violation
// says.
type policyControl struct {
	name        string
	args        []string
	deny, allow [2]netip.Addr // [0] IPv4, [1] IPv6
	matched     [2]*string    // matched_cidr per family, nil for null
	reasonCode  string
	control     string
	audit       bool // violations are logged, nothing is blocked
	rawRefused  bool // raw sockets are refused when created
}

func policyControls(top *testenv.PolicyTopology) []policyControl {
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	pub := [2]netip.Addr{top.Public4, top.Public6}
	priv := [2]netip.Addr{top.Private4, top.Private6}
	s := func(v string) *string { return &v }

	return []policyControl{
		{name: "offline", args: []string{"--offline"}, deny: pub, allow: [2]netip.Addr{lo4, lo6},
			reasonCode: "offline", control: "--offline", rawRefused: true},
		{name: "block-private", args: []string{"--block-private"}, deny: priv, allow: pub,
			matched:    [2]*string{s("10.0.0.0/8"), s("fc00::/7")},
			reasonCode: "private", control: "--block-private"},
		{name: "block-private-loopback", args: []string{"--block-private"},
			deny: [2]netip.Addr{lo4, lo6}, allow: pub,
			matched:    [2]*string{s("127.0.0.0/8"), s("::1/128")},
			reasonCode: "private", control: "--block-private"},
		{name: "block-metadata", args: []string{"--block-metadata"},
			deny: [2]netip.Addr{top.Metadata4, top.Metadata6}, allow: priv,
			matched:    [2]*string{s("169.254.169.254/32"), s("fd00:ec2::254/128")},
			reasonCode: "metadata", control: "--block-metadata"},
		{name: "metadata-before-private", args: []string{"--block-private", "--block-metadata"},
			deny: [2]netip.Addr{top.Metadata4, top.Metadata6}, allow: pub,
			matched:    [2]*string{s("169.254.169.254/32"), s("fd00:ec2::254/128")},
			reasonCode: "metadata", control: "--block-metadata"},
		{name: "deny-cidr",
			args: []string{"--deny-cidr", "203.0.113.0/24", "--deny-cidr", "2001:db8:1::/48"},
			deny: pub, allow: priv, matched: [2]*string{s("203.0.113.0/24"), s("2001:db8:1::/48")},
			reasonCode: "deny_cidr", control: "--deny-cidr"},
		{name: "deny-cidr-bare",
			args: []string{"--deny-cidr", "203.0.113.10", "--deny-cidr", "2001:db8:1::10"},
			deny: pub, allow: priv, matched: [2]*string{s("203.0.113.10/32"), s("2001:db8:1::10/128")},
			reasonCode: "deny_cidr", control: "--deny-cidr"},
		{name: "default-deny", args: []string{"--default-policy", "deny",
			"--allow-cidr", "203.0.113.0/24", "--allow-cidr", "2001:db8:1::/48"},
			deny: priv, allow: pub, reasonCode: "default_deny", control: "--default-policy",
			rawRefused: true},
		{name: "audit", args: []string{"--block-private", "--audit"}, deny: priv, allow: pub,
			matched:    [2]*string{s("10.0.0.0/8"), s("fc00::/7")},
			reasonCode: "private", control: "--block-private", audit: true},
	}
}

// TestPolicyMatrix runs every control against every kind of attempt, in both
// families, each control with a denied and an allowed destination in the
// same run.
func TestPolicyMatrix(t *testing.T) {
	forPolicyBackends(t, func(t *testing.T, b backendCase) {
		pn := newPolicyNet(t, b)
		for _, c := range policyControls(pn.top) {
			t.Run(c.name, func(t *testing.T) {
				for fi, family := range []string{"v4", "v6"} {
					t.Run(family, func(t *testing.T) {
						pn.runControl(t, c, fi)
					})
				}
			})
		}
	})
}

// matrixAttempt is a planned attempt with its role in the row.
type matrixAttempt struct {
	attempt
	denied bool // aimed at the row's denied destination
	// sharers is the number of attempts of the row whose violations have
	// the same protocol and remote as this one's: where violations are
	// matched by destination, they are checked together.
	sharers int
}

// planControl plans every kind of attempt of a family (fi 0 for IPv4, 1 for
// IPv6) towards the row's denied and allowed destinations.
func (pn *policyNet) planControl(t *testing.T, c policyControl, fi int) []matrixAttempt {
	kinds := policyKinds4
	if fi == 1 {
		kinds = policyKinds6
	}

	var planned []matrixAttempt
	for _, kind := range kinds {
		for _, denied := range []bool{true, false} {
			dst, role := c.allow[fi], "allow"
			if denied {
				dst, role = c.deny[fi], "deny"
			}
			a := pn.plan(t, kind+"/"+role, kind, dst)
			planned = append(planned, matrixAttempt{attempt: a, denied: denied, sharers: 1})
		}
	}
	if !pn.e.exactPid {
		pn.countSharers(c, fi, planned)
	}

	return planned
}

// countSharers sets the sharers of each attempt that must log a violation.
func (pn *policyNet) countSharers(c policyControl, fi int, planned []matrixAttempt) {
	key := func(p matrixAttempt) string { return pn.attemptKey(c, fi, p, attemptResult{}) }
	n := map[string]int{}
	for _, p := range planned {
		if p.denied {
			n[key(p)]++
		}
	}
	for i, p := range planned {
		if p.denied {
			planned[i].sharers = n[key(p)]
		}
	}
}

// runControl runs one row in one family and checks every attempt in a
// subtest named after its kind and role.
func (pn *policyNet) runControl(t *testing.T, c policyControl, fi int) {
	planned := pn.planControl(t, c, fi)
	all := make([]attempt, len(planned))
	for i, p := range planned {
		all[i] = p.attempt
	}

	res, results := pn.runAttempts(t, c.args, 0, all...)
	if res.code != 0 {
		t.Errorf("childflow exit %d, want 0; stderr:\n%s", res.code, res.stderr)
	}
	checkNoLoss(t, res)

	// Wait for what must arrive first: then what must not arrive has had
	// the same time to do so.
	expected := map[string]bool{}
	for _, p := range planned {
		if pn.reaches(c, p) {
			expected[p.id] = p.rec.waitSaw(p.token)
		}
	}

	made := map[string]bool{}
	for _, p := range planned {
		r := results[p.id]
		made[pn.attemptKey(c, fi, p, r)] = true
		t.Run(p.id, func(t *testing.T) {
			pn.checkAttempt(t, c, fi, p, r, res, expected)
		})
	}
	for _, v := range res.events("policy_violation", nil) {
		k := fmt.Sprint(num(v, "pid"))
		if !pn.e.exactPid {
			k = str(v, "protocol") + " " + str(v, "remote")
		}
		if !made[k] {
			t.Errorf("violation of no attempt: %v", v)
		}
	}
}

// attemptKey identifies the violations of an attempt: its pid, or its
// protocol and destination where violations are matched by destination.
func (pn *policyNet) attemptKey(c policyControl, fi int, p matrixAttempt, r attemptResult) string {
	if pn.e.exactPid {
		return fmt.Sprint(r.pid)
	}
	w := pn.wantFor(c, fi, p, r)

	return w.protocol + " " + w.remote
}

// reaches reports whether attempt p must reach its server.
func (pn *policyNet) reaches(c policyControl, p matrixAttempt) bool {
	if pn.refusesRaw(c, p) {
		return false
	}

	return !p.denied || c.audit
}

// refusesRaw reports whether p's raw socket is refused when created.
func (pn *policyNet) refusesRaw(c policyControl, p matrixAttempt) bool {
	return c.rawRefused && pn.e.rawRefused && strings.HasPrefix(p.kind, "raw")
}

// checkAttempt checks one attempt of a row: its result, what its server
// saw and its violation records.
func (pn *policyNet) checkAttempt(t *testing.T, c policyControl, fi int, p matrixAttempt,
	r attemptResult, res *result, expected map[string]bool) {
	viols := violationsOf(res, r.pid)
	if !pn.e.exactPid {
		w := pn.wantFor(c, fi, p, r)
		viols = violationsTo(res, w.protocol, w.remote)
	}
	switch {
	case pn.refusesRaw(c, p):
		pn.checkRefusedRaw(t, c, fi, p, r, viols)
	case !pn.reaches(c, p):
		pn.checkDenied(t, p, r)
		pn.checkAttemptViolation(t, c, fi, p, r, viols)
	default:
		checkReached(t, p, r, expected[p.id])
		if p.denied {
			pn.checkAttemptViolation(t, c, fi, p, r, viols) // audited
		} else if len(viols) != 0 {
			t.Errorf("allowed attempt logged %d violations: %v", len(viols), viols)
		}
	}
}

// checkReached checks an attempt that must get through: it succeeded, its
// server saw it, and a ping got its reply.
func checkReached(t *testing.T, p matrixAttempt, r attemptResult, seen bool) {
	if r.errno != 0 {
		t.Errorf("attempt failed: errno %d at %s, want success", r.errno, r.stage)
	}
	if !seen {
		t.Errorf("server did not see the attempt (token %s)", p.token)
	}
	if strings.HasPrefix(p.kind, "ping") && r.reply != "1" {
		t.Errorf("ping reply = %s, want 1", r.reply)
	}
}

// checkDenied checks that a denied attempt failed promptly as the backend
// fails it (or was dropped silently) and that nothing reached the server.
func (pn *policyNet) checkDenied(t *testing.T, p matrixAttempt, r attemptResult) {
	errno, stage := pn.e.deniedOutcome(p.kind, p.dst.Is6())
	switch {
	case errno == 0:
		if r.errno != 0 || r.stage != stage {
			t.Errorf("errno %d at %s; want a silent drop (errno 0, %s)", r.errno, r.stage, stage)
		}
		if strings.HasPrefix(p.kind, "ping") && r.reply != "0" {
			t.Errorf("ping reply = %s, want 0", r.reply)
		}
	default:
		if r.errno != int(errno) {
			t.Errorf("errno %d at %s, want %d (%s)", r.errno, r.stage, errno, unix.ErrnoName(errno))
		}
		if r.stage != stage {
			t.Errorf("failed at %s, want at %s", r.stage, stage)
		}
	}
	if r.ms >= 1000 {
		t.Errorf("the failing %s took %.0f ms, want < 1000", r.stage, r.ms)
	}
	if p.rec.saw(p.token) {
		t.Errorf("server saw the denied attempt (token %s)", p.token)
	}
}

// deniedStage is the step at which a denied attempt of kind must fail:
// connect for the kinds that connect, the first send for the others.
func deniedStage(kind string) string {
	switch kind {
	case "tcp", "tcp-mapped", "udp-connect", "udp-connect-mapped", "ping-connect":
		return "connect"
	}

	return "send"
}

// attemptsOf is how many times the kernel sees an attempt of kind pass a
// policy hook: sendmmsg sends two datagrams.
func attemptsOf(kind string) int64 {
	if kind == "udp-sendmmsg" {
		return 2
	}

	return 1
}

// checkAttemptViolation checks the violation records of one attempt (and
// of the attempts that share its destination, where records are matched by
// destination). A denied attempt stops at its first datagram; an audited one
// goes on, and the kernel sums its repeats into later records.
func (pn *policyNet) checkAttemptViolation(t *testing.T, c policyControl, fi int,
	p matrixAttempt, r attemptResult, viols []map[string]any) {
	wantN := int64(1)
	if c.audit && pn.e.perDatagram {
		wantN = attemptsOf(p.kind)
	}
	wantN *= int64(p.sharers)

	var sum int64
	for _, v := range viols {
		sum += num(v, "count")
	}
	if sum != wantN || (!c.audit && len(viols) != p.sharers) {
		t.Fatalf("got %d violation records with counts summing to %d, want counts summing to %d: %v",
			len(viols), sum, wantN, viols)
	}

	want := pn.wantFor(c, fi, p, r)
	for i, v := range viols {
		want.count = num(v, "count")
		if i < p.sharers {
			want.count = 1
		}
		if !pn.e.exactPid {
			// Attributed or not; when attributed, to the host's pid. The
			// name is read from /proc after the pid, and a process that
			// exits in between keeps its pid without a name.
			want.pid, want.comm = int(num(v, "pid")), ""
			if want.pid != 0 && str(v, "comm") != "" {
				want.comm = "python3"
			}
		}
		checkViolation(t, v, want)
	}
}

// wantFor is the violation an attempt to the row's denied destination must
// log.
func (pn *policyNet) wantFor(c policyControl, fi int, p matrixAttempt,
	r attemptResult) wantViolation {
	dst := p.dst.Unmap()
	w := wantViolation{
		action: "deny", reasonCode: c.reasonCode, control: c.control,
		matchedCIDR: c.matched[fi], pid: r.pid, comm: "python3", count: 1,
		remoteIP: ptr(dst.String()),
	}
	if c.audit {
		w.action = "audit"
	}

	switch protoOfKind(p.kind) {
	case "icmp":
		w.protocol = "icmpv4"
		if dst.Is6() {
			w.protocol = "icmpv6"
		}
		w.remote = dst.String()
	default:
		w.protocol = protoOfKind(p.kind)
		w.remote = netip.AddrPortFrom(dst, uint16(p.port)).String()
		w.remotePort = ptr(p.port)
	}

	return w
}

// checkRefusedRaw checks a raw socket that a row refuses outright: socket()
// fails with EPERM, and the violation has no destination (there is none
// yet).
func (pn *policyNet) checkRefusedRaw(t *testing.T, c policyControl, fi int, p matrixAttempt,
	r attemptResult, viols []map[string]any) {
	if r.errno != int(syscall.EPERM) || r.stage != "socket" {
		t.Errorf("errno %d at %s, want %d (EPERM) at socket", r.errno, r.stage, syscall.EPERM)
	}
	if p.rec.saw(p.token) {
		t.Errorf("server saw the attempt of a refused socket (token %s)", p.token)
	}
	if len(viols) != 1 {
		t.Fatalf("got %d violation records, want 1: %v", len(viols), viols)
	}

	proto := "raw"
	if p.kind == "raw-icmp" {
		proto = []string{"icmpv4", "icmpv6"}[fi]
	}
	checkViolation(t, viols[0], wantViolation{
		protocol: proto, remote: "", action: "deny", reasonCode: c.reasonCode, control: c.control,
		pid: r.pid, comm: "python3", count: 1,
	})
}

// checkNoLoss fails t when the run reported lost events.
func checkNoLoss(t *testing.T, res *result) {
	t.Helper()
	if loss := res.events("loss", nil); len(loss) != 0 {
		t.Errorf("flow log reports loss: %v", loss)
	}
	if strings.Contains(res.stderr, "lost") {
		t.Errorf("stderr reports loss:\n%s", res.stderr)
	}
}

// TestPolicyOfflineUnspecified connects to 0.0.0.0 and :: under --offline.
// Linux delivers such a connect to the local host, and the policy package
// counts these addresses as loopback, which --offline leaves reachable.
// The rootless command's 0.0.0.0 is its own namespace's: eBPF only.
func TestPolicyOfflineUnspecified(t *testing.T) {
	pn := newPolicyNet(t, backendCases[0])
	v4 := pn.plan(t, "v4", "tcp", netip.IPv4Unspecified())
	v6 := pn.plan(t, "v6", "tcp", netip.IPv6Unspecified())

	res, results := pn.runAttempts(t, []string{"--offline"}, 0, v4, v6)
	for _, a := range []attempt{v4, v6} {
		t.Run(a.id, func(t *testing.T) {
			r := results[a.id]
			checkReached(t, matrixAttempt{attempt: a}, r, a.rec.waitSaw(a.token))
			if v := violationsOf(res, r.pid); len(v) != 0 {
				t.Errorf("connect to %s logged violations: %v", a.dst, v)
			}
		})
	}
}

// TestPolicyRetryLoopCompact denies 5000 identical connects of one process:
// the flow log sums them into a few lines whose counts add up to exactly the
// attempts, and nothing is lost.
// The rootless backend does not compact repeats (expectation.compactsRepeats):
// eBPF only.
func TestPolicyRetryLoopCompact(t *testing.T) {
	pn := newPolicyNet(t, backendCases[0])
	const attempts = 5000
	a := pn.plan(t, "loop", "tcp-loop", pn.top.Private4)
	a.count = attempts

	res, results := pn.runAttempts(t, []string{"--block-private"}, 0, a)
	r := results["loop"]
	if r.errno != int(syscall.EPERM) {
		t.Fatalf("loop ended with errno %d at %s, want every connect to fail with EPERM",
			r.errno, r.stage)
	}
	checkNoLoss(t, res)
	if a.rec.saw("tcp accepted:") {
		t.Errorf("server accepted a connection of the denied loop")
	}

	viols := res.events("policy_violation", nil)
	var sum int64
	for _, v := range viols {
		sum += num(v, "count")
	}
	if sum != attempts {
		t.Errorf("violation counts sum to %d, want %d", sum, attempts)
	}
	if len(viols) == 0 || len(viols) > 10 {
		t.Fatalf("got %d violation records for %d attempts, want between 1 and 10", len(viols),
			attempts)
	}

	want := wantViolation{
		protocol: "tcp", remote: netip.AddrPortFrom(pn.top.Private4, uint16(a.port)).String(),
		remoteIP: ptr(pn.top.Private4.String()), remotePort: ptr(a.port), action: "deny",
		reasonCode: "private", control: "--block-private", matchedCIDR: ptr("10.0.0.0/8"),
		pid: r.pid, comm: "python3",
	}
	for i, v := range viols {
		t.Run(fmt.Sprintf("record%d", i+1), func(t *testing.T) {
			want.count = num(v, "count")
			checkViolation(t, v, want)
		})
	}
	t.Logf("%d attempts in %.0f ms, %d violation records", attempts, r.ms, len(viols))
}

// TestPolicyFailOnLeak checks --fail-on-leak: a run with denials whose
// command exits 0 exits 1 with one line naming the first denied destination
// and the count; a failing command keeps its code; a clean run exits 0.
func TestPolicyFailOnLeak(t *testing.T) {
	forPolicyBackends(t, testFailOnLeak)
}

func testFailOnLeak(t *testing.T, b backendCase) {
	pn := newPolicyNet(t, b)
	args := []string{"--block-private", "--fail-on-leak"}

	for _, tc := range []struct {
		name    string
		exit    int
		denials int
		want    int
	}{
		{"denied exit 0", 0, 2, 1},
		{"denied exit 3", 3, 2, 3},
		{"clean exit 0", 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := pn.plan(t, "first", "tcp", pn.top.Private4)
			second := pn.plan(t, "second", "udp-sendto", pn.top.Private6)
			allowed := pn.plan(t, "allowed", "tcp", pn.top.Public4)
			planned := []attempt{allowed}
			if tc.denials > 0 {
				planned = append(planned, first, second)
			}

			res, results := pn.runAttempts(t, args, tc.exit, planned...)
			if res.code != tc.want {
				t.Errorf("exit %d, want %d; stderr:\n%s", res.code, tc.want, res.stderr)
			}
			if !allowed.rec.waitSaw(allowed.token) || results["allowed"].errno != 0 {
				t.Errorf("allowed connect failed: %+v", results["allowed"])
			}

			lines := nonEmptyLines(res.stderr)
			switch {
			case tc.want == 1:
				checkLeakLine(t, lines, first, tc.denials)
			case len(lines) != 0:
				t.Errorf("stderr = %q, want nothing", res.stderr)
			}
		})
	}
}

// checkLeakLine checks --fail-on-leak's one stderr line: it names the first
// denied destination and the number of denied attempts.
func checkLeakLine(t *testing.T, lines []string, first attempt, denials int) {
	t.Helper()
	if len(lines) != 1 {
		t.Fatalf("stderr has %d lines, want 1: %q", len(lines), lines)
	}

	dst := netip.AddrPortFrom(first.dst, uint16(first.port)).String()
	l := lines[0]
	t.Logf("stderr: %s", l)
	if !strings.Contains(l, "--fail-on-leak") || !strings.Contains(l, dst) {
		t.Errorf("stderr line %q does not name --fail-on-leak and the first denial %s", l, dst)
	}
	if !strings.Contains(l, fmt.Sprintf(" %d ", denials)) {
		t.Errorf("stderr line %q does not give the count %d", l, denials)
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}

	return out
}

// TestPolicyUsageErrors checks that malformed policy flags exit 2 with one
// line naming the bad value, before the command runs.
func TestPolicyUsageErrors(t *testing.T) {
	requireEBPF(t)
	for _, tc := range []struct {
		name  string
		args  []string
		value string
	}{
		{"prefix too long v4", []string{"--deny-cidr", "10.0.0.0/33"}, "10.0.0.0/33"},
		{"prefix too long v6", []string{"--allow-cidr", "2001:db8::/129"}, "2001:db8::/129"},
		{"not an address", []string{"--deny-cidr", "example.com"}, "example.com"},
		{"empty prefix length", []string{"--deny-cidr", "10.0.0.0/"}, "10.0.0.0/"},
		{"octet out of range", []string{"--allow-cidr", "10.0.0.256"}, "10.0.0.256"},
		{"unknown default policy", []string{"--default-policy", "maybe"}, "maybe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "ran")
			res := run{args: tc.args, command: []string{"touch", marker}}.do(t)
			if res.code != 2 {
				t.Errorf("exit %d, want 2", res.code)
			}
			lines := nonEmptyLines(res.stderr)
			if len(lines) != 1 || !strings.Contains(lines[0], tc.value) {
				t.Errorf("stderr = %q, want one line naming %q", res.stderr, tc.value)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Errorf("the command ran despite the usage error")
			}
		})
	}
}
