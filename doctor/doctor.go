// Package doctor checks whether this host can run childflow: for each
// backend ("ebpf", "rootless") it probes the capabilities the backend needs,
// turns them into preflight verdicts with hints, and says which backend
// --backend auto would pick. It also finds (and with Options.Clean removes)
// run cgroups left behind by childflow processes that died.
//
// Checks probe the kernel (load a program, create a map, attach to a cgroup,
// create a namespace) rather than parse version strings, so they are right on
// patched and back-ported kernels. The probes have side effects that they
// undo: a temporary cgroup <mount>/childflow.slice/run-<pid>-doctor, removed
// after the attach test, and a short-lived child process in new namespaces.
// The childflow.slice folder itself is left in place, as runs create it too.
//
// The result is stable: the same host in the same state gives the same JSON
// (no timestamps, no random names, sorted lists).
package doctor

// Capability statuses.
const (
	Available   = "available"
	Limited     = "limited"
	Unavailable = "unavailable"
)

// Preflight statuses.
const (
	OK      = "ok"
	Warning = "warning"
	Fatal   = "fatal"
)

// Verdicts of a backend and of the host.
const (
	Ready             = "ready"
	ReadyWithWarnings = "ready with warnings"
	Blocked           = "blocked"
)

// Backend names.
const (
	EBPF     = "ebpf"
	Rootless = "rootless"
)

// Capability is one thing a backend uses and whether this host has it.
type Capability struct {
	Key    string `json:"key"`
	Label  string `json:"label"`
	Status string `json:"status"` // Available, Limited or Unavailable
	Detail string `json:"detail"`
}

// Preflight is whether a run with the backend can start, as far as one
// check tells; Hint says what to do when Status is not OK.
type Preflight struct {
	Key    string `json:"key"`
	Status string `json:"status"` // OK, Warning or Fatal
	Hint   string `json:"hint"`
}

// BackendResult is the outcome of the checks of one backend.
type BackendResult struct {
	Name         string       `json:"name"`
	Verdict      string       `json:"verdict"`
	Capabilities []Capability `json:"capabilities"`
	Preflight    []Preflight  `json:"preflight"`
}

// StaleCgroup is a run cgroup whose owner process is gone.
type StaleCgroup struct {
	Path string `json:"path"`
	// Pid is the owner named in the folder name.
	Pid int `json:"pid"`
	// Processes still in the cgroup (and its children) when found.
	Processes int  `json:"processes"`
	Removed   bool `json:"removed"`
	// Error says why removing failed.
	Error string `json:"error,omitempty"`
}

// Result is the outcome of Run.
type Result struct {
	// Verdict is the verdict of the backend auto picks.
	Verdict string `json:"verdict"`
	// Auto is the backend --backend auto would pick: ebpf unless its checks
	// block it, else rootless.
	Auto     string          `json:"auto"`
	Backends []BackendResult `json:"backends"`
	Stale    []StaleCgroup   `json:"stale_cgroups"`
}

// Options tune Run.
type Options struct {
	// Clean removes stale run cgroups, killing what is left in them.
	Clean bool
	// CgroupMount is the cgroup2 mount to use; "" finds it.
	CgroupMount string
}

// check is a capability with what its absence means for a run.
type check struct {
	Capability
	// severity is the preflight status when the capability is unavailable.
	severity string
	// hint says what to do when the capability is not available.
	hint string
}

// Run probes the host and returns the result. It needs no privileges: what
// it cannot probe is reported as unavailable with the reason.
func Run(opts Options) Result {
	mount, mountErr := opts.CgroupMount, error(nil)
	if mount == "" {
		mount, mountErr = findMount()
	}

	var stale []StaleCgroup
	if mountErr == nil {
		stale = findStale(mount, opts.Clean)
	}

	ebpf := backendResult(EBPF, ebpfChecks(mount, mountErr))
	ebpf.Preflight = append(ebpf.Preflight, stalePreflight(stale))
	ebpf.Verdict = verdict(ebpf.Preflight)

	return assemble(ebpf, backendResult(Rootless, rootlessChecks()), stale)
}

// assemble picks the auto backend and the overall verdict.
func assemble(ebpf, rootless BackendResult, stale []StaleCgroup) Result {
	r := Result{Backends: []BackendResult{ebpf, rootless}, Stale: stale, Auto: EBPF,
		Verdict: ebpf.Verdict}
	if ebpf.Verdict == Blocked {
		r.Auto, r.Verdict = Rootless, rootless.Verdict
	}
	if r.Stale == nil {
		r.Stale = []StaleCgroup{}
	}

	return r
}

// Backend returns the result of the named backend, or nil.
func (r *Result) Backend(name string) *BackendResult {
	for i := range r.Backends {
		if r.Backends[i].Name == name {
			return &r.Backends[i]
		}
	}

	return nil
}

// backendResult turns checks into capabilities and preflight entries.
func backendResult(name string, checks []check) BackendResult {
	b := BackendResult{Name: name, Capabilities: []Capability{}, Preflight: []Preflight{}}
	for _, c := range checks {
		b.Capabilities = append(b.Capabilities, c.Capability)
		b.Preflight = append(b.Preflight, preflightOf(c))
	}
	b.Verdict = verdict(b.Preflight)

	return b
}

func preflightOf(c check) Preflight {
	switch c.Status {
	case Available:
		return Preflight{Key: c.Key, Status: OK}
	case Limited:
		return Preflight{Key: c.Key, Status: Warning, Hint: c.hint}
	}

	return Preflight{Key: c.Key, Status: c.severity, Hint: c.hint}
}

// verdict is blocked by any fatal check, and has warnings by any warning.
func verdict(ps []Preflight) string {
	v := Ready
	for _, p := range ps {
		switch p.Status {
		case Fatal:
			return Blocked
		case Warning:
			v = ReadyWithWarnings
		}
	}

	return v
}

// status returns Available when ok, else Unavailable.
func status(ok bool) string {
	if ok {
		return Available
	}

	return Unavailable
}
