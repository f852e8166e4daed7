package e2e

import (
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/childflow/childflow/internal/testenv"
)

// doctorAuto runs "childflow doctor --format json" as b's user and returns
// the backend it says auto picks and that backend's verdict.
func doctorAuto(t *testing.T, b backendCase) (auto, verdict string) {
	t.Helper()
	cmd := exec.Command(binary(t), "doctor", "--format", "json")
	cmd.Dir = "/"
	if b.unprivileged {
		// What an unprivileged run needs, as the harness sets it up.
		testenv.RequireUnprivilegedUserNS(t)
		testenv.OpenTunForAll(t)
		testenv.AsNobody(cmd)
	}
	out, err := cmd.Output()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run doctor: %v", err)
	}

	var d struct {
		Auto     string `json:"auto"`
		Backends []struct {
			Name    string `json:"name"`
			Verdict string `json:"verdict"`
		} `json:"backends"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("parse doctor JSON: %v\n%s", err, out)
	}
	for _, be := range d.Backends {
		if be.Name == d.Auto {
			verdict = be.Verdict
		}
	}

	return d.Auto, verdict
}

// TestAutoChoosesBackend checks the one fallback rule: auto is eBPF for
// root and rootless for anyone else, and doctor names the backend that a
// run then uses, as ready.
func TestAutoChoosesBackend(t *testing.T) {
	for _, tc := range []struct {
		b    backendCase
		want string
	}{
		{backendCase{name: "root"}, "ebpf"},
		{backendCase{name: "unprivileged", unprivileged: true}, "rootless"},
	} {
		t.Run(tc.b.name, func(t *testing.T) {
			testenv.RequireRoot(t)
			auto, verdict := doctorAuto(t, tc.b)
			if auto != tc.want || !strings.HasPrefix(verdict, "ready") {
				t.Errorf("doctor: auto %q with verdict %q, want %q and ready", auto, verdict, tc.want)
			}

			res := run{command: []string{"true"}, flowLog: true}.with(tc.b).do(t)
			starts := res.events("run_start", nil)
			if res.code != 0 || len(starts) != 1 || str(starts[0], "backend") != auto {
				t.Errorf("run: exit %d, run_start %v; want 0 on the backend doctor names (%s); stderr:\n%s",
					res.code, starts, auto, res.stderr)
			}
		})
	}
}

// rawProtocol is an IP protocol number for experiments (RFC 3692): no host
// stack handles it.
const rawProtocol = 253

// listenRaw records the payloads of protocol rawProtocol that reach the
// host's loopback, in both families.
func listenRaw(t *testing.T) *sightings {
	t.Helper()
	rec := &sightings{}
	for _, l := range []struct{ network, addr string }{
		{"ip4:253", "127.0.0.1"}, {"ip6:253", "::1"},
	} {
		pc, err := net.ListenPacket(l.network, l.addr)
		if err != nil {
			t.Fatalf("listen %s %s: %v", l.network, l.addr, err)
		}
		t.Cleanup(func() { pc.Close() })
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
	}

	return rec
}

// rawSendScript sends its second argument as the payload of one packet of
// protocol 253 to each address that follows, from a raw socket.
const rawSendScript = `
import socket, sys
for a in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_RAW, 253)
    s.sendto(sys.argv[1].encode(), (a, 0))
    s.close()
`

// TestRawIPOtherProtocols sends raw IP packets of a protocol other than
// TCP, UDP and ICMP to the host's loopback, in both families. The eBPF
// backend polices sockets and lets them through; the rootless backend
// cannot send them from the host: it drops them and counts each one in a
// loss event of source "unsupported".
func TestRawIPOtherProtocols(t *testing.T) {
	testenv.RequireTool(t, "python3")
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		rec := listenRaw(t)
		token := newToken()
		dsts := []string{e.hostAddr(netip.MustParseAddr("127.0.0.1")).String(),
			e.hostAddr(netip.IPv6Loopback()).String()}
		res := run{args: e.hostArgs, command: append([]string{"python3", "-c", rawSendScript, token},
			dsts...), flowLog: true}.with(b).do(t)
		if res.code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", res.code, res.stderr)
		}

		var lost int64
		for _, l := range res.events("loss", func(m map[string]any) bool { return m["source"] == "unsupported" }) {
			lost += num(l, "count")
		}
		if e.rawIPForwarded {
			if !rec.waitSaw(token) || lost != 0 {
				t.Errorf("host saw the packets: %v, unsupported loss %d; want true and 0",
					rec.saw(token), lost)
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
		if rec.saw(token) || lost != 2 {
			t.Errorf("host saw the packets: %v, unsupported loss %d; want false and 2", rec.saw(token), lost)
		}
	})
}

// TestExitWhileBusy ends the command while a download through the backend
// is in full flow: childflow must return promptly, with the command's exit
// code, on every backend (a rootless build once hung here, its tap reader
// blocked while the netstack shut down).
func TestExitWhileBusy(t *testing.T) {
	testenv.RequireTool(t, "curl")
	forBackends(t, func(t *testing.T, b backendCase) {
		e := expect(b)
		srv := startHTTP(t, "tcp4")
		script := "curl -sS -o /dev/null " + e.url(srv) + "/bytes/4000000000 & sleep 0.5; exit 5"
		for i := 0; i < 3; i++ {
			start := time.Now()
			res := run{args: e.hostArgs, command: []string{"sh", "-c", script}, flowLog: true,
				timeout: 20 * time.Second}.with(b).do(t)
			if res.code != 5 {
				t.Errorf("run %d: exit %d, want 5; stderr:\n%s", i, res.code, res.stderr)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("run %d: childflow took %s, want under 5s", i, d)
			}
			ends := res.events("flow_end", func(m map[string]any) bool { return num(m, "remote_port") == int64(srv.port) })
			if len(ends) != 1 || num(ends[0], "bytes_in") == 0 {
				t.Errorf("run %d: flow_end of the download %v, want one with bytes_in", i, ends)
			}
		}
	})
}
