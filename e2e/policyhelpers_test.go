package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
)

// attemptScript performs network attempts named on its command line, each in
// a forked child so that each has its own pid (the flow log's pid, and the
// key under which the kernel sums up repeated violations). Every argument is
// "id,kind,dst,port,token,src,count"; for each the script prints
//
//	RESULT id=ID pid=PID errno=N stage=STAGE ms=MS reply=R
//
// where errno is 0 on success, stage is the step that failed (or "done"),
// ms the time the failing (or last) step took, and reply 1 or 0 when a ping
// socket got, or did not get, its echo reply ("-" when not applicable).
// "--exit N" makes the script exit with N after the attempts.
const attemptScript = `
import ctypes, errno, os, socket, struct, sys, time

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def echo(v6, token, dst=None, src=None):
    body = struct.pack("!HH", 0x4346, 1) + token
    typ = 128 if v6 else 8
    if not v6:
        return struct.pack("!BBH", typ, 0, csum(struct.pack("!BBH", typ, 0, 0) + body)) + body
    if src is None:
        return struct.pack("!BBH", typ, 0, 0) + body
    msg = struct.pack("!BBH", typ, 0, 0) + body
    pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    pseudo += struct.pack("!I3xB", len(msg), 58)
    return struct.pack("!BBH", typ, 0, csum(pseudo + msg)) + body

class Attempt:
    def __init__(self, spec):
        f = spec.split(",")
        self.id, self.kind, self.dst = f[0], f[1], f[2]
        self.port, self.token, self.src = int(f[3]), f[4].encode(), f[5]
        self.count = int(f[6] or "1")
        self.stage, self.ms, self.reply = "socket", 0.0, "-"

    def step(self, stage, fn, *args):
        self.stage = stage
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.ms = (time.monotonic() - t0) * 1000

    def sock(self, family, typ, proto=0):
        s = self.step("socket", socket.socket, family, typ, proto)
        s.settimeout(2)
        return s

def tcp(a):
    s = a.sock(fam(a.dst), socket.SOCK_STREAM)
    a.step("connect", s.connect, (a.dst, a.port))
    a.step("send", s.sendall, a.token)
    s.close()

def tcp_loop(a):
    # Half the connects, a pause longer than the kernel's one-second
    # reporting interval, then the rest. Every one must fail with EPERM.
    a.stage = "connect"
    t0 = time.monotonic()
    for i in range(a.count):
        if i == a.count // 2:
            time.sleep(1.2)
        s = socket.socket(fam(a.dst), socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((a.dst, a.port))
            raise OSError(errno.EISCONN, "connect %d succeeded" % i)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
        finally:
            s.close()
    a.ms = (time.monotonic() - t0) * 1000
    raise OSError(errno.EPERM, "all denied")

def tcp_mapped(a):
    s = a.sock(socket.AF_INET6, socket.SOCK_STREAM)
    a.step("connect", s.connect, ("::ffff:" + a.dst, a.port))
    a.step("send", s.sendall, a.token)
    s.close()

def tfo(a):
    # Blocking, so that sendto waits for the handshake (a non-blocking one
    # without a cookie returns EINPROGRESS); SO_SNDTIMEO bounds the wait.
    s = a.sock(fam(a.dst), socket.SOCK_STREAM)
    s.setblocking(True)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 2, 0))
    a.step("send", s.sendto, a.token, socket.MSG_FASTOPEN, (a.dst, a.port))
    s.close()

def udp_connect(a, family=None, dst=None):
    s = a.sock(family or fam(a.dst), socket.SOCK_DGRAM)
    a.step("connect", s.connect, (dst or a.dst, a.port))
    a.step("send", s.send, a.token)
    s.close()

def udp_connect_mapped(a):
    udp_connect(a, socket.AF_INET6, "::ffff:" + a.dst)

def udp_sendto(a):
    s = a.sock(fam(a.dst), socket.SOCK_DGRAM)
    a.step("send", s.sendto, a.token, (a.dst, a.port))
    s.close()

def udp_sendto_mapped(a):
    s = a.sock(socket.AF_INET6, socket.SOCK_DGRAM)
    a.step("send", s.sendto, a.token, ("::ffff:" + a.dst, a.port))
    s.close()

def udp_sendmsg(a):
    s = a.sock(fam(a.dst), socket.SOCK_DGRAM)
    a.step("send", s.sendmsg, [a.token], [], 0, (a.dst, a.port))
    s.close()

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]

class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

def sockaddr(dst, port):
    if ":" in dst:
        return struct.pack("=HHI16sI", socket.AF_INET6, socket.htons(port), 0,
                           socket.inet_pton(socket.AF_INET6, dst), 0)
    return struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port),
                       socket.inet_pton(socket.AF_INET, dst))

def udp_sendmmsg(a):
    # Two datagrams to the same destination in one call.
    s = a.sock(fam(a.dst), socket.SOCK_DGRAM)
    libc = ctypes.CDLL(None, use_errno=True)
    name = ctypes.create_string_buffer(sockaddr(a.dst, a.port))
    data = ctypes.create_string_buffer(a.token, len(a.token))
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), len(a.token))
    msgs = (mmsghdr * 2)()
    for m in msgs:
        m.hdr = msghdr(ctypes.cast(name, ctypes.c_void_p), len(name.raw), ctypes.pointer(iov), 1,
                       None, 0, 0)
    def send():
        n = libc.sendmmsg(s.fileno(), msgs, 2, 0)
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if n != 2:
            raise OSError(errno.EIO, "sendmmsg sent %d of 2" % n)
    a.step("send", send)
    s.close()

def ping(a, connect=False):
    v6 = ":" in a.dst
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    s = a.sock(fam(a.dst), socket.SOCK_DGRAM, proto)
    pkt = echo(v6, a.token)
    if connect:
        a.step("connect", s.connect, (a.dst, 0))
        a.step("send", s.send, pkt)
    else:
        a.step("send", s.sendto, pkt, (a.dst, 0))
    s.settimeout(0.5)
    try:
        a.reply = "1" if a.token in s.recv(2048) else "0"
    except OSError:
        a.reply = "0"
    s.close()

def ping_connect(a):
    ping(a, True)

def raw_icmp(a):
    v6 = ":" in a.dst
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    s = a.sock(fam(a.dst), socket.SOCK_RAW, proto)
    a.step("send", s.sendto, echo(v6, a.token), (a.dst, 0))
    s.close()

def raw_ip(a):
    # IPPROTO_RAW: the script writes the IP header itself.
    v6 = ":" in a.dst
    s = a.sock(fam(a.dst), socket.SOCK_RAW, socket.IPPROTO_RAW)
    if v6:
        msg = echo(True, a.token, a.dst, a.src)
        ip = struct.pack("!IHBB", 6 << 28, len(msg), 58, 64)
        ip += socket.inet_pton(socket.AF_INET6, a.src) + socket.inet_pton(socket.AF_INET6, a.dst)
    else:
        msg = echo(False, a.token)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(msg), 0, 0, 64, 1, 0,
                         bytes(4), socket.inet_pton(socket.AF_INET, a.dst))
    a.step("send", s.sendto, ip + msg, (a.dst, 0))
    s.close()

KINDS = {
    "tcp": tcp, "tcp-loop": tcp_loop, "tcp-mapped": tcp_mapped, "tfo": tfo,
    "udp-connect": udp_connect, "udp-connect-mapped": udp_connect_mapped,
    "udp-sendto": udp_sendto, "udp-sendto-mapped": udp_sendto_mapped,
    "udp-sendmsg": udp_sendmsg, "udp-sendmmsg": udp_sendmmsg,
    "ping": ping, "ping-connect": ping_connect, "raw-icmp": raw_icmp, "raw-ip": raw_ip,
}

def attempt(spec):
    a = Attempt(spec)
    err = 0
    try:
        KINDS[a.kind](a)
        a.stage = "done"
    except socket.timeout:
        err = errno.ETIMEDOUT
    except OSError as e:
        err = e.errno or errno.EIO
    line = "RESULT id=%s pid=%d errno=%d stage=%s ms=%.1f reply=%s\n" % (
        a.id, os.getpid(), err, a.stage, a.ms, a.reply)
    os.write(1, line.encode())

def main():
    args, code = sys.argv[1:], 0
    if args[:1] == ["--exit"]:
        code, args = int(args[1]), args[2:]
    for spec in args:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                attempt(spec)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    # Let the last datagram leave before the tree ends: the rootless backend
    # reports a packet still queued at the tap when the command exits as
    # lost.
    time.sleep(0.2)
    sys.exit(code)

main()
`

// writeAttemptScript writes attemptScript into a temporary directory that
// every user may read (unprivileged runs execute it too) and returns its
// path.
func writeAttemptScript(t testing.TB) string {
	t.Helper()
	path := filepath.Join(run{unprivileged: true}.tempDir(t), "attempt.py")
	if err := os.WriteFile(path, []byte(attemptScript), 0o644); err != nil {
		t.Fatalf("write attempt script: %v", err)
	}

	return path
}

// attemptResult is one RESULT line of attemptScript.
type attemptResult struct {
	pid   int
	errno int
	stage string
	ms    float64
	reply string
}

// parseResults reads the RESULT lines of attemptScript's output by id.
func parseResults(t testing.TB, out string) map[string]attemptResult {
	t.Helper()
	res := map[string]attemptResult{}
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, "RESULT ")
		if !ok {
			continue
		}

		kv := map[string]string{}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			kv[k] = v
		}
		var r attemptResult
		r.pid, _ = strconv.Atoi(kv["pid"])
		r.errno, _ = strconv.Atoi(kv["errno"])
		r.ms, _ = strconv.ParseFloat(kv["ms"], 64)
		r.stage, r.reply = kv["stage"], kv["reply"]
		res[kv["id"]] = r
	}

	return res
}

// tokenCounter makes attempt tokens unique within the test process.
var tokenCounter atomic.Uint64

func newToken() string {
	// The trailing dash keeps one token from being a prefix of another.
	return fmt.Sprintf("cftok-%d-%d-", os.Getpid(), tokenCounter.Add(1))
}

// sightings records what servers in a namespace received: the payloads of
// accepted TCP connections and of UDP datagrams, and ICMP echo requests.
// Tests look for an attempt's token in it.
type sightings struct {
	mu  sync.Mutex
	got [][]byte
}

func (s *sightings) add(b []byte) {
	s.mu.Lock()
	s.got = append(s.got, bytes.Clone(b))
	s.mu.Unlock()
}

// saw reports whether any record holds token.
func (s *sightings) saw(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.got {
		if bytes.Contains(b, []byte(token)) {
			return true
		}
	}

	return false
}

// waitSaw polls for token for up to two seconds.
func (s *sightings) waitSaw(token string) bool {
	deadline := time.Now().Add(2 * time.Second)
	for !s.saw(token) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}

	return true
}

// serveTCP accepts on a dual-stack listener in ns and records what each
// connection sends (an empty record for a connection that sent nothing). It
// returns the port.
func serveTCP(t testing.TB, ns *testenv.Netns, rec *sightings) int {
	t.Helper()
	ln := testenv.ListenIn(t, ns, "tcp", "[::]:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(3 * time.Second))
				b, _ := io.ReadAll(io.LimitReader(c, 256))
				rec.add(append([]byte("tcp accepted:"), b...))
			}()
		}
	}()

	return ln.Addr().(*net.TCPAddr).Port
}

// serveUDP records every datagram that reaches a dual-stack socket in ns and
// returns its port.
func serveUDP(t testing.TB, ns *testenv.Netns, rec *sightings) int {
	t.Helper()
	pc := testenv.ListenPacketIn(t, ns, "udp", "[::]:0")
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			rec.add(buf[:n])
		}
	}()

	return pc.LocalAddr().(*net.UDPAddr).Port
}

// recordEchoes records the ICMP and ICMPv6 echo requests that arrive in ns,
// through raw sockets of the test process (not traced).
func recordEchoes(t testing.TB, ns *testenv.Netns, rec *sightings) {
	t.Helper()
	for _, l := range []struct {
		network, addr string
		echoType      byte
	}{{"ip4:icmp", "0.0.0.0", 8}, {"ip6:ipv6-icmp", "::", 128}} {
		pc := testenv.ListenPacketIn(t, ns, l.network, l.addr)
		go func() {
			buf := make([]byte, 2048)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				if n > 0 && buf[0] == l.echoType {
					rec.add(buf[:n])
				}
			}
		}()
	}
}

// policyNet is the topology of the policy tests with recording servers:
// sightings per namespace, and the echo recorders already running.
type policyNet struct {
	top    *testenv.PolicyTopology
	script string
	server *sightings // in top.Server
	client *sightings // in top.Client (loopback destinations)
	b      backendCase
	e      expectation
}

// forPolicyBackends runs fn for every backend case, in the client
// namespace (the harness enters it as root and then drops to the
// unprivileged user when the case asks for it).
func forPolicyBackends(t *testing.T, fn func(t *testing.T, b backendCase)) {
	t.Helper()
	for _, b := range backendCases {
		t.Run(b.name, func(t *testing.T) {
			testenv.RequireRoot(t)
			fn(t, b)
		})
	}
}

// newPolicyNet builds the topology for backend case b.
func newPolicyNet(t *testing.T, b backendCase) *policyNet {
	t.Helper()
	requireEBPF(t)
	testenv.RequireTool(t, "python3")
	pn := &policyNet{
		b: b, e: expect(b),
		top:    testenv.TopologyForPolicyTests(t),
		script: writeAttemptScript(t),
		server: &sightings{},
		client: &sightings{},
	}
	// Ping sockets need the caller's group in this range; root is group 0.
	err := pn.top.Client.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
	})
	if err != nil {
		t.Fatalf("allow ping sockets in netns %s: %v", pn.top.Client, err)
	}
	recordEchoes(t, pn.top.Server, pn.server)
	recordEchoes(t, pn.top.Client, pn.client)

	return pn
}

// where returns the namespace serving dst and its sightings: the client's
// own loopback (the unspecified address reaches it too), or the server
// namespace.
func (pn *policyNet) where(dst netip.Addr) (*testenv.Netns, *sightings) {
	if d := dst.Unmap(); d.IsLoopback() || d.IsUnspecified() {
		return pn.top.Client, pn.client
	}

	return pn.top.Server, pn.server
}

// src is the source address a raw IPv6 packet to asked must carry: the
// command's own address.
func (pn *policyNet) src(asked netip.Addr) string {
	switch {
	case !asked.Is6():
		return ""
	case pn.e.ownNamespaces:
		return "fd00:cf::100"
	case asked.IsLoopback():
		return "::1"
	}

	return pn.top.Client6.String()
}

// attempt is one planned attempt of a policy run.
type attempt struct {
	id    string
	kind  string
	dst   netip.Addr // the destination as the host sees it (flow log)
	asked netip.Addr // the address the command uses for dst
	port  int        // 0 for ICMP and raw
	token string
	count int
	rec   *sightings
}

// plan starts the server an attempt of kind to dst needs and returns the
// attempt.
func (pn *policyNet) plan(t *testing.T, id, kind string, dst netip.Addr) attempt {
	t.Helper()
	ns, rec := pn.where(dst)
	a := attempt{id: id, kind: kind, dst: dst, asked: pn.e.hostAddr(dst), token: newToken(),
		count: 1, rec: rec}
	switch protoOfKind(kind) {
	case "tcp":
		a.port = serveTCP(t, ns, rec)
	case "udp":
		a.port = serveUDP(t, ns, rec)
	}

	return a
}

// spec is the attempt as attemptScript's argument.
func (a attempt) spec(pn *policyNet) string {
	return fmt.Sprintf("%s,%s,%s,%d,%s,%s,%d", a.id, a.kind, a.asked, a.port, a.token,
		pn.src(a.asked), a.count)
}

// protoOfKind is the transport an attempt kind uses: "tcp", "udp" or "icmp".
func protoOfKind(kind string) string {
	switch {
	case strings.HasPrefix(kind, "tcp"), kind == "tfo":
		return "tcp"
	case strings.HasPrefix(kind, "udp"):
		return "udp"
	}

	return "icmp"
}

// isMapped tells the kinds that use an IPv6 socket towards an IPv4-mapped
// address.
func isMapped(kind string) bool { return strings.HasSuffix(kind, "-mapped") }

// runAttempts runs the attempts under childflow with args inside the
// client namespace and returns the run and the results by attempt id.
func (pn *policyNet) runAttempts(t *testing.T, args []string, exit int,
	attempts ...attempt) (*result, map[string]attemptResult) {
	t.Helper()
	cmd := []string{"python3", pn.script}
	if exit != 0 {
		cmd = append(cmd, "--exit", strconv.Itoa(exit))
	}
	for _, a := range attempts {
		cmd = append(cmd, a.spec(pn))
	}

	// The matrix exercises the BPF enforcement points themselves, with a
	// root command that keeps CAP_NET_RAW (--keep-caps) so that raw sockets
	// can be tried; TestConfinedRootCommand covers the default.
	full := append([]string{"--keep-root", "--keep-caps"}, pn.e.hostArgs...)
	res := run{
		args:    append(full, args...),
		command: cmd, flowLog: true, ns: pn.top.Client.Name, timeout: 90 * time.Second,
	}.with(pn.b).do(t)
	results := parseResults(t, res.stdout)
	for _, a := range attempts {
		if _, ok := results[a.id]; !ok {
			t.Fatalf("no result for attempt %s (exit %d); stdout:\n%s\nstderr:\n%s",
				a.id, res.code, res.stdout, res.stderr)
		}
	}

	return res, results
}

// violationsOf returns the policy_violation records of pid.
func violationsOf(res *result, pid int) []map[string]any {
	return res.events("policy_violation", func(m map[string]any) bool {
		return num(m, "pid") == int64(pid)
	})
}

// violationsTo returns the policy_violation records of protocol and
// remote: the records of an attempt on a backend whose violations are
// matched by destination.
func violationsTo(res *result, protocol, remote string) []map[string]any {
	return res.events("policy_violation", func(m map[string]any) bool {
		return str(m, "protocol") == protocol && str(m, "remote") == remote
	})
}

// wantViolation is the policy_violation an attempt must produce. A nil
// pointer stands for JSON null.
type wantViolation struct {
	protocol, remote, action, reasonCode, control string
	remoteIP, matchedCIDR                         *string
	remotePort                                    *int
	pid                                           int
	comm                                          string
	count                                         int64
}

// checkViolation compares one flow-log record with want, field by field.
func checkViolation(t *testing.T, got map[string]any, want wantViolation) {
	t.Helper()
	strs := []struct {
		key  string
		want string
	}{
		{"protocol", want.protocol}, {"remote", want.remote}, {"action", want.action},
		{"reason_code", want.reasonCode}, {"control", want.control}, {"comm", want.comm},
	}
	for _, f := range strs {
		g, ok := got[f.key].(string)
		if f.key == "comm" && f.want == "" {
			// Not attributed: the field must be absent.
			ok, g = !ok, ""
		}
		if !ok || g != f.want {
			t.Errorf("%s = %#v, want %q", f.key, got[f.key], f.want)
		}
	}

	checkNullable(t, got, "remote_ip", want.remoteIP)
	checkNullable(t, got, "matched_cidr", want.matchedCIDR)
	var port *string
	if want.remotePort != nil {
		s := strconv.Itoa(*want.remotePort)
		port = &s
	}
	checkNullable(t, got, "remote_port", port)

	if p := num(got, "pid"); p != int64(want.pid) {
		t.Errorf("pid = %d, want %d", p, want.pid)
	}
	if c := num(got, "count"); c != want.count {
		t.Errorf("count = %d, want %d", c, want.count)
	}
	if r, _ := got["reason"].(string); r == "" {
		t.Errorf("reason (text) is empty")
	}
}

// checkNullable checks a field that is a string or number, or JSON null
// when want is nil. Numbers are compared in their decimal form.
func checkNullable(t *testing.T, got map[string]any, key string, want *string) {
	t.Helper()
	v, present := got[key]
	if !present {
		t.Errorf("%s is missing, want %s", key, show(want))
		return
	}

	var g *string
	switch x := v.(type) {
	case string:
		g = &x
	case float64:
		s := strconv.FormatFloat(x, 'f', -1, 64)
		g = &s
	}
	if (g == nil) != (want == nil) || (g != nil && *g != *want) {
		t.Errorf("%s = %#v, want %s", key, v, show(want))
	}
}

func show(s *string) string {
	if s == nil {
		return "null"
	}

	return strconv.Quote(*s)
}

func ptr[T any](v T) *T { return &v }
