package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/proxy/proxytest"
	"github.com/childflow/childflow/rootless"
)

// Forced proxying. The command runs in the client namespace of
// testenv.TopologyForPolicyTests and talks to an origin in the server
// namespace at addresses that stand for Internet hosts; the proxies listen on
// the client namespace's loopback, like a proxy on the machine or a sidecar,
// and dial the origin from there. This is the path users take: the
// destinations are not loopback, so they are proxied without
// --proxy-loopback, --proxy-only has something to deny, and IPv6 has real
// global addresses. Names come from a DNS server in the client namespace
// (through childflow's forwarder) or from --hosts-file.

const (
	proxyUser   = "cf-proxy-user"
	proxyDomain = "proxy.test"
)

// proxyCase is one destination of the command: how it names it, the
// address behind the name, and what a proxy that is told names must be
// asked for.
type proxyCase struct {
	id   string
	host string // what the command connects to: a name or an IP literal
	ip   netip.Addr
	name bool // host is a name the proxy may be told
}

// proxyNet is the topology with the origin, the DNS server and the client
// programs the proxy tests share.
type proxyNet struct {
	top    *testenv.PolicyTopology
	origin *peerOrigin
	dns    *testenv.DNSServer
	files  string // directory every user can read: hosts file, clients
	hosts  string // the --hosts-file
	goCli  string // a Go HTTP client
	pyCli  string // a python3 raw-socket HTTP client
	cases  []proxyCase
	local  netip.AddrPort // a server on the client's loopback (not proxied)
}

func newProxyNet(t *testing.T) *proxyNet {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"curl", "python3", "go"} {
		testenv.RequireTool(t, tool)
	}

	top := testenv.TopologyForPolicyTests(t)
	pn := &proxyNet{top: top, files: openDir(t)}
	pn.cases = []proxyCase{
		{"dns4", "dns4." + proxyDomain, top.Public4, true},
		{"dns6", "dns6." + proxyDomain, top.Public6, true},
		{"hosts4", "hosts4." + proxyDomain, netip.MustParseAddr("203.0.113.20"), true},
		{"hosts6", "hosts6." + proxyDomain, netip.MustParseAddr("2001:db8:1::20"), true},
		{"ip4", "203.0.113.30", netip.MustParseAddr("203.0.113.30"), false},
		{"ip6", "2001:db8:1::30", netip.MustParseAddr("2001:db8:1::30"), false},
	}
	for _, c := range pn.cases[2:] {
		testenv.AddAddr(t, top.Server, "lo", netip.PrefixFrom(c.ip, c.ip.BitLen()))
	}

	pn.origin = startPeerOrigin(t, top.Server, "[::]:0")
	pn.local = startPeerOrigin(t, top.Client, "127.0.0.1:0").addr
	pn.startDNS(t)
	pn.writeFiles(t)

	return pn
}

// openDir makes a directory that every user may read and enter.
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "childflow-proxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	return dir
}

// startDNS serves the dns cases' names from the client namespace's loopback,
// where childflow's forwarder (--dns) reaches it.
func (pn *proxyNet) startDNS(t *testing.T) {
	t.Helper()
	records := []string{
		fmt.Sprintf("dns4.%s. 60 IN A %s", proxyDomain, pn.cases[0].ip),
		fmt.Sprintf("dns6.%s. 60 IN AAAA %s", proxyDomain, pn.cases[1].ip),
	}
	err := pn.top.Client.Do(func() error {
		pn.dns = testenv.StartDNSServer(t, records, testenv.DNSServerOptions{})
		return nil
	})
	if err != nil {
		t.Fatalf("start dns server in %s: %v", pn.top.Client, err)
	}
}

// pyClient fetches PATH from HOST:PORT over a plain socket and prints the
// body, or "ERR errno ms" when the exchange fails.
const pyClient = `
import socket, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.monotonic()
try:
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(("GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    if b"\r\n\r\n" not in data:
        raise OSError(0, "no answer")
    print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
except OSError as e:
    print("ERR %s %d %s" % (path, e.errno or 0, int((time.monotonic() - t0) * 1000)))
`

// goClient fetches its argument with net/http, the proxy environment ignored.
const goClient = `package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	c := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}
	resp, err := c.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b, _ := io.ReadAll(resp.Body)
	fmt.Print(string(b))
}
`

func (pn *proxyNet) writeFiles(t *testing.T) {
	t.Helper()
	var hosts strings.Builder
	for _, c := range pn.cases {
		if strings.HasPrefix(c.id, "hosts") {
			fmt.Fprintf(&hosts, "%s %s\n", c.ip, c.host)
		}
	}
	pn.hosts = writeFile(t, pn.files, "hosts", hosts.String(), 0o644)
	pn.pyCli = writeFile(t, pn.files, "client.py", pyClient, 0o644)

	src := filepath.Join(t.TempDir(), "goclient")
	writeFile(t, src, "main.go", goClient, 0o644)
	writeFile(t, src, "go.mod", "module goclient\n\ngo 1.21\n", 0o644)
	pn.goCli = filepath.Join(pn.files, "goclient")
	cmd := exec.Command("go", "build", "-o", pn.goCli, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the Go client: %v\n%s", err, out)
	}
}

func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}

	return path
}

// peerOrigin is an HTTP server in a namespace that answers every request
// with "peer ADDR path PATH", ADDR being the address it saw the request
// come from.
type peerOrigin struct {
	addr netip.AddrPort
}

func startPeerOrigin(t *testing.T, ns *testenv.Netns, listen string) *peerOrigin {
	t.Helper()
	ln := testenv.ListenIn(t, ns, "tcp", listen)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, _ := netip.ParseAddrPort(r.RemoteAddr)
		peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		fmt.Fprintf(w, "peer %s path %s\n", peer, r.URL.Path)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	return &peerOrigin{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
}

func (o *peerOrigin) port() int { return int(o.addr.Port()) }

// proxyUnderTest is a running test proxy and the childflow flags that use
// it.
type proxyUnderTest struct {
	name   string
	srv    *proxytest.Server
	args   []string // --proxy and friends; no password
	env    []string // the password, when given through the environment
	byName bool     // the proxy is asked for names when known
}

// proxyKinds are the proxies the tests run: HTTP CONNECT with Basic auth
// (password from $CHILDFLOW_PROXY_PASSWORD), HTTPS with a self-signed
// certificate trusted through --proxy-ca (password from a file), SOCKS5
// with username/password (socks5h://, so that names are passed on).
var proxyKinds = []string{"http", "https", "socks5h"}

// startProxy starts a proxy of kind in the client namespace. password is
// what childflow is given; the proxy accepts only pn's real one. tweaks
// change the proxy's options further.
func (pn *proxyNet) startProxy(t *testing.T, kind, real, given string,
	delay func(string) time.Duration, tweaks ...func(*proxytest.Options)) *proxyUnderTest {
	t.Helper()
	opts := proxytest.Options{
		User: proxyUser, Password: real, Delay: delay,
		Listener: testenv.ListenIn(t, pn.top.Client, "tcp", "127.0.0.1:0"),
		Dial:     dialIn(pn.top.Client),
		Targets: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"),
			netip.MustParsePrefix("2001:db8:1::/48")},
	}
	for _, tweak := range tweaks {
		tweak(&opts)
	}
	opts.Resolve = map[string]netip.Addr{}
	for _, c := range pn.cases {
		if c.name {
			opts.Resolve[c.host] = c.ip
		}
	}
	p := &proxyUnderTest{name: kind, byName: true}
	switch kind {
	case "http":
		p.srv = proxytest.StartHTTP(t, opts)
		p.env = []string{"CHILDFLOW_PROXY_PASSWORD=" + given}
	case "https":
		s := proxytest.StartHTTPS(t, opts)
		p.srv = s.Server
		ca := writeFile(t, pn.files, "proxy-ca-"+strconv.Itoa(int(s.Addr().Port()))+".pem",
			string(s.CertPEM()), 0o644)
		pw := writeFile(t, openDir(t), "password", given+"\n", 0o644)
		p.args = []string{"--proxy-ca", ca, "--proxy-password-file", pw}
	case "socks5h":
		p.srv = proxytest.StartSOCKS5(t, opts)
		p.env = []string{"CHILDFLOW_PROXY_PASSWORD=" + given}
	}
	url := p.srv.URL()
	if kind == "socks5h" {
		url = "socks5h://" + p.srv.Addr().String()
	}
	p.args = append([]string{"--proxy", url, "--proxy-user", proxyUser}, p.args...)

	return p
}

// dialIn dials from inside ns.
func dialIn(ns *testenv.Netns) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})

		return c, err
	}
}

// want is what the proxy must be asked for a connection to c.
func (p *proxyUnderTest) want(c proxyCase, port int) string {
	if c.name && p.byName {
		return net.JoinHostPort(c.host, strconv.Itoa(port))
	}

	return net.JoinHostPort(c.ip.String(), strconv.Itoa(port))
}

// proxyRun is one childflow run in the client namespace.
type proxyRun struct {
	b       backendCase
	args    []string
	env     []string
	command []string
	// during, when set, is called while the command runs, once it has
	// created the file "ready" in the run's directory; the command goes on
	// when during returns.
	during func(pid int)
}

// traceIn runs childflow in the client namespace (as Nobody for the
// unprivileged case, through nsenter's --setuid) and returns its result.
func (pn *proxyNet) traceIn(t *testing.T, pr proxyRun) *result {
	t.Helper()
	r := run{unprivileged: pr.b.unprivileged}
	dir := r.tempDir(t)
	args := []string{"--net=" + pn.top.Client.Path()}
	if pr.b.unprivileged {
		testenv.RequireUnprivilegedUserNS(t)
		testenv.OpenTunForAll(t)
		args = append(args, "--setuid", strconv.Itoa(testenv.Nobody),
			"--setgid", strconv.Itoa(testenv.Nobody))
	}
	args = append(args, "--", binary(t), "trace", "--backend", pr.b.backend,
		"--dns", pn.dns.Addr.String(), "--hosts-file", pn.hosts,
		"--flow-log", filepath.Join(dir, "flows.jsonl"))
	args = append(append(append(args, pr.args...), "--"), pr.command...)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Dir = dir
	cmd.Env = append(proxyFreeEnv(), pr.env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start childflow: %v", err)
	}
	if pr.during != nil {
		pn.whileRunning(t, dir, cmd, pr.during)
	}
	err := cmd.Wait()

	res := &result{stdout: stdout.String(), stderr: stderr.String(), dir: dir}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run childflow: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("childflow did not finish within 90 s; stderr:\n%s", res.stderr)
	}
	res.log = readLog(t, filepath.Join(dir, "flows.jsonl"))

	return res
}

// whileRunning waits (up to 30 s) for the command's "ready" file, calls fn
// with childflow's pid, then creates "go" for the command to finish.
func (pn *proxyNet) whileRunning(t *testing.T, dir string, cmd *exec.Cmd, fn func(int)) {
	t.Helper()
	defer func() { _ = os.WriteFile(filepath.Join(dir, "go"), nil, 0o644) }()
	for i := 0; i < 1500; i++ {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			fn(cmd.Process.Pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Error("the command did not become ready within 30 s")
}

// proxyFreeEnv is the test's environment without proxy variables, so that
// no client is told about a proxy: childflow alone sends them through it.
func proxyFreeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasSuffix(strings.ToLower(k), "_proxy") && k != "CHILDFLOW_PROXY_PASSWORD" {
			env = append(env, kv)
		}
	}

	return env
}

// waitScript makes the command create "ready" and wait (at most 20 s) for
// "go" in its working directory.
const waitScript = `touch ready; i=0; while [ ! -e go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done`

// clientScript fetches every case with curl, python3 and the Go client,
// each with its own path, and the loopback server directly; then it prints
// its environment and waits. The rootless backend reaches the host's
// loopback through its gateway (with --host-loopback).
func (pn *proxyNet) clientScript(b backendCase) (string, []string) {
	var sb strings.Builder
	var paths []string
	port := strconv.Itoa(pn.origin.port())
	for _, c := range pn.cases {
		url := "http://" + net.JoinHostPort(c.host, port)
		fmt.Fprintf(&sb, "curl -sS --max-time 10 %s/curl-%s\n", url, c.id)
		fmt.Fprintf(&sb, "python3 %s %s %s /py-%s\n", pn.pyCli, c.host, port, c.id)
		fmt.Fprintf(&sb, "%s %s/go-%s\n", pn.goCli, url, c.id)
		paths = append(paths, "/curl-"+c.id, "/py-"+c.id, "/go-"+c.id)
	}
	local := pn.local
	if b.backend == "rootless" {
		local = netip.AddrPortFrom(rootless.Gateway4, local.Port())
	}
	fmt.Fprintf(&sb, "curl -sS --max-time 10 http://%s/direct\n", local)
	sb.WriteString("env\n" + waitScript + "\n")

	return sb.String(), paths
}

// peers reads the "peer ADDR path PATH" lines of the command's output.
func peers(out string) map[string]netip.AddrPort {
	got := map[string]netip.AddrPort{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var peer, path string
		if n, _ := fmt.Sscanf(sc.Text(), "peer %s path %s", &peer, &path); n == 2 {
			got[path], _ = netip.ParseAddrPort(peer)
		}
	}

	return got
}

// TestProxyForced runs curl (no proxy variables), python3 raw sockets and a
// Go program through each kind of proxy, to IPv4 and IPv6 destinations
// named through DNS, through --hosts-file, and by IP literal. Every
// connection reaches the origin from the proxy; the proxy is asked for the
// name the program resolved; the flow log, the summary and the report count
// the connections as proxied; the password shows nowhere.
func TestProxyForced(t *testing.T) {
	pn := newProxyNet(t)
	for _, kind := range proxyKinds {
		t.Run(kind, func(t *testing.T) {
			forBackends(t, func(t *testing.T, b backendCase) {
				pn.checkForced(t, b, kind)
			})
		})
	}
}

func (pn *proxyNet) checkForced(t *testing.T, b backendCase, kind string) {
	password := "pw-" + newToken()
	p := pn.startProxy(t, kind, password, password, nil)
	script, paths := pn.clientScript(b)
	args := append(p.args, "--summary", "--summary-format", "json")
	if b.backend == "rootless" {
		args = append(args, "--host-loopback")
	}
	var cmdline []byte
	res := pn.traceIn(t, proxyRun{
		b: b, args: args, env: p.env,
		command: []string{"sh", "-c", script},
		during: func(pid int) {
			cmdline, _ = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		},
	})
	if res.code != 0 {
		t.Fatalf("exit %d; stdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}

	pn.checkReachedViaProxy(t, p, res, paths)
	pn.checkAsked(t, p)
	pn.checkProxiedEvents(t, res, len(paths))
	checkSummaryCounts(t, res.stderr, len(paths))
	checkReportCounts(t, res, len(paths))
	if !strings.Contains(string(cmdline), "trace") {
		t.Errorf("/proc/PID/cmdline = %q, want childflow's", cmdline)
	}
	checkNoSecret(t, password, map[string]string{
		"stdout (with the command's environment)": res.stdout, "stderr": res.stderr,
		"flow log": logText(t, res), "/proc/PID/cmdline": string(cmdline),
	})
}

// checkReachedViaProxy checks that every request reached the origin from
// one of the proxy's own connections.
func (pn *proxyNet) checkReachedViaProxy(t *testing.T, p *proxyUnderTest, res *result,
	paths []string) {
	t.Helper()
	got := peers(res.stdout)
	out := p.srv.Outbound()
	for _, path := range paths {
		peer, ok := got[path]
		switch {
		case !ok:
			t.Errorf("%s: no answer from the origin; stderr:\n%s", path, res.stderr)
		case !slices.Contains(out, peer):
			t.Errorf("%s: the origin saw %s, want one of the proxy's connections %v",
				path, peer, out)
		}
	}
	if peer, ok := got["/direct"]; !ok || slices.Contains(out, peer) {
		t.Errorf("/direct (loopback, not proxied): peer %v (answered %v), want a peer "+
			"that is not the proxy", peer, ok)
	}
}

// checkAsked checks that the proxy was asked for each destination three
// times (curl, python3, Go), by name when the program resolved one.
func (pn *proxyNet) checkAsked(t *testing.T, p *proxyUnderTest) {
	t.Helper()
	asked := map[string]int{}
	for _, r := range p.srv.Requests() {
		asked[r]++
	}
	want := map[string]int{}
	for _, c := range pn.cases {
		want[p.want(c, pn.origin.port())] += 3
	}
	for target, n := range want {
		if asked[target] != n {
			t.Errorf("proxy asked for %s %d times, want %d (all requests: %v)",
				target, asked[target], n, p.srv.Requests())
		}
	}
	if len(p.srv.Requests()) != 3*len(pn.cases) {
		t.Errorf("proxy got %d requests, want %d: %v", len(p.srv.Requests()),
			3*len(pn.cases), p.srv.Requests())
	}
}

// checkProxiedEvents checks connect_attempt and connect_result of the
// connections to the origin: n of each, via_proxy, results ok.
func (pn *proxyNet) checkProxiedEvents(t *testing.T, res *result, n int) {
	t.Helper()
	toOrigin := func(m map[string]any) bool { return num(m, "remote_port") == int64(pn.origin.port()) }
	for _, ev := range []string{"connect_attempt", "connect_result"} {
		evs := res.events(ev, toOrigin)
		if len(evs) != n {
			t.Errorf("got %d %s events to the origin, want %d", len(evs), ev, n)
		}
		for _, m := range evs {
			if m["via_proxy"] != true {
				t.Errorf("%s via_proxy = %v, want true: %v", ev, m["via_proxy"], m)
			}
			if ev == "connect_result" && m["status"] != "ok" {
				t.Errorf("connect_result status %v, want ok: %v", m["status"], m)
			}
		}
	}
	direct := res.events("connect_attempt", func(m map[string]any) bool {
		return num(m, "remote_port") == int64(pn.local.Port())
	})
	if len(direct) != 1 || direct[0]["via_proxy"] != false {
		t.Errorf("connect_attempt to the loopback server = %v, want one with via_proxy false",
			direct)
	}
}

// connectCounts reads the proxied and direct counts from a JSON summary or
// report.
type connectCounts struct {
	Report struct {
		Connects struct {
			Proxied int `json:"proxied"`
			Direct  int `json:"direct"`
		} `json:"connects"`
	} `json:"report"`
}

func checkSummaryCounts(t *testing.T, stderr string, proxied int) {
	t.Helper()
	i := strings.Index(stderr, "{")
	if i < 0 {
		t.Fatalf("no JSON summary on stderr:\n%s", stderr)
	}
	var sum connectCounts
	if err := json.NewDecoder(strings.NewReader(stderr[i:])).Decode(&sum); err != nil {
		t.Fatalf("parse summary: %v\n%s", err, stderr)
	}
	c := sum.Report.Connects
	if c.Proxied != proxied || c.Direct < 1 {
		t.Errorf("summary counts %d proxied, %d direct; want %d proxied, at least 1 direct",
			c.Proxied, c.Direct, proxied)
	}
}

// checkReportCounts reads the flow log back with childflow report.
func checkReportCounts(t *testing.T, res *result, proxied int) {
	t.Helper()
	out, err := exec.Command(binary(t), "report", filepath.Join(res.dir, "flows.jsonl")).
		CombinedOutput()
	if err != nil {
		t.Fatalf("childflow report: %v\n%s", err, out)
	}
	want := fmt.Sprintf("(%d via proxy, ", proxied)
	if !strings.Contains(string(out), want) {
		t.Errorf("report lacks %q:\n%s", want, out)
	}
}

func logText(t *testing.T, res *result) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(res.dir, "flows.jsonl"))
	if err != nil {
		t.Fatal(err)
	}

	return string(b)
}

// checkNoSecret fails for every place that holds secret.
func checkNoSecret(t *testing.T, secret string, places map[string]string) {
	t.Helper()
	for where, text := range places {
		if strings.Contains(text, secret) {
			t.Errorf("the proxy password appears in %s", where)
		}
	}
}

// TestProxyWrongPassword gives childflow a wrong password: each connect of
// the program fails promptly, connect_result says what the proxy answered,
// and --fail-on-leak does not fire (a refusal by the proxy is no policy
// violation).
func TestProxyWrongPassword(t *testing.T) {
	pn := newProxyNet(t)
	for _, kind := range proxyKinds {
		t.Run(kind, func(t *testing.T) {
			forBackends(t, func(t *testing.T, b backendCase) {
				pn.checkWrongPassword(t, b, kind)
			})
		})
	}
}

func (pn *proxyNet) checkWrongPassword(t *testing.T, b backendCase, kind string) {
	real, wrong := "pw-"+newToken(), "bad-"+newToken()
	p := pn.startProxy(t, kind, real, wrong, nil)
	c := pn.cases[0]
	res := pn.traceIn(t, proxyRun{
		b: b, args: append(p.args, "--fail-on-leak"), env: p.env,
		command: []string{"python3", pn.pyCli, c.host, strconv.Itoa(pn.origin.port()), "/wrong"},
	})
	if res.code != 0 || strings.Contains(res.stderr, "fail-on-leak") {
		t.Errorf("exit %d, want 0 without a --fail-on-leak message; stderr:\n%s",
			res.code, res.stderr)
	}

	var errno, ms int
	if _, err := fmt.Sscanf(res.stdout, "ERR /wrong %d %d", &errno, &ms); err != nil {
		t.Fatalf("the program's exchange did not fail: %q", res.stdout)
	}
	if ms > 2000 {
		t.Errorf("the program's connection failed after %d ms, want < 2000", ms)
	}

	results := res.events("connect_result", func(m map[string]any) bool {
		return num(m, "remote_port") == int64(pn.origin.port())
	})
	want := "407"
	if kind == "socks5h" {
		want = "authentication failed"
	}
	if len(results) != 1 || results[0]["status"] != "error" ||
		!strings.Contains(str(results[0], "error"), want) || results[0]["via_proxy"] != true {
		t.Errorf("connect_result = %v, want one via the proxy with status error naming %q",
			results, want)
	}
	if v := res.events("policy_violation", nil); len(v) != 0 {
		t.Errorf("got policy violations %v, want none", v)
	}
	checkNoSecret(t, wrong, map[string]string{"stdout": res.stdout, "stderr": res.stderr,
		"flow log": logText(t, res)})
}

// TestProxyOnly sends UDP and ICMP under --proxy-only: both are denied and
// logged as proxy_only, nothing reaches the server namespace, while DNS is
// answered through the forwarder and TCP goes through the proxy.
func TestProxyOnly(t *testing.T) {
	pn := newProxyNet(t)
	forBackends(t, func(t *testing.T, b backendCase) {
		pn.checkProxyOnly(t, b)
	})
}

// proxyOnlyKinds are the attempts of TestProxyOnly per backend: ping
// sockets on the eBPF backend (the client namespace allows them; raw sockets
// are refused at creation there, which the policy tests cover); the rootless
// command is root in its own namespaces and sends raw ICMP.
func proxyOnlyKinds(b backendCase) []string {
	if b.backend == "ebpf" {
		return []string{"udp-sendto", "udp-connect", "ping"}
	}

	return []string{"udp-sendto", "udp-connect", "raw-icmp"}
}

func (pn *proxyNet) checkProxyOnly(t *testing.T, b backendCase) {
	password := "pw-" + newToken()
	p := pn.startProxy(t, "http", password, password, nil)
	rec := &sightings{}
	udpPorts := map[string]int{"udp-sendto": serveUDP(t, pn.top.Server, rec),
		"udp-connect": serveUDP(t, pn.top.Server, rec)}
	recordEchoes(t, pn.top.Server, rec)
	allowPing(t, pn.top.Client)
	script := writeFile(t, pn.files, "attempt.py", attemptScript, 0o644)

	var specs []string
	planned := map[string]attempt{}
	// Each attempt has its own destination, by which its violation is
	// found: the command's pids are those of its own pid namespace.
	for fi, public := range []netip.Addr{pn.top.Public4, pn.top.Public6} {
		for _, kind := range proxyOnlyKinds(b) {
			a := attempt{id: kind + "-" + public.String(), kind: kind, dst: public,
				port: udpPorts[kind], token: newToken()}
			if kind == "raw-icmp" {
				a.dst = pn.cases[4+fi].ip
			}
			planned[a.id] = a
			specs = append(specs, fmt.Sprintf("%s,%s,%s,%d,%s,%s,1", a.id, kind, a.dst, a.port,
				a.token, pn.top.Client6))
		}
	}

	c := pn.cases[0]
	shell := fmt.Sprintf("python3 %s %s; python3 %s %s %d /only",
		script, strings.Join(specs, " "), pn.pyCli, c.host, pn.origin.port())
	res := pn.traceIn(t, proxyRun{b: b, args: append(p.args, "--proxy-only"), env: p.env,
		command: []string{"sh", "-c", shell}})
	if res.code != 0 {
		t.Fatalf("exit %d; stdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}

	time.Sleep(300 * time.Millisecond) // let late datagrams arrive
	results := parseResults(t, res.stdout)
	for id, a := range planned {
		if rec.saw(a.token) {
			t.Errorf("%s reached the server under --proxy-only", id)
		}
		checkProxyOnlyViolation(t, res, a, results[id])
	}
	pn.checkProxyOnlyDNS(t, res, p, c)
}

// allowPing lets every group open ping sockets in ns.
func allowPing(t *testing.T, ns *testenv.Netns) {
	t.Helper()
	err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
	})
	if err != nil {
		t.Fatalf("allow ping sockets in %s: %v", ns, err)
	}
}

// checkProxyOnlyViolation wants a proxy_only violation for attempt a: to
// its destination, or with no destination when its socket was refused.
func checkProxyOnlyViolation(t *testing.T, res *result, a attempt, r attemptResult) {
	t.Helper()
	proto := "udp"
	if !strings.HasPrefix(a.kind, "udp") {
		proto = map[bool]string{true: "icmpv6", false: "icmpv4"}[a.dst.Is6()]
	}
	refused := r.stage == "socket" && r.errno == int(syscall.EPERM)
	viols := res.events("policy_violation", func(m map[string]any) bool {
		if refused {
			return str(m, "protocol") == proto && str(m, "remote_ip") == ""
		}
		return str(m, "remote_ip") == a.dst.String() && str(m, "protocol") == proto &&
			(a.port == 0 || num(m, "remote_port") == int64(a.port))
	})
	if len(viols) == 0 {
		t.Errorf("%s (errno %d at %s): no policy_violation, want one with reason proxy_only",
			a.id, r.errno, r.stage)
	}
	for _, v := range viols {
		if str(v, "reason_code") != "proxy_only" || str(v, "control") != "--proxy-only" ||
			str(v, "protocol") != proto {
			t.Errorf("%s: violation %v, want protocol %s, reason_code proxy_only, control "+
				"--proxy-only", a.id, v, proto)
		}
	}
}

// checkProxyOnlyDNS wants DNS answered through the forwarder and TCP through
// the proxy under --proxy-only.
func (pn *proxyNet) checkProxyOnlyDNS(t *testing.T, res *result, p *proxyUnderTest,
	c proxyCase) {
	t.Helper()
	if got := peers(res.stdout)["/only"]; !slices.Contains(p.srv.Outbound(), got) {
		t.Errorf("TCP through the proxy under --proxy-only: peer %v, want the proxy's; "+
			"stdout:\n%s", got, res.stdout)
	}
	answers := res.events("dns_answer", func(m map[string]any) bool {
		return str(m, "qname") == c.host && str(m, "mode") == "relayed"
	})
	if len(answers) == 0 {
		t.Errorf("no relayed dns_answer for %s: DNS must still work under --proxy-only", c.host)
	}
	for _, v := range res.events("policy_violation", nil) {
		if num(v, "remote_port") == 53 || str(v, "protocol") == "dns" {
			t.Errorf("DNS denied under --proxy-only: %v", v)
		}
	}
}

// TestProxySlowProxy holds back the proxy's answer for one destination: a
// connection to another one succeeds meanwhile.
func TestProxySlowProxy(t *testing.T) {
	pn := newProxyNet(t)
	forBackends(t, func(t *testing.T, b backendCase) {
		pn.checkSlowProxy(t, b)
	})
}

func (pn *proxyNet) checkSlowProxy(t *testing.T, b backendCase) {
	const hold = 3 * time.Second
	slow, fast := pn.cases[4], pn.cases[0] // ip4, dns4
	password := "pw-" + newToken()
	p := pn.startProxy(t, "http", password, password, func(target string) time.Duration {
		if strings.HasPrefix(target, slow.ip.String()+":") {
			return hold
		}
		return 0
	})
	port := pn.origin.port()
	script := fmt.Sprintf(`stamp() { python3 -c 'import sys, time; print(sys.argv[1], int(time.monotonic()*1000))' $1; }
python3 %[1]s %[2]s %[3]d /slow > slow.out &
sleep 0.3
python3 %[1]s %[4]s %[3]d /fast
stamp fast-done
wait
cat slow.out
stamp slow-done`, pn.pyCli, slow.host, port, fast.host)
	start := time.Now()
	res := pn.traceIn(t, proxyRun{b: b, args: p.args, env: p.env,
		command: []string{"sh", "-c", script}})
	if res.code != 0 {
		t.Fatalf("exit %d; stdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}

	got := peers(res.stdout)
	for _, path := range []string{"/slow", "/fast"} {
		if !slices.Contains(p.srv.Outbound(), got[path]) {
			t.Errorf("%s: peer %v, want the proxy's; stdout:\n%s", path, got[path], res.stdout)
		}
	}
	var fastAt, slowAt int64
	for _, l := range strings.Split(res.stdout, "\n") {
		_, _ = fmt.Sscanf(l, "fast-done %d", &fastAt)
		_, _ = fmt.Sscanf(l, "slow-done %d", &slowAt)
	}
	if gap := time.Duration(slowAt-fastAt) * time.Millisecond; gap < hold/2 {
		t.Errorf("the fast connection finished %s before the slow one, want more than %s "+
			"(it waited for the slow proxy answer)", gap, hold/2)
	}
	if d := time.Since(start); d < hold {
		t.Errorf("the run took %s, less than the proxy's hold of %s", d, hold)
	}
}

// TestProxySecretsNotShown checks --dump-profile and a failing run for the
// password given with -P, $CHILDFLOW_PROXY_PASSWORD and a password file.
func TestProxySecretsNotShown(t *testing.T) {
	password := "pw-" + newToken()
	file := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(file, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	closed := testenv.ClosedLoopbackPort(t)
	for _, tc := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flag", []string{"-P", password}, nil},
		{"env", nil, []string{"CHILDFLOW_PROXY_PASSWORD=" + password}},
		{"file", []string{"--proxy-password-file", file}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := append([]string{"trace", "--proxy", "https://" + closed.String(),
				"-U", proxyUser}, tc.args...)
			dump := exec.Command(binary(t), append(base, "--dump-profile", "--", "true")...)
			dump.Env = append(proxyFreeEnv(), tc.env...)
			out, err := dump.CombinedOutput()
			if err != nil || !strings.Contains(string(out), proxyUser) {
				t.Fatalf("--dump-profile: %v, want a profile naming the user:\n%s", err, out)
			}
			checkNoSecret(t, password, map[string]string{"--dump-profile": string(out)})

			badCA := exec.Command(binary(t), append(base, "--proxy-ca", file, "--", "true")...)
			badCA.Env = dump.Env
			out, _ = badCA.CombinedOutput()
			checkNoSecret(t, password, map[string]string{"a usage error": string(out)})
		})
	}
}
