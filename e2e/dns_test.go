package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/dns"
	"github.com/childflow/childflow/internal/testenv"
)

// DNS scenarios. Every run happens inside a network namespace with no route
// out (dnsWorld): the upstream test server listens on its loopback, and
// decoy servers answer on 192.0.2.53 and on the host's resolv.conf
// nameservers (which the eBPF backend's tree keeps seeing), so that a query
// that escaped the forwarder reaches a decoy, which counts it, instead of
// leaving the machine. Names point at addresses of the namespace, where web
// servers listen on ports 80 and 443.

// otherServer is a DNS server address no test configures: queries to it must
// be redirected to the forwarder.
var otherServer = netip.MustParseAddr("192.0.2.53")

// dnsWorld is the namespace of a DNS scenario.
type dnsWorld struct {
	ns     *testenv.Netns
	up     *testenv.DNSServer
	decoys []*testenv.DNSServer
}

// newDNSWorld builds the namespace with an upstream serving records (and
// misbehaving as opts says). Web servers answer on every address of
// 198.51.100.0/24 and 198.18.0.0/16, which the namespace's loopback holds.
func newDNSWorld(t *testing.T, records []string, opts testenv.DNSServerOptions) *dnsWorld {
	t.Helper()
	w := &dnsWorld{ns: testenv.NewNetns(t, "dns")}
	w.ns.Run(t, "ip", "addr", "add", "198.51.100.0/24", "dev", "lo")
	w.ns.Run(t, "ip", "addr", "add", "198.18.0.0/16", "dev", "lo")
	w.up = testenv.StartDNSServerAt(t, w.ns, netip.AddrPort{}, records, opts)

	// Decoys answer every test name with an address that no test expects.
	decoy := []string{"*.test. 60 IN A 203.0.113.99"}
	for _, a := range decoyAddrs(t) {
		if !a.IsLoopback() {
			w.ns.Run(t, "ip", "addr", "add", netip.PrefixFrom(a, a.BitLen()).String(), "dev", "lo")
		}
		w.decoys = append(w.decoys,
			testenv.StartDNSServerAt(t, w.ns, netip.AddrPortFrom(a, 53), decoy, testenv.DNSServerOptions{}))
	}
	w.serveWeb(t)

	return w
}

// decoyAddrs are 192.0.2.53 and the host's IPv4 nameservers.
func decoyAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	out := []netip.Addr{otherServer}
	ups, _ := dns.ResolvConf("/etc/resolv.conf")
	for _, u := range ups {
		if u.Addr().Is4() && !slices.Contains(out, u.Addr()) {
			out = append(out, u.Addr())
		}
	}

	return out
}

// serveWeb serves HTTP on port 80 and HTTPS on port 443 of every address of
// the namespace.
func (w *dnsWorld) serveWeb(t *testing.T) {
	t.Helper()
	h := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "web %s\n", r.Host)
	})
	plain := &http.Server{Handler: h}
	go func() { _ = plain.Serve(testenv.ListenIn(t, w.ns, "tcp4", "0.0.0.0:80")) }()
	t.Cleanup(func() { _ = plain.Close() })

	tls := httptest.NewUnstartedServer(h)
	tls.Listener = testenv.ListenIn(t, w.ns, "tcp4", "0.0.0.0:443")
	tls.StartTLS()
	t.Cleanup(tls.Close)
}

// decoyQueries returns the queries that reached a decoy.
func (w *dnsWorld) decoyQueries() []testenv.DNSLogEntry {
	var out []testenv.DNSLogEntry
	for _, d := range w.decoys {
		out = append(out, d.Queries()...)
	}

	return out
}

// upstreamCount counts the queries for name (any type, or qtype) that
// reached the upstream.
func (w *dnsWorld) upstreamCount(name string, qtype uint16) int {
	n := 0
	for _, q := range w.up.Queries() {
		if q.Name == name && (qtype == 0 || q.Type == qtype) {
			n++
		}
	}

	return n
}

// run runs childflow inside the namespace for backend case b with --dns
// naming the upstream and a flow log, and checks that no decoy was asked.
func (w *dnsWorld) run(t *testing.T, b backendCase, args []string, script string) *result {
	t.Helper()
	if !slices.Contains(args, "--dns") {
		args = append([]string{"--dns", w.up.Addr.String()}, args...)
	}
	r := run{args: args,
		command: []string{"sh", "-c", script}, flowLog: true, timeout: 90 * time.Second}.with(b)
	r.ns = w.ns.Name
	res := r.do(t)
	t.Logf("stdout:\n%s", res.stdout)
	if q := w.decoyQueries(); len(q) > 0 {
		t.Errorf("queries escaped the forwarder and reached a decoy: %+v", q)
	}

	return res
}

// lines maps the first word of each output line to the rest.
func lines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		if k != "" {
			m[k] = strings.TrimSpace(v)
		}
	}

	return m
}

var (
	goResolverOnce sync.Once
	goResolverPath string
	goResolverErr  error
)

// goResolverSrc is a program with Go's own resolver (not the C library's):
// it reads /etc/resolv.conf and asks the nameserver itself.
const goResolverSrc = `package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ips, err := r.LookupIP(ctx, "ip4", os.Args[1])
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for _, ip := range ips {
		fmt.Println(ip)
	}
}
`

// goResolver builds goResolverSrc once per test process, readable by every
// user, and returns its path.
func goResolver(t *testing.T) string {
	t.Helper()
	goResolverOnce.Do(func() {
		// Beside the childflow binary, whose directory TestMain removes.
		dir := filepath.Join(filepath.Dir(binary(t)), "goresolve-src")
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "main.go"), []byte(goResolverSrc), 0o644)
		}
		if err != nil {
			goResolverErr = err
			return
		}
		goResolverPath = filepath.Join(dir, "goresolve")
		cmd := exec.Command("go", "build", "-o", goResolverPath, "main.go")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			goResolverErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if goResolverErr != nil {
		t.Fatalf("build the Go resolver program: %v", goResolverErr)
	}

	return goResolverPath
}

// pySendto asks sys.argv[1] (port 53) for the A record of sys.argv[2] from an
// unconnected UDP socket (sendto/recvfrom) and prints the answer's source
// address and first address record.
const pySendto = `import socket, struct, sys
name = sys.argv[2]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(q, (sys.argv[1], 53))
data, src = s.recvfrom(4096)
ip = socket.inet_ntoa(data[-4:]) if struct.unpack(">H", data[6:8])[0] else "none"
print("sendto", src[0] + ":" + str(src[1]), ip)
`

// dnsRecords are the upstream's records for the client scenarios.
var dnsRecords = []string{
	"py.cf.test. 300 IN A 198.51.100.21",
	"curl.cf.test. 300 IN A 198.51.100.22",
	"dig1.cf.test. 300 IN A 198.51.100.23",
	"dig2.cf.test. 300 IN A 198.51.100.24",
	"digtcp.cf.test. 300 IN A 198.51.100.25",
	"go.cf.test. 300 IN A 198.51.100.26",
	"dig3.cf.test. 300 IN A 198.51.100.27",
	"sendto.cf.test. 300 IN A 198.51.100.28",
}

// dnsQueryCheck is what the flow log must say about one query.
type dnsQueryCheck struct {
	name, qtype string
	server      string // "ip:port" the program asked
	comm        string // "" for any
	ips         []string
}

// TestDNSClients resolves names with every kind of resolver: the C
// library's getaddrinfo (python3, curl), dig against the configured server,
// the resolv.conf server and another server, over UDP and TCP, a program
// with Go's own resolver, and a raw unconnected UDP socket. Each query is
// logged exactly once with the server the program asked, gets the right
// answer, and reaches the upstream once; nothing reaches a decoy.
func TestDNSClients(t *testing.T) {
	testenv.RequireTool(t, "dig")
	testenv.RequireTool(t, "curl")
	goprog := goResolver(t)
	forBackends(t, func(t *testing.T, b backendCase) {
		w := newDNSWorld(t, dnsRecords, testenv.DNSServerOptions{})
		configured := "@" + w.up.Addr.Addr().String() + " -p " + fmt.Sprint(w.up.Addr.Port())
		if b.backend != "ebpf" {
			// The upstream is on the loopback of childflow's namespace,
			// which the rootless tree cannot address.
			configured = ""
		}
		script := fmt.Sprintf(`set -u
echo resolv $(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)
python3 -c 'import socket; print("py", socket.getaddrinfo("py.cf.test", 80, socket.AF_INET)[0][4][0])'
echo curl $(curl -sS --max-time 10 http://curl.cf.test/)
echo dig1 $(dig +short +time=5 +tries=1 %s dig1.cf.test)
echo dig2 $(dig +short +time=5 +tries=1 @%s dig2.cf.test)
echo digtcp $(dig +short +tcp +time=5 +tries=1 @%s digtcp.cf.test)
echo go $(%s go.cf.test)
echo dig3 $(dig +short +time=5 +tries=1 dig3.cf.test)
python3 -c '%s' %s sendto.cf.test
`, configured, otherServer, otherServer, goprog, pySendto, otherServer)
		res := w.run(t, b, nil, script)
		if res.code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", res.code, res.stderr)
		}
		out := lines(res.stdout)
		resolv := out["resolv"] + ":53"
		for k, want := range map[string]string{
			"py": "198.51.100.21", "curl": "web curl.cf.test", "dig1": "198.51.100.23",
			"dig2": "198.51.100.24", "digtcp": "198.51.100.25", "go": "198.51.100.26",
			"dig3": "198.51.100.27", "sendto": otherServer.String() + ":53 198.51.100.28",
		} {
			if out[k] != want {
				t.Errorf("%s printed %q, want %q; stdout:\n%s", k, out[k], want, res.stdout)
			}
		}

		dig1Server := w.up.Addr.String()
		if configured == "" {
			dig1Server = resolv
		}
		checks := []dnsQueryCheck{
			{"py.cf.test", "A", resolv, "python3", []string{"198.51.100.21"}},
			{"curl.cf.test", "A", resolv, "", []string{"198.51.100.22"}},
			{"curl.cf.test", "AAAA", resolv, "", []string{}},
			{"dig1.cf.test", "A", dig1Server, "", []string{"198.51.100.23"}},
			{"dig2.cf.test", "A", otherServer.String() + ":53", "", []string{"198.51.100.24"}},
			{"digtcp.cf.test", "A", otherServer.String() + ":53", "", []string{"198.51.100.25"}},
			{"go.cf.test", "A", resolv, "goresolve", []string{"198.51.100.26"}},
			{"dig3.cf.test", "A", resolv, "", []string{"198.51.100.27"}},
			{"sendto.cf.test", "A", otherServer.String() + ":53", "python3", []string{"198.51.100.28"}},
		}
		for _, c := range checks {
			checkDNSLogged(t, res, b, c)
			if n := w.upstreamCount(c.name, mdns.StringToType[c.qtype]); n != 1 {
				t.Errorf("%s %s reached the upstream %d times, want 1", c.name, c.qtype, n)
			}
		}
		if tcp := res.events("dns_query", func(m map[string]any) bool {
			return str(m, "qname") == "digtcp.cf.test"
		}); len(tcp) == 1 && str(tcp[0], "protocol") != "tcp" {
			t.Errorf("dig +tcp logged protocol %q, want tcp", str(tcp[0], "protocol"))
		}
		checkFlowNames(t, res, "198.51.100.22", 80, []string{"curl.cf.test"}, "curl.cf.test")
	})
}

// checkDNSLogged checks that c's query and answer are logged once each with
// the right fields.
func checkDNSLogged(t *testing.T, res *result, b backendCase, c dnsQueryCheck) {
	t.Helper()
	match := func(m map[string]any) bool { return str(m, "qname") == c.name && str(m, "qtype") == c.qtype }
	queries, answers := res.events("dns_query", match), res.events("dns_answer", match)
	if len(queries) != 1 || len(answers) != 1 {
		t.Errorf("%s %s: got %d dns_query and %d dns_answer, want 1 each", c.name, c.qtype,
			len(queries), len(answers))
		return
	}
	q, a := queries[0], answers[0]
	if got := str(q, "server"); got != c.server {
		t.Errorf("%s %s: server %q, want %q", c.name, c.qtype, got, c.server)
	}
	if ap, err := netip.ParseAddrPort(c.server); err == nil &&
		(str(q, "server_ip") != ap.Addr().String() || num(q, "server_port") != int64(ap.Port())) {
		t.Errorf("%s: server_ip %v server_port %v, want %s", c.name, q["server_ip"], q["server_port"], c.server)
	}
	if got := str(a, "mode"); got != "relayed" {
		t.Errorf("%s %s: mode %q, want relayed", c.name, c.qtype, got)
	}
	if got := strs(a["answer_ips"]); !slices.Equal(got, c.ips) {
		t.Errorf("%s %s: answer_ips %v, want %v", c.name, c.qtype, got, c.ips)
	}
	if num(q, "pid") == 0 || str(q, "comm") == "" || (c.comm != "" && str(q, "comm") != c.comm) {
		t.Errorf("%s %s: pid %d comm %q, want a pid and comm %q", c.name, c.qtype, num(q, "pid"),
			str(q, "comm"), c.comm)
	}
}

// strs reads a JSON array of strings.
func strs(v any) []string {
	out := []string{}
	arr, _ := v.([]any)
	for _, x := range arr {
		s, _ := x.(string)
		out = append(out, s)
	}

	return out
}

// checkFlowNames checks the names and server name of the TCP flow to ip:port:
// connect_attempt carries the names, flow_end the names and server name.
func checkFlowNames(t *testing.T, res *result, ip string, port int, names []string, server string) {
	t.Helper()
	to := func(m map[string]any) bool {
		return str(m, "remote_ip") == ip && num(m, "remote_port") == int64(port) && str(m, "protocol") == "tcp"
	}
	attempts, ends := res.events("connect_attempt", to), res.events("flow_end", to)
	if len(attempts) != 1 || len(ends) != 1 {
		t.Errorf("flow to %s:%d: got %d connect_attempt and %d flow_end, want 1 each", ip, port,
			len(attempts), len(ends))
		return
	}
	if got := strs(attempts[0]["names"]); !slices.Equal(got, names) {
		t.Errorf("connect_attempt to %s: names %v, want %v", ip, got, names)
	}
	if got := strs(ends[0]["names"]); !slices.Equal(got, names) {
		t.Errorf("flow_end to %s: names %v, want %v", ip, got, names)
	}
	if got := str(ends[0], "server_name"); got != server {
		t.Errorf("flow_end to %s: server_name %q, want %q", ip, got, server)
	}
}

// TestDNSServerNameWithoutDNS fetches over HTTPS and HTTP a name that the
// program resolved itself (curl --resolve): the flows carry no DNS names but
// the server name from the TLS SNI and the HTTP Host.
func TestDNSServerNameWithoutDNS(t *testing.T) {
	testenv.RequireTool(t, "curl")
	forBackends(t, func(t *testing.T, b backendCase) {
		w := newDNSWorld(t, dnsRecords, testenv.DNSServerOptions{})
		script := `curl -sSk --max-time 10 --resolve tls.cf.test:443:198.51.100.61 https://tls.cf.test/
curl -sS --max-time 10 --resolve host.cf.test:80:198.51.100.62 http://host.cf.test/`
		res := w.run(t, b, nil, script)
		if res.code != 0 || !strings.Contains(res.stdout, "web tls.cf.test") ||
			!strings.Contains(res.stdout, "web host.cf.test") {
			t.Fatalf("exit %d, stdout %q; stderr:\n%s", res.code, res.stdout, res.stderr)
		}
		checkFlowNames(t, res, "198.51.100.61", 443, []string{}, "tls.cf.test")
		checkFlowNames(t, res, "198.51.100.62", 80, []string{}, "host.cf.test")
		if n := len(res.events("dns_query", nil)); n != 0 {
			t.Errorf("got %d dns_query events, want none", n)
		}
	})
}

// policyRecords are the upstream's records for the domain policy scenario.
var policyRecords = []string{
	"www.allowed.test. 300 IN A 198.51.100.31",
	"allowed.test. 300 IN A 198.51.100.32",
	"exact.test. 300 IN A 198.51.100.33",
	"sub.exact.test. 300 IN A 198.51.100.34",
	"x.denied.test. 300 IN A 198.51.100.35",
	"bad.allowed.test. 300 IN A 198.51.100.36",
	"other.test. 300 IN A 198.51.100.37",
	"cname.allowed.test. 300 IN CNAME x.denied.test.",
	"ok.allowed.test. 300 IN A 198.51.100.40",
	"alias.allowed.test. 300 IN CNAME y.denied.test.",
	"y.denied.test. 300 IN A 198.51.100.40",
}

// pyConnect resolves each argument with getaddrinfo and connects to port 80
// of its first address (or of the argument itself, an address), printing
// "name ok ip", "name noaddr" or "name denied ip errno".
const pyConnect = `import socket, sys
for name in sys.argv[1:]:
    try:
        ip = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror:
        print(name, "noaddr"); continue
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((ip, 80)); print(name, "ok", ip)
    except OSError as e:
        print(name, "denied", ip, e.errno)
    s.close()
`

// TestDNSDomainPolicy checks every domain rule end to end under default
// deny: allowed names connect, denied names are answered empty without
// reaching the upstream and logged as dns violations, a CNAME to a denied
// name is denied, an address shared with a denied name is denied, and an
// address that only a name no rule allows resolved to is denied as
// default_deny.
func TestDNSDomainPolicy(t *testing.T) {
	forBackends(t, func(t *testing.T, b backendCase) {
		w := newDNSWorld(t, policyRecords, testenv.DNSServerOptions{})
		args := []string{"--default-policy", "deny", "--allow-domain", "allowed.test",
			"--allow-domain-exact", "exact.test", "--deny-domain", "denied.test",
			"--deny-domain-exact", "bad.allowed.test"}
		names := []string{"www.allowed.test", "allowed.test", "exact.test", "sub.exact.test",
			"x.denied.test", "bad.allowed.test", "cname.allowed.test", "other.test",
			"alias.allowed.test", "ok.allowed.test", "198.51.100.39"}
		res := w.run(t, b, args, "python3 -c '"+pyConnect+"' "+strings.Join(names, " "))
		if res.code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", res.code, res.stderr)
		}
		out := lines(res.stdout)
		want := map[string]string{
			"www.allowed.test":   "ok 198.51.100.31",
			"allowed.test":       "ok 198.51.100.32",
			"exact.test":         "ok 198.51.100.33",
			"sub.exact.test":     "denied 198.51.100.34",
			"x.denied.test":      "noaddr",
			"bad.allowed.test":   "noaddr",
			"cname.allowed.test": "noaddr",
			"other.test":         "denied 198.51.100.37",
			"alias.allowed.test": "noaddr",
			"ok.allowed.test":    "denied 198.51.100.40", // y.denied.test shares it
			"198.51.100.39":      "denied 198.51.100.39",
		}
		for name, w := range want {
			if got := out[name]; got != w && !strings.HasPrefix(got, w+" ") {
				t.Errorf("%s: got %q, want %q", name, got, w)
			}
		}

		for _, n := range []string{"x.denied.test", "bad.allowed.test", "y.denied.test"} {
			if c := w.upstreamCount(n, 0); c != 0 {
				t.Errorf("denied name %s reached the upstream %d times, want 0", n, c)
			}
		}
		checkDNSViolation(t, res, "x.denied.test", "x.denied.test", "deny_domain", "denied.test")
		checkDNSViolation(t, res, "bad.allowed.test", "bad.allowed.test", "deny_domain_exact",
			"bad.allowed.test")
		checkDNSViolation(t, res, "cname.allowed.test", "x.denied.test", "deny_domain", "denied.test")
		checkDNSViolation(t, res, "alias.allowed.test", "y.denied.test", "deny_domain", "denied.test")
		checkConnectViolation(t, res, "198.51.100.34", "default_deny", "")
		checkConnectViolation(t, res, "198.51.100.37", "default_deny", "")
		checkConnectViolation(t, res, "198.51.100.39", "default_deny", "")
		checkConnectViolation(t, res, "198.51.100.40", "deny_domain", "denied.test")
		for _, n := range []string{"x.denied.test", "bad.allowed.test"} {
			a := res.events("dns_answer", func(m map[string]any) bool { return str(m, "qname") == n })
			if len(a) != 1 || str(a[0], "mode") != "synthetic_empty" || len(strs(a[0]["answer_ips"])) != 0 {
				t.Errorf("answer for denied %s: %v, want one synthetic_empty without addresses", n, a)
			}
		}
	})
}

// checkDNSViolation checks that the query for qname, denied for name (itself
// or a name its CNAME chain led to), was logged as one dns policy_violation.
func checkDNSViolation(t *testing.T, res *result, qname, name, code, matched string) {
	t.Helper()
	v := res.events("policy_violation", func(m map[string]any) bool {
		names := strs(m["names"])
		return str(m, "protocol") == "dns" && str(m, "remote") == name &&
			len(names) > 0 && names[0] == qname
	})
	if len(v) != 1 {
		t.Errorf("dns violations for %s: got %d, want 1: %v", name, len(v), v)
		return
	}
	if str(v[0], "reason_code") != code || str(v[0], "matched_domain") != matched ||
		str(v[0], "action") != "deny" {
		t.Errorf("dns violation for %s: %v, want reason_code %s matched_domain %s action deny",
			name, v[0], code, matched)
	}
}

// checkConnectViolation checks that the connect to ip:80 was logged as a tcp
// policy_violation.
func checkConnectViolation(t *testing.T, res *result, ip, code, matched string) {
	t.Helper()
	v := res.events("policy_violation", func(m map[string]any) bool {
		return str(m, "protocol") == "tcp" && str(m, "remote_ip") == ip
	})
	if len(v) != 1 {
		t.Errorf("tcp violations for %s: got %d, want 1: %v", ip, len(v), v)
		return
	}
	if str(v[0], "reason_code") != code || str(v[0], "matched_domain") != matched {
		t.Errorf("violation for %s: reason_code %q matched_domain %q, want %q %q", ip,
			str(v[0], "reason_code"), str(v[0], "matched_domain"), code, matched)
	}
}

// TestDNSConnectRace resolves 1000 allowed names and 100 names no rule
// allows, each to an address of its own, and connects to each right after
// its answer, under --default-policy deny: the verdict of the connect must be
// the name's every time.
func TestDNSConnectRace(t *testing.T) {
	const allowed, other = 1000, 100
	var records []string
	for i := range allowed + other {
		domain := "race.test"
		if i >= allowed {
			domain = "other.test"
		}
		records = append(records, fmt.Sprintf("n%d.%s. 300 IN A 198.18.%d.%d", i, domain, i/250, i%250+1))
	}
	script := `import socket
bad = 0
for i in range(1100):
    name = "n%d.%s" % (i, "race.test" if i < 1000 else "other.test")
    ip = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((ip, 80)); ok = True
    except OSError:
        ok = False
    s.close()
    if ok != (i < 1000):
        bad += 1; print("wrong", name, ip, ok)
print("bad", bad)
`
	forBackends(t, func(t *testing.T, b backendCase) {
		w := newDNSWorld(t, records, testenv.DNSServerOptions{})
		start := time.Now()
		res := w.run(t, b, []string{"--default-policy", "deny", "--allow-domain", "race.test"},
			"python3 -c '"+script+"'")
		t.Logf("%d lookups and connects in %s", allowed+other, time.Since(start))
		if res.code != 0 || lines(res.stdout)["bad"] != "0" {
			t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
		}
		v := res.events("policy_violation", nil)
		var count int64
		for _, m := range v {
			count += max(num(m, "count"), 1)
			if str(m, "reason_code") != "default_deny" {
				t.Errorf("violation %v, want default_deny only", m)
			}
		}
		if count != other {
			t.Errorf("violations counted %d denied connects, want %d", count, other)
		}
	})
}

// TestDNSHostsFile gives the tree a hosts file: getent and getaddrinfo in
// the tree see its entry, and so does dig (answered by the forwarder from
// the file); nothing about the name reaches the upstream; the host's own
// lookup does not see it.
func TestDNSHostsFile(t *testing.T) {
	testenv.RequireTool(t, "dig")
	const name = "hosts.cf.test"
	// Readable by the unprivileged user of rootless runs too.
	dir, err := os.MkdirTemp("", "childflow-hosts-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	hosts := filepath.Join(dir, "hosts")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hosts, []byte("198.51.100.50 "+name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	forBackends(t, func(t *testing.T, b backendCase) {
		w := newDNSWorld(t, []string{name + ". 300 IN A 198.51.100.99"}, testenv.DNSServerOptions{})
		script := `echo getent $(getent hosts ` + name + ` | awk '{print $1}')
python3 -c 'import socket; print("py", socket.getaddrinfo("` + name + `", 80, socket.AF_INET)[0][4][0])'
echo dig $(dig +short +time=5 +tries=1 @` + otherServer.String() + ` ` + name + `)`
		res := w.run(t, b, []string{"--hosts-file", hosts}, script)
		if res.code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", res.code, res.stderr)
		}
		out := lines(res.stdout)
		for _, k := range []string{"getent", "py", "dig"} {
			if out[k] != "198.51.100.50" {
				t.Errorf("%s printed %q, want 198.51.100.50", k, out[k])
			}
		}
		if n := w.upstreamCount(name, 0); n != 0 {
			t.Errorf("%s reached the upstream %d times, want 0", name, n)
		}
		// dig asks for A; getent may ask for AAAA too, which the file
		// answers empty.
		a := res.events("dns_answer", func(m map[string]any) bool {
			return str(m, "qname") == name && str(m, "qtype") == "A"
		})
		if len(a) != 1 || !slices.Equal(strs(a[0]["answer_ips"]), []string{"198.51.100.50"}) {
			t.Errorf("A answers for %s: %v, want one with 198.51.100.50", name, a)
		}
		for _, m := range res.events("dns_answer", nil) {
			if str(m, "mode") != "hosts_file" {
				t.Errorf("answer %v, want mode hosts_file", m)
			}
		}

		outside, _ := exec.Command("getent", "-s", "files", "hosts", name).CombinedOutput()
		if strings.Contains(string(outside), "198.51.100.50") {
			t.Errorf("a process outside the tree sees the entry: %s", outside)
		}
	})
}

// TestDNSOffline answers every query empty under --offline and forwards
// nothing.
func TestDNSOffline(t *testing.T) {
	testenv.RequireTool(t, "dig")
	forBackends(t, func(t *testing.T, b backendCase) {
		w := newDNSWorld(t, dnsRecords, testenv.DNSServerOptions{})
		script := `echo status $(dig +time=5 +tries=1 @` + otherServer.String() + ` dig2.cf.test | grep -o 'status: [A-Z]*')
echo short $(dig +short +time=5 +tries=1 @` + otherServer.String() + ` dig2.cf.test)
python3 -c 'import socket
try:
    socket.getaddrinfo("py.cf.test", 80, socket.AF_INET); print("py resolved")
except socket.gaierror: print("py noaddr")'`
		res := w.run(t, b, []string{"--offline"}, script)
		if res.code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", res.code, res.stderr)
		}
		out := lines(res.stdout)
		if out["status"] != "status: NOERROR" || out["short"] != "" || out["py"] != "noaddr" {
			t.Errorf("stdout:\n%s\nwant NOERROR, no address, py noaddr", res.stdout)
		}
		if q := w.up.Queries(); len(q) != 0 {
			t.Errorf("the upstream got %d queries, want 0: %v", len(q), q)
		}
		answers := res.events("dns_answer", nil)
		if len(answers) < 3 {
			t.Errorf("got %d dns_answer events, want at least 3", len(answers))
		}
		for _, a := range answers {
			if str(a, "mode") != "synthetic_empty" {
				t.Errorf("answer %v, want mode synthetic_empty", a)
			}
		}
	})
}

// TestDNSUpstreamFailure checks what a program sees when the upstream fails:
// SERVFAIL (logged with mode failed and an error) when it is down, silent or
// malformed, without holding up other queries; and the complete answer when
// it truncates over UDP.
func TestDNSUpstreamFailure(t *testing.T) {
	testenv.RequireTool(t, "dig")
	dig := `dig +time=8 +tries=1 @` + otherServer.String() + ` `
	status := `grep -o 'status: [A-Z]*' | cut -d' ' -f2`
	cases := []struct {
		name   string
		opts   testenv.DNSServerOptions
		script string
		want   map[string]string
		failed []string // names whose answer is logged as failed
	}{
		{name: "down", opts: testenv.DNSServerOptions{},
			script: `echo st $(` + dig + `dig1.cf.test | ` + status + `)`,
			want:   map[string]string{"st": "SERVFAIL"}, failed: []string{"dig1.cf.test"}},
		{name: "silent", opts: testenv.DNSServerOptions{Drop: map[string]bool{"dig1.cf.test": true}},
			script: `(echo slow $(` + dig + `dig1.cf.test | ` + status + `) > slow.out) &
sleep 0.3
s=$(date +%s%N); r=$(` + dig + `+short dig2.cf.test); e=$(date +%s%N)
echo fast $r $(( (e - s) / 1000000 ))
wait; cat slow.out`,
			want: map[string]string{"slow": "SERVFAIL"}, failed: []string{"dig1.cf.test"}},
		{name: "malformed", opts: testenv.DNSServerOptions{Malformed: true},
			script: `echo st $(` + dig + `dig1.cf.test | ` + status + `)`,
			want:   map[string]string{"st": "SERVFAIL"}, failed: []string{"dig1.cf.test"}},
		{name: "truncated", opts: testenv.DNSServerOptions{TruncateUDP: true},
			script: `echo short $(` + dig + `+short +notcp dig1.cf.test)`,
			want:   map[string]string{"short": "198.51.100.23"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forBackends(t, func(t *testing.T, b backendCase) {
				w := newDNSWorld(t, dnsRecords, tc.opts)
				var args []string
				if tc.name == "down" {
					args = []string{"--dns", "127.0.0.1:9"} // discard port: nothing listens
				}
				res := w.run(t, b, args, tc.script)
				if res.code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", res.code, res.stderr)
				}
				out := lines(res.stdout)
				for k, v := range tc.want {
					if out[k] != v {
						t.Errorf("%s: got %q, want %q; stdout:\n%s", k, out[k], v, res.stdout)
					}
				}
				if tc.name == "silent" {
					checkFastAnswer(t, out["fast"])
				}
				for _, n := range tc.failed {
					a := res.events("dns_answer", func(m map[string]any) bool { return str(m, "qname") == n })
					if len(a) != 1 || str(a[0], "mode") != "failed" || str(a[0], "rcode") != "SERVFAIL" ||
						str(a[0], "error") == "" {
						t.Errorf("answers for %s: %v, want one failed SERVFAIL with an error", n, a)
					}
				}
			})
		})
	}
}

// checkFastAnswer checks "IP MS": the other query was answered right, within
// a second, while the silent one was pending.
func checkFastAnswer(t *testing.T, got string) {
	t.Helper()
	ip, ms, _ := strings.Cut(got, " ")
	var n int
	fmt.Sscan(ms, &n)
	if ip != "198.51.100.24" || ms == "" || n > 1000 {
		t.Errorf("query beside a silent one: got %q, want 198.51.100.24 within 1000 ms", got)
	}
}
