package doctor

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/childflow/childflow/cgroupnet"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fixedResult is a result as a host without BPF privileges would give it.
func fixedResult() Result {
	ebpf := backendResult(EBPF, []check{
		{Capability: Capability{"privileges", "Privileges (root, or CAP_BPF and CAP_NET_ADMIN)",
			Unavailable, "CAP_BPF or CAP_NET_ADMIN is not effective"}, severity: Fatal,
			hint: hintRoot},
		{Capability: Capability{"btf", "Kernel BTF (/sys/kernel/btf/vmlinux)", Available, ""},
			severity: Warning},
		{Capability: Capability{"cgroup2", "cgroup v2 mount", Available,
			"mounted at /sys/fs/cgroup"}, severity: Fatal},
		{Capability: Capability{"prog_sock_ops", "sock_ops programs", Unavailable,
			"not supported by this kernel"}, severity: Warning, hint: "no relay"},
	})
	stale := []StaleCgroup{
		{Path: "/sys/fs/cgroup/childflow.slice/run-4242-0a1b", Pid: 4242, Processes: 2},
		{Path: "/sys/fs/cgroup/childflow.slice/run-4343-0c1d", Pid: 4343, Removed: true},
	}
	ebpf.Preflight = append(ebpf.Preflight, stalePreflight(stale))
	ebpf.Verdict = verdict(ebpf.Preflight)
	rootless := backendResult(Rootless, []check{
		{Capability: Capability{"userns_create", "Create user, network and mount namespaces",
			Available, "started a process in new namespaces"}, severity: Fatal},
		{Capability: Capability{"idmap", "newuidmap and newgidmap", Limited,
			"not found: newuidmap"}, hint: "install uidmap"},
	})

	return assemble(ebpf, rootless, stale)
}

func TestGolden(t *testing.T) {
	r := fixedResult()
	for _, f := range []string{Text, JSON} {
		t.Run(f, func(t *testing.T) {
			var buf bytes.Buffer
			if err := r.Write(&buf, f); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "doctor."+f+".golden")
			if *update {
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("got:\n%s\nwant:\n%s", &buf, want)
			}
		})
	}
}

func TestVerdicts(t *testing.T) {
	p := func(ss ...string) []Preflight {
		var out []Preflight
		for _, s := range ss {
			out = append(out, Preflight{Key: "k", Status: s})
		}
		return out
	}
	tests := []struct {
		name             string
		ebpf, rootless   []Preflight
		verdict, auto    string
		ebpfV, rootlessV string
	}{
		{"all ok", p(OK, OK), p(OK), Ready, EBPF, Ready, Ready},
		{"ebpf warns", p(OK, Warning), p(OK), ReadyWithWarnings, EBPF, ReadyWithWarnings, Ready},
		{"ebpf blocked", p(Fatal, Warning), p(OK), Ready, Rootless, Blocked, Ready},
		{"fallback warns", p(Fatal), p(Warning), ReadyWithWarnings, Rootless, Blocked,
			ReadyWithWarnings},
		{"both blocked", p(Fatal), p(OK, Fatal), Blocked, Rootless, Blocked, Blocked},
	}
	for _, tt := range tests {
		e := BackendResult{Name: EBPF, Preflight: tt.ebpf, Verdict: verdict(tt.ebpf)}
		r := BackendResult{Name: Rootless, Preflight: tt.rootless, Verdict: verdict(tt.rootless)}
		got := assemble(e, r, nil)
		if got.Verdict != tt.verdict || got.Auto != tt.auto || e.Verdict != tt.ebpfV ||
			r.Verdict != tt.rootlessV {
			t.Errorf("%s: got %q auto %s (ebpf %q, rootless %q), want %q auto %s (%q, %q)",
				tt.name, got.Verdict, got.Auto, e.Verdict, r.Verdict, tt.verdict, tt.auto,
				tt.ebpfV, tt.rootlessV)
		}
	}
}

// deadPid returns the pid of a process that has exited and been reaped.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("run true: %v", err)
	}

	return cmd.Process.Pid
}

func TestStaleInFolder(t *testing.T) {
	mount := t.TempDir()
	slice := filepath.Join(mount, cgroupnet.Slice)
	dead := deadPid(t)
	names := []string{
		fmt.Sprintf("run-%d-dead0001", dead),
		fmt.Sprintf("run-%d-alive001", os.Getpid()),
		"run-x-bad", "other", fmt.Sprintf("run-%d-", dead),
	}
	for _, n := range names {
		if err := os.MkdirAll(filepath.Join(slice, n, "child"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	found := findStale(mount, false)
	if len(found) != 1 || found[0].Pid != dead || found[0].Removed {
		t.Fatalf("got %+v, want one stale cgroup of pid %d, not removed", found, dead)
	}
	if p := stalePreflight(found); p.Status != Warning {
		t.Errorf("preflight: got %q, want %q", p.Status, Warning)
	}

	cleaned := findStale(mount, true)
	if len(cleaned) != 1 || !cleaned[0].Removed {
		t.Fatalf("got %+v, want one removed", cleaned)
	}
	if _, err := os.Stat(cleaned[0].Path); !os.IsNotExist(err) {
		t.Errorf("stat %s after clean: got %v, want not exist", cleaned[0].Path, err)
	}
	if got := len(findStale(mount, false)); got != 0 {
		t.Errorf("after clean: got %d stale, want 0", got)
	}
	if _, err := os.Stat(filepath.Join(slice, names[1])); err != nil {
		t.Errorf("live run cgroup: got %v, want it kept", err)
	}
}

func TestResultJSONStable(t *testing.T) {
	var a, b bytes.Buffer
	if err := fixedResult().Write(&a, JSON); err != nil {
		t.Fatal(err)
	}
	if err := fixedResult().Write(&b, JSON); err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(a.Bytes(), &v); err != nil || a.String() != b.String() {
		t.Fatalf("JSON not stable or invalid: %v", err)
	}
}
