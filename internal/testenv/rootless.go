package testenv

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Nobody is the uid and gid that unprivileged tests run as.
const Nobody = 65534

// RequireUnprivilegedUserNS skips (or fails in CI) unless the test runs as
// root, so that it can switch to Nobody, and Nobody may create a user
// namespace (unshare must be installed to probe it).
func RequireUnprivilegedUserNS(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	unshare := RequireTool(t, "unshare")

	cmd := exec.Command(unshare, "--user", "--map-root-user", "--net", "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: Nobody, Gid: Nobody}}
	if out, err := cmd.CombinedOutput(); err != nil {
		Skip(t, "unprivileged user namespaces are not available: "+string(out)+err.Error())
	}
}

// OpenTunForAll makes /dev/net/tun usable by every user (mode 0666), as
// most distributions ship it. It leaves the mode so: test packages run in
// parallel processes, and one restoring 0600 while another's unprivileged
// run opens the device made those runs fail at random.
func OpenTunForAll(t testing.TB) {
	t.Helper()
	const tun = "/dev/net/tun"

	st, err := os.Stat(tun)
	if err != nil {
		Skip(t, "no "+tun+": "+err.Error())
	}

	mode := st.Mode().Perm()
	if mode&0o006 == 0o006 {
		return
	}

	if err := os.Chmod(tun, mode|0o066); err != nil {
		Skip(t, "cannot open "+tun+" to all users: "+err.Error())
	}
}

// CopyExecutable copies the running test binary to a temporary directory
// that Nobody can read and execute (the go tool builds it in a private
// one), and returns its path.
func CopyExecutable(t testing.TB) string {
	t.Helper()

	self, err := os.Executable()
	if err != nil {
		t.Fatalf("find test binary: %v", err)
	}

	dir, err := os.MkdirTemp("", "childflow-bin-")
	if err != nil {
		t.Fatalf("create directory for the test binary: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("open %s to all users: %v", dir, err)
	}

	dst := filepath.Join(dir, filepath.Base(self))
	if err := copyFile(dst, self); err != nil {
		t.Fatalf("copy test binary: %v", err)
	}

	return dst
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()

	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}

	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}

	return out.Close()
}

// AsNobody makes cmd run as Nobody, in a working directory it may use.
func AsNobody(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: Nobody, Gid: Nobody}
	cmd.Dir = "/"
}
