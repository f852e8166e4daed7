package trace

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/policy"
)

func TestChooseBackend(t *testing.T) {
	auto := BackendRootless
	if os.Geteuid() == 0 {
		auto = BackendEBPF
	}
	for _, tc := range []struct {
		in, want string
		usage    bool
	}{
		{"", auto, false},
		{"auto", auto, false},
		{"ebpf", BackendEBPF, false},
		{"rootful", BackendEBPF, false},
		{"rootless", BackendRootless, false},
		{"rootless-internal", BackendRootless, false},
		{"kernel", "", true},
	} {
		got, err := chooseBackend(tc.in)
		var ue *UsageError
		if got != tc.want || errors.As(err, &ue) != tc.usage {
			t.Errorf("chooseBackend(%q) = %q, %v; want %q, usage error %v", tc.in, got, err, tc.want, tc.usage)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		script string
		code   int
		signal string
	}{
		{"exit 0", 0, ""},
		{"exit 3", 3, ""},
		{"kill -INT $$", 130, "SIGINT"},
		{"kill -KILL $$", 137, "SIGKILL"},
	} {
		cmd := exec.Command("sh", "-c", tc.script)
		_ = cmd.Run()
		code, sig := exitCode(cmd.ProcessState)
		if code != tc.code || sig != tc.signal {
			t.Errorf("%q: exit code %d %q, want %d %q", tc.script, code, sig, tc.code, tc.signal)
		}
	}
}

func TestLookCommand(t *testing.T) {
	if _, err := lookCommand("sh"); err != nil {
		t.Errorf("lookCommand(sh): %v", err)
	}
	if _, err := lookCommand("childflow-no-such-command"); !errors.Is(err, ErrCommandNotFound) {
		t.Errorf("lookCommand(missing) = %v, want ErrCommandNotFound", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/noexec", []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 { // root may execute anything with an x bit, and this has none
		if _, err := lookCommand(dir + "/noexec"); !errors.Is(err, ErrCommandNotExecutable) {
			t.Errorf("lookCommand(noexec) = %v, want ErrCommandNotExecutable", err)
		}
	}
}

func TestMergeHostsPutsUserEntriesFirst(t *testing.T) {
	user := t.TempDir() + "/hosts"
	if err := os.WriteFile(user, []byte("192.0.2.9 example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	merged, err := mergeHosts(user)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(merged)

	b, err := os.ReadFile(merged)
	if err != nil {
		t.Fatal(err)
	}
	sys, _ := os.ReadFile("/etc/hosts")
	s := string(b)
	if i, j := strings.Index(s, "192.0.2.9 example.test"), strings.Index(s, string(sys)); i < 0 || j < i {
		t.Errorf("merged hosts file does not list the user's entries before /etc/hosts:\n%s", s)
	}
	if _, err := mergeHosts(t.TempDir() + "/missing"); err == nil {
		t.Error("mergeHosts of a missing file succeeded")
	}
}

// TestViolationEventMatchesPolicy checks that a violation the kernel reports
// gets the policy's own matched rule and text, and that a socket refused at
// creation has no destination.
func TestViolationEventMatchesPolicy(t *testing.T) {
	p, err := policy.New(policy.Config{DenyCIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		DefaultDeny: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTranslator(flows.Tee{}, p, nil, &violations{})

	rule := p.DenyPrefixes()[0].Index
	ev := tr.violationEvent("tcp", netip.MustParseAddrPort("198.51.100.7:443"), nil,
		policy.ReasonDenyCIDR, rule, false)
	if ev.MatchedCIDR == nil || *ev.MatchedCIDR != "198.51.100.0/24" || ev.ReasonCode != "deny_cidr" ||
		ev.RemoteStr != "198.51.100.7:443" || ev.Action != flows.ActionDeny {
		t.Errorf("deny-cidr violation = %+v", ev)
	}

	raw := tr.violationEvent("raw", netip.AddrPortFrom(netip.IPv4Unspecified(), 0), nil,
		policy.ReasonDefaultDeny, 0, false)
	if raw.RemoteStr != "" || raw.RemoteIP != nil || raw.RemotePort != nil || raw.ReasonCode != "default_deny" {
		t.Errorf("raw socket violation = remote %q ip %v port %v reason %s, want no destination",
			raw.RemoteStr, raw.RemoteIP, raw.RemotePort, raw.ReasonCode)
	}
}
