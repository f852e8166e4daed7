package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sandboxHostsName is only looked up with getent -s files: no lookup of it
// can leave the machine.
const sandboxHostsName = "childflow-e2e-sandbox.invalid"

func writeSandboxHosts(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(p, []byte("192.0.2.55 "+sandboxHostsName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	return p
}

// TestSandboxHostsFile runs the eBPF backend with --hosts-file: the tree sees
// the file's entries through /etc/hosts itself (not only through DNS),
// read-only, and the host's /etc/hosts is untouched.
func TestSandboxHostsFile(t *testing.T) {
	requireEBPF(t)
	hosts := writeSandboxHosts(t)
	before, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	script := `getent -s files hosts ` + sandboxHostsName + ` | tr -s ' '
if (: >> /etc/hosts) 2>/dev/null; then echo writable; else echo read-only; fi
echo "var=${CHILDFLOW_SANDBOX-unset}"`
	res := run{args: []string{"--backend", "ebpf", "--hosts-file", hosts},
		command: []string{"sh", "-c", script}}.do(t)
	if res.code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", res.code, res.stderr)
	}

	for _, want := range []string{"192.0.2.55 " + sandboxHostsName, "read-only", "var=unset"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("stdout %q: missing %q", res.stdout, want)
		}
	}

	after, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Errorf("the host's /etc/hosts changed:\n%s\nwas:\n%s", after, before)
	}
}

// TestSandboxExitCodes checks that the command's status passes through the
// sandbox init unchanged.
func TestSandboxExitCodes(t *testing.T) {
	requireEBPF(t)
	hosts := writeSandboxHosts(t)
	checkExitCodes(t, run{args: []string{"--backend", "ebpf", "--hosts-file", hosts}})
}

// TestSandboxSudoUser runs childflow as if under sudo: the init mounts the
// hosts file as root, then the command runs as the invoking user.
func TestSandboxSudoUser(t *testing.T) {
	requireEBPF(t)
	hosts := writeSandboxHosts(t)
	script := `echo "uid=$(id -u) gid=$(id -g)"
getent -s files hosts ` + sandboxHostsName + ` | tr -s ' '`
	res := run{args: []string{"--backend", "ebpf", "--hosts-file", hosts},
		command: []string{"sh", "-c", script},
		env:     []string{"SUDO_UID=65534", "SUDO_GID=65534"}}.do(t)
	if res.code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", res.code, res.stderr)
	}

	for _, want := range []string{"uid=65534 gid=65534", "192.0.2.55 " + sandboxHostsName} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("stdout %q: missing %q", res.stdout, want)
		}
	}
}

// TestConfinedRootCommand checks that under a policy a root command cannot
// lift it: no raw or packet sockets, no BPF, no way out of its cgroup, and
// it cannot see childflow; --keep-caps gives those back.
func TestConfinedRootCommand(t *testing.T) {
	requireEBPF(t)
	probe := `import os, socket, errno
def tryit(name, fn):
    try:
        fn(); print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
tryit("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
tryit("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def bpf():
    attr = ctypes.create_string_buffer(128)
    if libc.syscall(321, 11, attr, 128) < 0:  # bpf(BPF_PROG_GET_NEXT_ID)
        raise OSError(ctypes.get_errno(), "bpf")
tryit("bpf", bpf)
print("cgroup", [l for l in open("/proc/self/cgroup").read().split() if l.startswith("0::")][0])
print("ppid-visible", os.path.exists("/proc/%d" % int(os.environ["CF_PARENT"])))
`
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--block-metadata"}, []string{"raw EPERM", "packet EPERM", "bpf EPERM", "cgroup 0::/", "ppid-visible False"}},
		{[]string{"--block-metadata", "--keep-caps"}, []string{"raw ok", "packet ok", "ppid-visible True"}},
	} {
		res := run{args: append([]string{"--keep-root"}, tc.args...),
			env:     []string{fmt.Sprintf("CF_PARENT=%d", os.Getpid())},
			command: []string{"python3", "-c", probe}}.do(t)
		if res.code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, res.code, res.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(res.stdout, w+"\n") {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, res.stdout)
			}
		}
	}
}
