// Package trace runs one command under childflow: it picks a backend (eBPF
// or rootless), starts the DNS forwarder, the proxy relay, the capture and the
// flow log, spawns the command, waits for it, shuts everything down in reverse
// order and decides the exit code.
//
// Everything a run creates (run cgroup, BPF links, listeners, temporary
// files) is released before Run returns, on success, failure or signal.
package trace

import (
	"crypto/x509"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/loader"
	"github.com/childflow/childflow/policy"
	"github.com/childflow/childflow/proxy"
)

// Backends.
const (
	BackendAuto     = "auto"
	BackendEBPF     = "ebpf"
	BackendRootless = "rootless"
)

// Options describe one run. Command is required; the rest is optional.
type Options struct {
	Command []string
	Env     []string // nil means the current environment
	Dir     string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer

	Backend string // BackendAuto (default), BackendEBPF or BackendRootless

	// CapturePath, when set, receives a pcapng of the tree's packets.
	CapturePath string
	SnapLen     uint32 // 0: whole packets
	// PacketRing is the packet ring buffer size in bytes (0: 8 MiB).
	PacketRing uint32

	// FlowLog, when set, receives the JSON Lines flow log.
	FlowLogPath string

	Policy *policy.Policy // nil: no policy

	DNSUpstreams []netip.AddrPort // empty: the host's resolver
	HostsFile    string
	NoDNS        bool // do not redirect DNS to the forwarder

	Proxy         *proxy.URL
	ProxyLoopback bool
	// ProxyRelay sends every proxied connection through the relay, also
	// where childflow could hand the program's socket the tunnel itself
	// (http and socks5 proxies on the eBPF backend; see joiner).
	ProxyRelay bool
	// ProxyRootCAs, when set, replaces the system roots for checking an
	// https proxy's certificate (--proxy-ca).
	ProxyRootCAs *x509.CertPool
	// HostLoopback lets the rootless backend reach the host's loopback
	// through the gateway address; the eBPF backend always can.
	HostLoopback bool
	ProxyTimeout time.Duration

	// KeepRoot runs the command as root even when childflow was started
	// through sudo; by default it runs as SUDO_UID/SUDO_GID.
	KeepRoot bool
	// KeepCaps leaves a root command its capabilities and the host's
	// namespaces under a policy (see package sandbox for what it loses).
	KeepCaps bool

	// Signals are forwarded to the command while it runs.
	Signals <-chan os.Signal

	// Sink receives every event in addition to the flow log (summary, live
	// view). It may be nil.
	Sink   flows.Sink
	Logger *slog.Logger
}

// Result is the outcome of a run.
type Result struct {
	Backend  string
	ExitCode int    // the command's exit code, or 128+N for signal N
	Signal   string // the signal that ended the command, if any
	Duration time.Duration

	Violations     uint64 // denied (or audited) attempts, repeats included
	FirstViolation string // "reason_code remote" of the first one

	Loss           loader.Loss
	CapturePackets uint64
	CaptureLost    uint64
	FlowLogEvents  uint64
	FlowLogDropped uint64 // events that could not be written
	Warnings       []string
}
