// Package testenv holds the helpers that childflow's tests share: gating on
// privileges, temporary network namespaces, and local servers. Privileged
// tests skip with a reason when the process cannot do what they need, and fail
// instead when CHILDFLOW_REQUIRE_PRIVILEGED=1 (set by CI), so that CI never
// passes by skipping.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether privileged tests must run (CI).
func Required() bool { return os.Getenv("CHILDFLOW_REQUIRE_PRIVILEGED") == "1" }

// Skip skips t with reason, or fails it when privileged tests are required.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("CHILDFLOW_REQUIRE_PRIVILEGED=1 but cannot run: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips (or fails in CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (run the tests with sudo)")
	}
}

// RequireTool skips (or fails in CI) unless name is on PATH, and returns its
// path.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, name+" is not installed (make deps installs the test tools)")
	}

	return p
}
