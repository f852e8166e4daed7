package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/cgroupnet"
	"github.com/childflow/childflow/seccomp"
)

// Capability bits of /proc/self/status CapEff.
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capBPF      = 39
)

const hintRoot = "run as root (sudo childflow ...), or use --backend rootless"

func findMount() (string, error) { return cgroupnet.Mount() }

// ebpfChecks probes what the eBPF backend needs, in the order a run uses it.
func ebpfChecks(mount string, mountErr error) []check {
	checks := []check{privileges(), btfCheck(), cgroupCheck(mount, mountErr)}

	probe, created, err := makeProbeCgroup(mount, mountErr)
	checks = append(checks, delegationCheck(mount, mountErr, created, err))
	checks = append(checks, mapCheck())
	checks = append(checks, progChecks()...)
	checks = append(checks, attachCheck(probe, created), joinCheck())
	if created {
		os.Remove(probe)
	}

	return checks
}

func privileges() check {
	c := check{Capability: Capability{Key: "privileges",
		Label: "Privileges (root, or CAP_BPF and CAP_NET_ADMIN)"}, severity: Fatal,
		hint: hintRoot}
	eff, err := effectiveCaps()
	if err != nil {
		c.Status, c.Detail = Unavailable, err.Error()
		return c
	}

	has := func(b uint) bool { return eff&(1<<b) != 0 }
	switch {
	case has(capBPF) && has(capNetAdmin) && has(capSysAdmin):
		c.Status, c.Detail = Available, "CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN are effective"
	case has(capBPF) && has(capNetAdmin):
		c.Status, c.Detail = Available, "CAP_BPF and CAP_NET_ADMIN are effective"
	default:
		c.Status, c.Detail = Unavailable, "CAP_BPF or CAP_NET_ADMIN is not effective"
	}

	return c
}

// effectiveCaps reads the effective capability set of this process.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}

	return 0, errors.New("read capabilities: no CapEff in /proc/self/status")
}

func btfCheck() check {
	c := check{Capability: Capability{Key: "btf", Label: "Kernel BTF (/sys/kernel/btf/vmlinux)"},
		severity: Warning,
		hint: "programs that need kernel type information cannot load; " +
			"use a kernel built with CONFIG_DEBUG_INFO_BTF"}
	_, err := os.Stat("/sys/kernel/btf/vmlinux")
	c.Status, c.Detail = status(err == nil), "present"
	if err != nil {
		c.Detail = err.Error()
	}

	return c
}

func cgroupCheck(mount string, mountErr error) check {
	c := check{Capability: Capability{Key: "cgroup2", Label: "cgroup v2 mount"},
		severity: Fatal,
		hint: "mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup), and do not run childflow " +
			"under `ip netns exec`, which hides it; use nsenter --net instead"}
	if mountErr != nil {
		c.Status, c.Detail = Unavailable, mountErr.Error()
		return c
	}

	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		c.Status, c.Detail = Unavailable, mount+" is not a cgroup2 file system"
		return c
	}
	c.Status, c.Detail = Available, "mounted at "+mount

	return c
}

// makeProbeCgroup creates <mount>/childflow.slice/run-<pid>-doctor, named
// like a run cgroup so that a sweep removes it if this process dies.
func makeProbeCgroup(mount string, mountErr error) (string, bool, error) {
	if mountErr != nil {
		return "", false, mountErr
	}
	slice := filepath.Join(mount, cgroupnet.Slice)
	if err := os.Mkdir(slice, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", false, fmt.Errorf("create cgroup %s: %w", slice, err)
	}

	probe := filepath.Join(slice, fmt.Sprintf("run-%d-doctor", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		// Leave the probe's name (it holds our pid) out, to keep results stable.
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", false, fmt.Errorf("create a cgroup under %s: %w", slice, err)
	}

	return probe, true, nil
}

func delegationCheck(mount string, mountErr error, created bool, err error) check {
	c := check{Capability: Capability{Key: "cgroup_write",
		Label: "Create run cgroups (" + cgroupnet.Slice + " or a delegated cgroup)"},
		severity: Fatal, hint: hintRoot}
	switch {
	case created:
		c.Status, c.Detail = Available, "created and removed a cgroup under "+
			filepath.Join(mount, cgroupnet.Slice)
	case mountErr != nil:
		c.Status, c.Detail = Unavailable, "no cgroup2 mount"
	case ownCgroupWritable(mount):
		c.Status = Limited
		c.Detail = "cannot create under " + cgroupnet.Slice + "; the caller's own cgroup is writable"
		c.hint = "runs will use the caller's delegated cgroup"
	default:
		c.Status, c.Detail = Unavailable, err.Error()
	}

	return c
}

// ownCgroupWritable reports whether this process may create cgroups in its
// own cgroup (a delegated subtree, as systemd gives user sessions).
func ownCgroupWritable(mount string) bool {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return unix.Access(filepath.Join(mount, rel), unix.W_OK) == nil
		}
	}

	return false
}

func mapCheck() check {
	c := check{Capability: Capability{Key: "ringbuf", Label: "BPF ring buffer maps"},
		severity: Fatal, hint: hintRoot}
	c.Status, c.Detail = probeStatus(features.HaveMapType(ebpf.RingBuf))
	if c.Status == Available {
		c.Detail = "created by a probe"
	}

	return c
}

// progChecks probes the program types of the backend's hooks.
func progChecks() []check {
	types := []struct {
		key, label string
		pt         ebpf.ProgramType
		severity   string
	}{
		{"prog_cgroup_sock_addr", "cgroup sock_addr programs (connect, sendmsg, recvmsg)",
			ebpf.CGroupSockAddr, Fatal},
		{"prog_cgroup_skb", "cgroup_skb programs (packet counters, capture)", ebpf.CGroupSKB,
			Fatal},
		{"prog_cgroup_sock", "cgroup sock programs (sock_create, sock_release)",
			ebpf.CGroupSock, Fatal},
		{"prog_sock_ops", "sock_ops programs (original destination for the proxy relay)",
			ebpf.SockOps, Warning},
	}
	out := make([]check, 0, len(types))
	for _, t := range types {
		c := check{Capability: Capability{Key: t.key, Label: t.label}, severity: t.severity,
			hint: hintRoot}
		c.Status, c.Detail = probeStatus(features.HaveProgramType(t.pt))
		out = append(out, c)
	}

	return out
}

// probeStatus turns a cilium/ebpf feature probe result into a status.
func probeStatus(err error) (string, string) {
	switch {
	case err == nil:
		return Available, "loaded by a probe"
	case errors.Is(err, ebpf.ErrNotSupported):
		return Unavailable, "not supported by this kernel"
	}

	return Unavailable, "probe failed: " + err.Error()
}

// attachCheck loads a cgroup_skb program that passes every packet, attaches
// it to the probe cgroup and detaches it.
func attachCheck(probe string, created bool) check {
	c := check{Capability: Capability{Key: "cgroup_attach",
		Label: "Attach programs to a cgroup"}, severity: Fatal, hint: hintRoot}
	if !created {
		c.Status, c.Detail = Unavailable, "no cgroup to attach to"
		return c
	}

	if err := attachProbe(probe); err != nil {
		c.Status, c.Detail = Unavailable, err.Error()
		return c
	}
	c.Status, c.Detail = Available, "attached and detached a cgroup_skb egress program"

	return c
}

func attachProbe(cgroup string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "cf_doctor", Type: ebpf.CGroupSKB, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load cgroup_skb program: %w", err)
	}
	defer prog.Close()

	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup,
		Attach: ebpf.AttachCGroupInetEgress, Program: prog})
	if err != nil {
		return fmt.Errorf("attach cgroup_skb program to the probe cgroup: %w", err)
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach cgroup_skb program: %w", err)
	}

	return nil
}

// joinCheck probes the seccomp user notification that lets childflow hand a
// program's own socket the proxy tunnel; without it proxied connections go
// through the relay.
func joinCheck() check {
	c := check{Capability: Capability{Key: "proxy_join",
		Label: "seccomp user notification (proxy tunnel on the program's socket)"},
		severity: Warning,
		hint:     "--proxy runs through the relay in childflow, one more hop (Linux 5.19 joins)"}
	if err := seccomp.Probe(); err != nil {
		c.Status, c.Detail = Unavailable, err.Error()
		return c
	}
	c.Status, c.Detail = Available, "the kernel accepts the filter flags"

	return c
}
