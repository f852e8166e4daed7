package rootless_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/internal/testenv"
	"github.com/childflow/childflow/rootless"
)

// requireRootless skips unless this process can create the namespaces and
// open the tap (as root here; TestUnprivileged covers other users).
func requireRootless(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
}

// events collects the events of a run.
type events struct {
	mu  sync.Mutex
	evs []flows.Event
}

func (e *events) Emit(ev flows.Event) {
	flows.Prepare(ev)
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *events) all() []flows.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]flows.Event(nil), e.evs...)
}

// run runs the test binary in helper mode args inside the namespace and
// returns its output.
func run(t *testing.T, cfg rootless.Config, args ...string) (*rootless.Result, string) {
	t.Helper()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if cfg.Command == nil {
		cfg.Command = append([]string{self}, args...)
		cfg.Env = append(os.Environ(), "CF_RL_HELPER=1")
	}
	cfg.Stdout = &out
	if cfg.Stderr == nil {
		cfg.Stderr = &out
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	res, err := rootless.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run(%q): %v", cfg.Command, err)
	}

	return res, out.String()
}

// httpServer serves "hello" on a host loopback port and counts requests.
func httpServer(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	var hits atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, "hello")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	return netip.MustParseAddrPort(ln.Addr().String()), &hits
}

// gatewayURL is the URL of a host loopback port as the command reaches it.
func gatewayURL(ap netip.AddrPort) string {
	return fmt.Sprintf("http://%s:%d/", rootless.Gateway4, ap.Port())
}

func TestHTTPGetHostLoopback(t *testing.T) {
	requireRootless(t)
	addr, hits := httpServer(t)

	tests := []struct {
		loopback bool
		want     string
		code     int
	}{
		{true, "200 hello", 0},
		{false, "connection refused", 1},
	}

	for _, tt := range tests {
		t.Run(fmt.Sprint("loopback=", tt.loopback), func(t *testing.T) {
			before := hits.Load()
			res, out := run(t, rootless.Config{HostLoopback: tt.loopback}, "get", gatewayURL(addr))
			if !strings.Contains(out, tt.want) || res.ExitCode != tt.code {
				t.Fatalf("got exit %d output %q, want exit %d output with %q", res.ExitCode, out,
					tt.code, tt.want)
			}

			wantHits := int64(0)
			if tt.loopback {
				wantHits = 1
			}
			if got := hits.Load() - before; got != wantHits {
				t.Errorf("got %d requests at the host server, want %d", got, wantHits)
			}
		})
	}
}

func TestExitCodes(t *testing.T) {
	requireRootless(t)

	tests := []struct {
		name    string
		command []string
		code    int
		signal  syscall.Signal
	}{
		{"zero", []string{"sh", "-c", "exit 0"}, 0, 0},
		{"three", []string{"sh", "-c", "exit 3"}, 3, 0},
		{"not found", []string{"childflow-no-such-command"}, 127, 0},
		{"sigint", []string{"sh", "-c", "kill -INT $$"}, 130, syscall.SIGINT},
		{"sigterm", []string{"sh", "-c", "kill -TERM $$"}, 143, syscall.SIGTERM},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, out := run(t, rootless.Config{Command: tt.command})
			if res.ExitCode != tt.code || res.Signal != tt.signal {
				t.Fatalf("got exit %d signal %d (output %q), want exit %d signal %d", res.ExitCode,
					res.Signal, out, tt.code, tt.signal)
			}
		})
	}
}

func TestSignal(t *testing.T) {
	requireRootless(t)

	s, err := rootless.Start(context.Background(), rootless.Config{Command: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("Signal: %v", err)
	}

	res, err := s.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 143 || res.Signal != syscall.SIGTERM {
		t.Errorf("got exit %d signal %d, want 143 and SIGTERM", res.ExitCode, res.Signal)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v to stop, want under 5s", took)
	}
}

func TestDeniedConnect(t *testing.T) {
	requireRootless(t)
	addr, hits := httpServer(t)

	var dials atomic.Int64
	var checked []string
	var procs []flows.Proc
	var mu sync.Mutex
	sink := &events{}
	cfg := rootless.Config{
		HostLoopback: true,
		Sink:         sink,
		Check: func(proto string, dst netip.AddrPort, proc func() flows.Proc) bool {
			mu.Lock()
			checked = append(checked, proto+" "+dst.String())
			procs = append(procs, proc())
			mu.Unlock()
			return false
		},
		DialTCP: func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}

	res, out := run(t, cfg, "dial", netip.AddrPortFrom(rootless.Gateway4, addr.Port()).String())
	var ms int
	fmt.Sscanf(out, "refused %d", &ms)
	if res.ExitCode != 2 || ms > 1000 {
		t.Fatalf("got exit %d output %q, want a refusal (exit 2) in under 1s", res.ExitCode, out)
	}

	if dials.Load() != 0 || hits.Load() != 0 {
		t.Errorf("got %d dials and %d requests, want none", dials.Load(), hits.Load())
	}

	want := "tcp " + addr.String()
	if len(checked) != 1 || checked[0] != want {
		t.Fatalf("got checks %q, want [%q]", checked, want)
	}
	// The connecting socket lives until the reset: its process is known.
	if procs[0].Pid == 0 || procs[0].Comm == "" {
		t.Errorf("got check for process %+v, want the pid and comm of the helper", procs[0])
	}

	result := findResult(sink.all(), "tcp")
	if result == nil || result.Error == nil || *result.Error != "denied by policy" {
		t.Errorf("got connect_result %+v, want error %q", result, "denied by policy")
	}
	if res.Stats.Denied != 1 {
		t.Errorf("got Stats.Denied %d, want 1", res.Stats.Denied)
	}
}

func findResult(evs []flows.Event, proto string) *flows.ConnectResult {
	for _, ev := range evs {
		if r, ok := ev.(*flows.ConnectResult); ok && r.Protocol == proto {
			return r
		}
	}

	return nil
}

func findEnd(evs []flows.Event, proto string) *flows.FlowEnd {
	for _, ev := range evs {
		if r, ok := ev.(*flows.FlowEnd); ok && r.Protocol == proto {
			return r
		}
	}

	return nil
}

func TestFlowEvents(t *testing.T) {
	requireRootless(t)
	addr, _ := httpServer(t)

	sink := &events{}
	res, out := run(t, rootless.Config{HostLoopback: true, Sink: sink}, "get", gatewayURL(addr))
	if res.ExitCode != 0 {
		t.Fatalf("got exit %d output %q, want 0", res.ExitCode, out)
	}

	evs := sink.all()
	var names []string
	for _, ev := range evs {
		names = append(names, ev.Name())
	}
	want := []string{flows.EventConnectAttempt, flows.EventConnectResult, flows.EventFlowEnd}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("got events %v, want %v", names, want)
	}

	att := evs[0].(*flows.ConnectAttempt)
	if att.RemoteAddr != addr.String() || att.Backend != rootless.Backend || att.Pid == 0 {
		t.Errorf("got attempt %+v, want remote %s, backend %s and a pid", att, addr, rootless.Backend)
	}
	if r := evs[1].(*flows.ConnectResult); r.Status != flows.StatusOK {
		t.Errorf("got result status %q, want ok", r.Status)
	}

	end := evs[2].(*flows.FlowEnd)
	if end.BytesOut == 0 || end.BytesIn == 0 || end.PacketsOut == 0 || end.PacketsIn == 0 {
		t.Errorf("got flow_end %+v, want bytes and packets both ways", end)
	}
	// The request's Host header names the gateway.
	if end.ServerName != rootless.Gateway4.String() {
		t.Errorf("got flow_end server_name %q, want %q", end.ServerName, rootless.Gateway4)
	}
	if res.Stats.Flows != 1 || res.Stats.BytesIn != end.BytesIn {
		t.Errorf("got stats %+v, want 1 flow and %d bytes in", res.Stats, end.BytesIn)
	}
}

func TestUDPEcho(t *testing.T) {
	requireRootless(t)

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()

	port := pc.LocalAddr().(*net.UDPAddr).Port
	sink := &events{}
	dst := netip.AddrPortFrom(rootless.Gateway4, uint16(port)).String()
	res, out := run(t, rootless.Config{HostLoopback: true, Sink: sink}, "udp", dst, "ping")
	if res.ExitCode != 0 || out != "echo:ping" {
		t.Fatalf("got exit %d output %q, want 0 and %q", res.ExitCode, out, "echo:ping")
	}

	end := findEnd(sink.all(), "udp")
	if end == nil || end.BytesOut < 4 || end.BytesIn < 9 || !end.OpenAtExit || end.Pid == 0 {
		t.Errorf("got flow_end %+v, want bytes both ways, open at exit, a pid", end)
	}
}

// dnsAnswerer answers A queries for name with ip and records what it saw.
type dnsAnswerer struct {
	name string
	ip   net.IP

	mu    sync.Mutex
	seen  []string
	procs []flows.Proc
}

func (d *dnsAnswerer) answer(_ context.Context, proto string, server netip.AddrPort, proc flows.Proc,
	q []byte) ([]byte, error) {
	req := new(mdns.Msg)
	if err := req.Unpack(q); err != nil {
		return nil, err
	}

	d.mu.Lock()
	d.seen = append(d.seen, proto+" "+server.String()+" "+req.Question[0].Name)
	d.procs = append(d.procs, proc)
	d.mu.Unlock()

	resp := new(mdns.Msg)
	resp.SetReply(req)
	if qq := req.Question[0]; qq.Name == d.name+"." && qq.Qtype == mdns.TypeA {
		resp.Answer = append(resp.Answer, &mdns.A{
			Hdr: mdns.RR_Header{Name: qq.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
			A:   d.ip,
		})
	}

	return resp.Pack()
}

func TestDNSCallback(t *testing.T) {
	requireRootless(t)

	d := &dnsAnswerer{name: "svc.childflow.test", ip: net.ParseIP("192.0.2.10")}
	res, out := run(t, rootless.Config{DNS: d.answer}, "resolve", d.name)
	if res.ExitCode != 0 || out != "[192.0.2.10]" {
		t.Fatalf("got exit %d output %q, want 0 and [192.0.2.10]", res.ExitCode, out)
	}

	want := "udp " + netip.AddrPortFrom(rootless.Gateway4, 53).String() + " " + d.name + "."
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.seen) == 0 || d.seen[0] != want {
		t.Errorf("got queries %q, want the first %q", d.seen, want)
	}
	checkQueryProcs(t, d.procs)
}

// checkQueryProcs checks that every query came with the helper's process.
func checkQueryProcs(t *testing.T, procs []flows.Proc) {
	t.Helper()

	self := filepath.Base(os.Args[0])
	for i, p := range procs {
		if p.Pid == 0 || !strings.HasPrefix(self, p.Comm) || p.Comm == "" {
			t.Errorf("got query %d from process %+v, want a pid and comm %q", i, p, self)
		}
	}
}

func TestDNSCallbackTCP(t *testing.T) {
	requireRootless(t)

	d := &dnsAnswerer{name: "tcp.childflow.test", ip: net.ParseIP("192.0.2.12")}
	server := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.53"), 53)
	res, out := run(t, rootless.Config{DNS: d.answer}, "dnstcp", server.String(), d.name)
	if res.ExitCode != 0 || out != "192.0.2.12" {
		t.Fatalf("got exit %d output %q, want 0 and 192.0.2.12", res.ExitCode, out)
	}

	want := "tcp " + server.String() + " " + d.name + "."
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.seen) != 1 || d.seen[0] != want {
		t.Errorf("got queries %q, want [%q]", d.seen, want)
	}
	checkQueryProcs(t, d.procs)
}

func TestDNSCallbackGlibc(t *testing.T) {
	requireRootless(t)
	getent := testenv.RequireTool(t, "getent")

	d := &dnsAnswerer{name: "libc.childflow.test", ip: net.ParseIP("192.0.2.11")}
	res, out := run(t, rootless.Config{DNS: d.answer, Command: []string{getent, "ahostsv4", d.name}})
	if res.ExitCode != 0 || !strings.Contains(out, "192.0.2.11") {
		t.Fatalf("got exit %d output %q, want 0 and 192.0.2.11", res.ExitCode, out)
	}
}

func TestHostsFile(t *testing.T) {
	requireRootless(t)

	hosts := filepath.Join(t.TempDir(), "hosts")
	const line = "203.0.113.7 pinned.childflow.test"
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"+line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	res, out := run(t, rootless.Config{HostsFile: hosts}, "cat", "/etc/hosts")
	if res.ExitCode != 0 || !strings.Contains(out, line) {
		t.Fatalf("got exit %d output %q, want 0 and %q", res.ExitCode, out, line)
	}

	outside, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(outside), "pinned.childflow.test") {
		t.Errorf("the host's /etc/hosts shows the override: %q", outside)
	}
}

// findProcs returns the host pids whose command line contains marker.
func findProcs(marker string) []int {
	dirs, _ := os.ReadDir("/proc")

	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}

		b, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if strings.Contains(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), marker) {
			pids = append(pids, pid)
		}
	}

	return pids
}

// waitNoProcs waits up to 5s for every process with marker to be gone.
func waitNoProcs(t *testing.T, marker string) {
	t.Helper()

	for range 100 {
		if len(findProcs(marker)) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}

	t.Errorf("processes %v with %q are still running", findProcs(marker), marker)
}

func TestDaemonKilledAtEnd(t *testing.T) {
	requireRootless(t)

	const marker = "sleep 987.25"
	script := "(" + marker + " </dev/null >/dev/null 2>&1 &) ; sleep 0.2; exit 0"
	res, out := run(t, rootless.Config{Command: []string{"sh", "-c", script}})
	if res.ExitCode != 0 {
		t.Fatalf("got exit %d output %q, want 0", res.ExitCode, out)
	}

	waitNoProcs(t, marker)
}

func TestKilledParentLeavesNothing(t *testing.T) {
	requireRootless(t)

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	const marker = "sleep 986.5"
	cmd := exec.Command(self, "parent", "sh", "-c", "("+marker+" &) ; "+marker)
	cmd.Env = append(os.Environ(), "CF_RL_HELPER=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	for i := 0; len(findProcs(marker)) < 2; i++ {
		if i == 100 {
			t.Fatalf("the command did not start: %v", findProcs(marker))
		}
		time.Sleep(50 * time.Millisecond)
	}

	cmd.Process.Kill()
	cmd.Wait()
	waitNoProcs(t, marker)
}

func TestCapture(t *testing.T) {
	requireRootless(t)
	addr, _ := httpServer(t)

	var mu sync.Mutex
	var toChild, fromChild, tcp int
	capture := func(_ time.Time, frame []byte) {
		mu.Lock()
		defer mu.Unlock()
		if len(frame) < 14+20+4 {
			return
		}

		gw := "\x02\xcf\x00\x00\x00\x02"
		switch {
		case string(frame[6:12]) == gw:
			toChild++
		case string(frame[0:6]) == gw:
			fromChild++
		}

		ip := frame[14:]
		if frame[12] == 0x08 && frame[13] == 0 && ip[9] == 6 {
			ihl := int(ip[0]&0xf) * 4
			if uint16(ip[ihl+2])<<8|uint16(ip[ihl+3]) == addr.Port() {
				tcp++
			}
		}
	}

	res, out := run(t, rootless.Config{HostLoopback: true, Capture: capture}, "get", gatewayURL(addr))
	if res.ExitCode != 0 {
		t.Fatalf("got exit %d output %q, want 0", res.ExitCode, out)
	}

	mu.Lock()
	defer mu.Unlock()
	if toChild == 0 || fromChild == 0 || tcp < 3 {
		t.Errorf("got %d frames to the command, %d from it, %d TCP to the server; want both ways "+
			"and at least 3 TCP", toChild, fromChild, tcp)
	}
}

func TestManySequentialConnections(t *testing.T) {
	requireRootless(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("x"))
			c.Close()
		}
	}()

	const n = 1000
	port := ln.Addr().(*net.TCPAddr).Port
	dst := netip.AddrPortFrom(rootless.Gateway4, uint16(port)).String()
	start := time.Now()
	res, out := run(t, rootless.Config{HostLoopback: true, Sink: &events{}}, "many", dst, strconv.Itoa(n))
	took := time.Since(start)

	var got int
	var rate float64
	fmt.Sscanf(out, "%d %f", &got, &rate)
	if res.ExitCode != 0 || got != n {
		t.Fatalf("got exit %d output %q, want 0 and %d connections", res.ExitCode, out, n)
	}
	if took > 60*time.Second {
		t.Errorf("%d connections took %v, want under 60s", n, took)
	}
	if res.Stats.Flows != n {
		t.Errorf("got Stats.Flows %d, want %d", res.Stats.Flows, n)
	}
	t.Logf("%d sequential connections in %v: %.0f connections/s", n, took, rate)
}

func TestPing(t *testing.T) {
	requireRootless(t)

	tests := []struct {
		name  string
		allow bool
		want  string
	}{
		{"allowed", true, "reply type 0 seq 7 payload cf"},
		{"denied", false, "error: resource temporarily unavailable"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var checked atomic.Int64
			check := func(proto string, dst netip.AddrPort, _ func() flows.Proc) bool {
				if proto == "icmpv4" && dst.Addr() == netip.MustParseAddr("127.0.0.1") {
					checked.Add(1)
				}
				return tt.allow
			}

			res, out := run(t, rootless.Config{HostLoopback: true, Check: check}, "ping",
				rootless.Gateway4.String())
			if !strings.Contains(out, tt.want) || checked.Load() != 1 {
				t.Fatalf("got exit %d output %q after %d checks, want %q after 1", res.ExitCode, out,
					checked.Load(), tt.want)
			}
			// A denied request is a violation, not loss.
			wantDenied := uint64(0)
			if !tt.allow {
				wantDenied = 1
			}
			if res.Stats.DeniedPackets != wantDenied || res.Stats.Dropped != 0 {
				t.Errorf("got %d denied and %d dropped packets, want %d and 0",
					res.Stats.DeniedPackets, res.Stats.Dropped, wantDenied)
			}
		})
	}
}

func TestUnprivileged(t *testing.T) {
	testenv.RequireUnprivilegedUserNS(t)
	testenv.OpenTunForAll(t)
	addr, _ := httpServer(t)
	bin := testenv.CopyExecutable(t)

	cmd := exec.Command(bin, "parent", bin, "get", gatewayURL(addr))
	cmd.Env = []string{"CF_RL_HELPER=1", "PATH=/usr/bin:/bin"}
	testenv.AsNobody(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "200 hello") {
		t.Fatalf("got %v output %q, want 200 hello", err, out)
	}
}

func TestIPv6HostLoopback(t *testing.T) {
	requireRootless(t)

	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		testenv.Skip(t, "no IPv6 loopback: "+err.Error())
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	sink := &events{}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	dst := netip.AddrPortFrom(rootless.Gateway6, port).String()
	res, out := run(t, rootless.Config{HostLoopback: true, Sink: sink}, "dial", dst)
	if res.ExitCode != 0 {
		t.Fatalf("got exit %d output %q, want 0", res.ExitCode, out)
	}

	want := netip.AddrPortFrom(netip.IPv6Loopback(), port).String()
	if r := findResult(sink.all(), "tcp"); r == nil || r.RemoteAddr != want || r.Pid == 0 {
		t.Errorf("got connect_result %+v, want remote %s and a pid", r, want)
	}
}

func TestCancelKillsTree(t *testing.T) {
	requireRootless(t)

	const marker = "sleep 985.75"
	ctx, cancel := context.WithCancel(context.Background())
	s, err := rootless.Start(ctx, rootless.Config{Command: []string{"sh", "-c", marker + " & " + marker}})
	if err != nil {
		t.Fatal(err)
	}

	for i := 0; len(findProcs(marker)) < 2; i++ {
		if i == 100 {
			t.Fatalf("the command did not start: %v", findProcs(marker))
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()

	res, err := s.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 137 || res.Signal != syscall.SIGKILL {
		t.Errorf("got exit %d signal %d, want 137 and SIGKILL", res.ExitCode, res.Signal)
	}
	waitNoProcs(t, marker)
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()

	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}

	return len(fds)
}

func TestNoLeaks(t *testing.T) {
	requireRootless(t)
	addr, _ := httpServer(t)

	run(t, rootless.Config{HostLoopback: true}, "get", gatewayURL(addr))
	fds, goroutines := openFDs(t), runtime.NumGoroutine()
	for range 3 {
		run(t, rootless.Config{HostLoopback: true}, "get", gatewayURL(addr))
	}

	if got := openFDs(t); got > fds {
		t.Errorf("got %d open descriptors after three more runs, want at most %d", got, fds)
	}

	for i := 0; runtime.NumGoroutine() > goroutines; i++ {
		if i == 50 {
			t.Errorf("got %d goroutines after three more runs, want at most %d",
				runtime.NumGoroutine(), goroutines)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}
