package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/proxy/proxytest"
)

// With an http or socks5 proxy, the eBPF backend makes the program's own
// socket the tunnel: childflow connects it to the proxy and speaks the
// handshake while the program's connect waits. An https proxy, and
// --proxy-relay, go through the relay in childflow instead.

// joinClient connects to HOST:PORT, prints its own address, reads the line
// the target sends first, sends a GET for PATH and prints the answer's body
// and the byte counts of its side: "local ADDR", "greeting LINE", the body,
// "sent N received M"; or "ERR errno" when connecting fails.
const joinClient = `
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    s = socket.create_connection((host, port), timeout=10)
except OSError as e:
    print("ERR %d" % (e.errno or 0))
    sys.exit(0)
a = s.getsockname()
print("local %s" % (("[%s]:%d" if ":" in a[0] else "%s:%d") % (a[0], a[1])))
data = b""
while b"\n" not in data:
    b = s.recv(1)
    if not b:
        break
    data += b
print("greeting %s" % data.decode().strip())
req = ("GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode()
s.sendall(req)
body = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    body += b
print(body.split(b"\r\n\r\n", 1)[1].decode().strip())
print("sent %d received %d" % (len(req), len(data) + len(body)))
`

const joinGreeting = "hello-from-the-target"

// TestProxyJoin checks, for each kind of proxy and with --proxy-relay,
// which socket the proxy sees (the program's own when joined), that what
// the target sends first reaches the program, that the flow's byte counts
// are the program's alone (no handshake), that the capture holds no
// credential, and that the policy still denies a joined connect.
func TestProxyJoin(t *testing.T) {
	pn := newProxyNet(t)
	requireEBPF(t)
	b := backendCase{name: "ebpf", backend: "ebpf"}
	for _, tc := range []struct {
		kind   string
		relay  bool
		joined bool
	}{
		{"http", false, true},
		{"socks5h", false, true},
		{"https", false, false},
		{"http", true, false},
	} {
		name := tc.kind
		if tc.relay {
			name += "-relay"
		}
		t.Run(name, func(t *testing.T) {
			pn.checkJoin(t, b, tc.kind, tc.relay, tc.joined)
		})
	}
}

func (pn *proxyNet) checkJoin(t *testing.T, b backendCase, kind string, relay, joined bool) {
	password := "pw-" + newToken()
	p := pn.startProxy(t, kind, password, password, nil, func(o *proxytest.Options) {
		o.SendAfterConnect = []byte(joinGreeting + "\n")
	})
	cli := writeFile(t, pn.files, "join.py", joinClient, 0o644)
	denied := pn.cases[5] // ip6
	args := append(p.args, "--capture", "capture.pcapng", "--deny-cidr", denied.ip.String()+"/128")
	if relay {
		args = append(args, "--proxy-relay")
	}
	port := fmt.Sprint(pn.origin.port())
	var script strings.Builder
	for _, c := range pn.cases[:2] { // dns4, dns6
		fmt.Fprintf(&script, "python3 %s %s %s /join-%s > %s.out\n", cli, c.host, port, c.id, c.id)
	}
	fmt.Fprintf(&script, "python3 %s %s %s /denied\ncat dns4.out dns6.out", cli, denied.host, port)
	res := pn.traceIn(t, proxyRun{b: b, args: args, env: p.env,
		command: []string{"sh", "-c", script.String()}})
	if res.code != 0 {
		t.Fatalf("exit %d; stdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}

	for _, c := range pn.cases[:2] {
		out := readFile(t, filepath.Join(res.dir, c.id+".out"))
		local, sent, received := readJoinClient(t, out)
		if got := slices.Contains(p.srv.Clients(), local); got != joined {
			t.Errorf("%s: the proxy saw the program's socket %s: %v, want %v (proxy clients %v)",
				c.id, local, got, joined, p.srv.Clients())
		}
		if !strings.Contains(out, "greeting "+joinGreeting) {
			t.Errorf("%s: the target's first line did not reach the program:\n%s", c.id, out)
		}
		pn.checkJoinFlow(t, res, c, sent, received)
	}
	checkJoinDenied(t, res, p, denied.ip)
	checkCaptureSecret(t, res, password)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	return string(b)
}

// readJoinClient reads joinClient's output.
func readJoinClient(t *testing.T, out string) (netip.AddrPort, int64, int64) {
	t.Helper()
	var local netip.AddrPort
	var sent, received int64
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "local "); ok {
			local, _ = netip.ParseAddrPort(v)
		}
		_, _ = fmt.Sscanf(l, "sent %d received %d", &sent, &received)
	}
	if !local.IsValid() || sent == 0 || received == 0 {
		t.Fatalf("the client did not finish its exchange; stdout:\n%s", out)
	}

	return netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), sent, received
}

// checkJoinFlow checks the flow to case c's origin: one attempt, one result
// and one flow end via the proxy, with exactly the program's bytes.
func (pn *proxyNet) checkJoinFlow(t *testing.T, res *result, c proxyCase, sent, received int64) {
	t.Helper()
	toOrigin := func(m map[string]any) bool {
		return num(m, "remote_port") == int64(pn.origin.port()) && m["via_proxy"] == true &&
			str(m, "remote_ip") == c.ip.String()
	}
	for _, ev := range []string{"connect_attempt", "connect_result", "flow_end"} {
		if n := len(res.events(ev, toOrigin)); n != 1 {
			t.Errorf("%s: got %d %s events to the origin via the proxy, want 1", c.id, n, ev)
		}
	}
	for _, m := range res.events("flow_end", toOrigin) {
		if num(m, "bytes_out") != sent || num(m, "bytes_in") != received {
			t.Errorf("%s: flow_end bytes_out %d bytes_in %d, want the program's %d and %d: %v",
				c.id, num(m, "bytes_out"), num(m, "bytes_in"), sent, received, m)
		}
	}
	results := res.events("connect_result", toOrigin)
	attempts := res.events("connect_attempt", toOrigin)
	if len(results) == 1 && len(attempts) == 1 && num(results[0], "ts_ms") < num(attempts[0], "ts_ms") {
		t.Errorf("%s: connect_result (ts %d) before its connect_attempt (ts %d)", c.id,
			num(results[0], "ts_ms"), num(attempts[0], "ts_ms"))
	}
}

// checkJoinDenied checks that the connect to the denied address failed with
// EPERM, was logged as a violation and never reached the proxy.
func checkJoinDenied(t *testing.T, res *result, p *proxyUnderTest, ip netip.Addr) {
	t.Helper()
	if !strings.Contains(res.stdout, "ERR 1\n") {
		t.Errorf("the connect to the denied %s did not fail with EPERM; stdout:\n%s",
			ip, res.stdout)
	}
	v := res.events("policy_violation", func(m map[string]any) bool {
		return str(m, "remote_ip") == ip.String()
	})
	if len(v) != 1 || str(v[0], "comm") != "python3" {
		t.Errorf("violations for %s = %v, want one by python3", ip, v)
	}
	for _, r := range p.srv.Requests() {
		if strings.Contains(r, ip.String()) {
			t.Errorf("the proxy was asked for the denied %s: %v", ip, p.srv.Requests())
		}
	}
}

// checkCaptureSecret checks that the capture holds the program's request
// but neither the password nor the Basic credentials.
func checkCaptureSecret(t *testing.T, res *result, password string) {
	t.Helper()
	pcap, err := os.ReadFile(filepath.Join(res.dir, "capture.pcapng"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(pcap, []byte("GET /join")) {
		t.Errorf("the capture lacks the program's request")
	}
	basic := base64.StdEncoding.EncodeToString([]byte(proxyUser + ":" + password))
	for _, secret := range []string{password, basic} {
		if bytes.Contains(pcap, []byte(secret)) {
			t.Errorf("the capture holds the proxy credentials (%q)", secret[:4]+"...")
		}
	}
}

// interruptClient connects to HOST:PORT with an alarm handler that raises
// after half a second, and prints "interrupted MS" or "connected".
const interruptClient = `
import signal, socket, sys, time
class Alarm(Exception):
    pass
def on_alarm(*_):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.5)
t0 = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    print("connected")
except Alarm:
    print("interrupted %d" % int((time.monotonic() - t0) * 1000))
`

// TestProxyJoinInterrupted holds a joined connect at a proxy that answers
// after 10 s: a signal the program handles still interrupts its connect at
// once, as it would interrupt a connect to a slow host, and connect_result
// says so.
func TestProxyJoinInterrupted(t *testing.T) {
	pn := newProxyNet(t)
	requireEBPF(t)
	password := "pw-" + newToken()
	p := pn.startProxy(t, "http", password, password, func(string) time.Duration {
		return 10 * time.Second
	})
	cli := writeFile(t, pn.files, "interrupt.py", interruptClient, 0o644)
	c := pn.cases[0]
	res := pn.traceIn(t, proxyRun{b: backendCase{name: "ebpf", backend: "ebpf"}, args: p.args,
		env: p.env, command: []string{"python3", cli, c.host, fmt.Sprint(pn.origin.port())}})

	var ms int
	if _, err := fmt.Sscanf(res.stdout, "interrupted %d", &ms); err != nil || ms > 3000 {
		t.Fatalf("the connect was not interrupted within 3 s (exit %d); stdout:\n%s\nstderr:\n%s",
			res.code, res.stdout, res.stderr)
	}
	results := res.events("connect_result", func(m map[string]any) bool {
		return num(m, "remote_port") == int64(pn.origin.port())
	})
	if len(results) != 1 || !strings.Contains(str(results[0], "error"), "interrupted by a signal") {
		t.Errorf("connect_result = %v, want one error saying the signal interrupted it", results)
	}
}

// fakeProxy listens on 127.0.0.1:PROXYPORT of the network namespace it runs
// in, as if it were the proxy, connects to HOST:PORT, and prints what its
// listener received.
const fakeProxy = `
import socket, sys, threading
pport, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", pport))
l.listen(8)
l.settimeout(3)
got = []
def serve():
    try:
        c, _ = l.accept()
        c.settimeout(2)
        got.append(c.recv(4096))
    except OSError:
        pass
t = threading.Thread(target=serve)
t.start()
try:
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"hello")
    print("connected")
except OSError as e:
    print("connect errno %d" % (e.errno or 0))
t.join()
print("fake proxy got %r" % b"".join(got))
`

// TestProxyJoinOtherNetns runs a program that makes a network namespace of
// its own, where its listener poses as the proxy on the proxy's address: the
// joiner must not connect that program's socket (its handshake would hand
// the credentials to the fake), so nothing reaches the fake proxy.
func TestProxyJoinOtherNetns(t *testing.T) {
	pn := newProxyNet(t)
	requireEBPF(t)
	testenv.RequireTool(t, "unshare")
	password := "pw-" + newToken()
	p := pn.startProxy(t, "http", password, password, nil)
	cli := writeFile(t, pn.files, "fake.py", fakeProxy, 0o644)
	c := pn.cases[4] // ip4
	script := fmt.Sprintf("unshare -n sh -c 'ip link set lo up && python3 %s %d %s %d'", cli,
		p.srv.Addr().Port(), c.host, pn.origin.port())
	res := pn.traceIn(t, proxyRun{b: backendCase{name: "ebpf", backend: "ebpf"}, args: p.args,
		env: p.env, command: []string{"sh", "-c", script}})

	if !strings.Contains(res.stdout, "fake proxy got b''") {
		t.Errorf("the fake proxy in the program's namespace received something; stdout:\n%s\n"+
			"stderr:\n%s", res.stdout, res.stderr)
	}
	basic := base64.StdEncoding.EncodeToString([]byte(proxyUser + ":" + password))
	checkNoSecret(t, basic, map[string]string{"the fake proxy's input": res.stdout})
	if len(p.srv.Requests()) != 0 {
		t.Errorf("the real proxy got %v from another namespace, want nothing", p.srv.Requests())
	}
}
