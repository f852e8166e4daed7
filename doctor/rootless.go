package doctor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// probeTimeout bounds the namespace probe's child process.
const probeTimeout = 5 * time.Second

// rootlessChecks probes what the rootless backend needs.
func rootlessChecks() []check {
	return []check{usernsSysctls(), usernsProbe(), tunCheck(), idmapCheck(), pingCheck()}
}

// readSysctl returns the trimmed content of a /proc/sys file and whether it
// exists.
func readSysctl(name string) (string, bool) {
	data, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "", false
	}

	return strings.TrimSpace(string(data)), true
}

func usernsSysctls() check {
	c := check{Capability: Capability{Key: "userns_sysctl",
		Label: "User namespaces allowed by sysctls"}, severity: Fatal,
		hint: "allow user namespaces: sysctl user.max_user_namespaces=15000 " +
			"(and kernel.unprivileged_userns_clone=1 where it exists)"}

	max, ok := readSysctl("user/max_user_namespaces")
	if n, err := strconv.Atoi(max); !ok || err != nil || n <= 0 {
		c.Status, c.Detail = Unavailable, "user.max_user_namespaces is "+orDash(max)
		return c
	}
	root := os.Geteuid() == 0
	if v, ok := readSysctl("kernel/unprivileged_userns_clone"); ok && v == "0" && !root {
		c.Status, c.Detail = Unavailable, "kernel.unprivileged_userns_clone is 0"
		return c
	}
	if v, ok := readSysctl("kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" &&
		!root {
		c.Status = Limited
		c.Detail = "kernel.apparmor_restrict_unprivileged_userns is 1"
		c.hint = "AppArmor may deny capabilities inside the namespace; add a profile for childflow"
		return c
	}
	c.Status, c.Detail = Available, "user.max_user_namespaces is "+max

	return c
}

// usernsProbe starts `true` in new user, network and mount namespaces, as
// the rootless backend starts its init, with this user mapped to root.
func usernsProbe() check {
	c := check{Capability: Capability{Key: "userns_create",
		Label: "Create user, network and mount namespaces"}, severity: Fatal,
		hint: "allow unprivileged user namespaces, or run as root with --backend ebpf"}
	bin, err := exec.LookPath("true")
	if err != nil {
		c.Status, c.Detail = Unavailable, "no `true` program to probe with"
		return c
	}

	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	if err := cmd.Run(); err != nil {
		c.Status, c.Detail = Unavailable, "start a process in new namespaces: "+err.Error()
		return c
	}
	c.Status, c.Detail = Available, "started a process in new namespaces"

	return c
}

func tunCheck() check {
	c := check{Capability: Capability{Key: "tun", Label: "TUN/TAP device (/dev/net/tun)"},
		severity: Fatal, hint: "load the tun module (modprobe tun) and make /dev/net/tun " +
			"readable and writable (mode 0666)"}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		c.Status, c.Detail = Unavailable, err.Error()
		return c
	}
	f.Close()
	c.Status, c.Detail = Available, "opened for reading and writing"

	return c
}

func idmapCheck() check {
	c := check{Capability: Capability{Key: "idmap", Label: "newuidmap and newgidmap"},
		hint: "install the uidmap package to map more than the caller's own ids " +
			"(programs that change user, such as package managers, need it)"}
	var missing []string
	for _, name := range []string{"newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		c.Status, c.Detail = Limited, "not found: "+strings.Join(missing, ", ")
		return c
	}
	c.Status, c.Detail = Available, "found on PATH"

	return c
}

// pingCheck tells whether the netstack can answer ICMP echo through an
// unprivileged ping socket, by opening one; the caller's group must be in
// net.ipv4.ping_group_range.
func pingCheck() check {
	c := check{Capability: Capability{Key: "icmp_echo",
		Label: "Unprivileged ICMP echo sockets (net.ipv4.ping_group_range)"},
		hint: "ping from the command will fail; allow it with " +
			"sysctl net.ipv4.ping_group_range=\"0 2147483647\""}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err == nil {
		unix.Close(fd)
		c.Status, c.Detail = Available, "opened an ICMP datagram socket"
		return c
	}

	rng, _ := readSysctl("net/ipv4/ping_group_range")
	c.Status = Limited
	c.Detail = fmt.Sprintf("open ICMP datagram socket: %v (group %d, ping_group_range %s)", err,
		os.Getgid(), orDash(strings.Join(strings.Fields(rng), " ")))

	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}

	return s
}
