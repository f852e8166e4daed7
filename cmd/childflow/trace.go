package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/policy"
	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/report"
	"github.com/childflow/childflow/trace"
)

// traceAction runs the command after `--`.
func traceAction(c *cli.Context) error {
	s, err := loadSettings(c)
	if err != nil {
		return err
	}
	if s.dumpProfile {
		return dumpProfile(c, s)
	}

	o, err := s.options()
	if err != nil {
		return err
	}
	stderr := c.App.ErrWriter
	for _, w := range s.notices {
		s.notice(stderr, w)
	}

	// The summary's report is built live, only when a summary is wanted:
	// it costs a JSON round trip per event.
	var agg *report.Aggregator
	var sinks flows.Tee
	if s.wantsSummary() {
		agg = report.NewAggregator()
		sinks = append(sinks, agg)
	}
	if live := newLiveView(stderr, s.quiet); live != nil {
		sinks = append(sinks, live)
	}
	if len(sinks) > 0 {
		o.Sink = sinks
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	o.Signals = sigs
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	res, err := trace.Run(context.Background(), *o)
	if err != nil {
		return runError(err)
	}
	for _, w := range res.Warnings {
		s.notice(stderr, w)
	}
	if err := s.writeSummary(c, o, res, agg); err != nil {
		fmt.Fprintf(stderr, "childflow: write summary: %v\n", err)
	}

	return exitFor(stderr, s, res)
}

// exitFor decides childflow's exit code: the command's, unless --fail-on-leak
// fired, and says why on stderr.
func exitFor(stderr io.Writer, s *settings, res *trace.Result) error {
	if res.Loss.Events > 0 {
		fmt.Fprintf(stderr, "childflow: %d control events were lost; the flow log is incomplete\n", res.Loss.Events)
	}
	if res.CaptureLost > 0 && !s.quiet {
		fmt.Fprintf(stderr, "childflow: %d packets were not captured (raise --capture-buffer)\n", res.CaptureLost)
	}
	if s.failOnLeak && res.Violations > 0 && res.ExitCode == 0 {
		return &exitError{code: 1, msg: fmt.Sprintf(
			"--fail-on-leak: %d attempt(s) denied by policy, first: %s", res.Violations, res.FirstViolation)}
	}
	if res.ExitCode != 0 {
		return &exitError{code: res.ExitCode}
	}

	return nil
}

// runError maps a run error to an exit code and one line.
func runError(err error) error {
	var ue *trace.UsageError
	var f *trace.Failure
	switch {
	case errors.As(err, &ue):
		return &exitError{code: 2, msg: ue.Msg}
	case errors.Is(err, trace.ErrCommandNotFound):
		return &exitError{code: 127, msg: err.Error()}
	case errors.Is(err, trace.ErrCommandNotExecutable):
		return &exitError{code: 126, msg: err.Error()}
	case errors.As(err, &f):
		return &exitError{code: 1, msg: f.Error()}
	}

	return &exitError{code: 1, msg: err.Error()}
}

// settings are the merged flags and profile of one trace.
type settings struct {
	command []string

	capture, capturePoint, flowLog string
	snaplen, captureBuffer         uint
	summary                        bool
	summaryFormat, summaryFile     string
	quiet                          bool

	policy                policy.Config
	policySet             bool
	allowCIDRs, denyCIDRs []string
	failOnLeak            bool

	dns, hostsFile string

	proxyURL, proxyUser, proxyPassword, proxyPasswordFile string
	proxyCA                                               string
	proxyInsecure, proxyLoopback, proxyRelay              bool

	backend      string
	keepRoot     bool
	hostLoopback bool
	keepCaps     bool

	dumpProfile bool
	profilePath string
	notices     []string
}

func (s *settings) notice(w io.Writer, msg string) {
	if !s.quiet {
		fmt.Fprintf(w, "childflow: %s\n", msg)
	}
}

// options validates the settings into trace options. Every error is a
// usage error naming the input and the fix.
func (s *settings) options() (*trace.Options, error) {
	if len(s.command) == 0 {
		return nil, usagef("no command given (usage: childflow trace [flags] -- CMD ARGS...)")
	}
	o := &trace.Options{
		Command:      s.command,
		Backend:      s.backend,
		CapturePath:  s.capture,
		SnapLen:      uint32(s.snaplen),
		FlowLogPath:  s.flowLog,
		HostsFile:    s.hostsFile,
		KeepRoot:     s.keepRoot,
		HostLoopback: s.hostLoopback,
		KeepCaps:     s.keepCaps,
	}
	if s.captureBuffer != 0 {
		mib := s.captureBuffer
		if mib&(mib-1) != 0 || mib > 1024 {
			return nil, usagef("invalid --capture-buffer %d: want a power of two up to 1024 (MiB)", mib)
		}
		o.PacketRing = uint32(mib << 20)
	}
	if err := s.checkCapturePoint(); err != nil {
		return nil, err
	}
	if _, err := report.ParseFormat(s.summaryFormat); err != nil {
		return nil, usagef("invalid --summary-format %q: use text, json or markdown", s.summaryFormat)
	}
	if s.dns != "" {
		up, err := parseDNS(s.dns)
		if err != nil {
			return nil, err
		}
		o.DNSUpstreams = []netip.AddrPort{up}
	}
	if s.hostsFile != "" {
		if _, err := os.Stat(s.hostsFile); err != nil {
			return nil, usagef("cannot read --hosts-file %s: %v", s.hostsFile, errors.Unwrap(err))
		}
	}
	if err := s.proxyOptions(o); err != nil {
		return nil, err
	}
	if s.policySet {
		p, err := policy.New(s.policy)
		if err != nil {
			return nil, usagef("%v", err)
		}
		o.Policy = p
		s.notices = append(s.notices, p.Warnings()...)
	}
	if s.policy.ProxyOnly && o.Proxy == nil {
		return nil, usagef("--proxy-only needs --proxy URL")
	}

	return o, nil
}

func (s *settings) checkCapturePoint() error {
	switch s.capturePoint {
	case "", "child":
		return nil
	case "egress", "wire-egress", "both":
		// childflow 0.8's views of a host interface: accepted so that its
		// scripts run unchanged, with the tree's own packets written.
		s.notices = append(s.notices, fmt.Sprintf("--capture-point %s: childflow captures "+
			"the tree's own packets (the child view); host-interface views are not available",
			s.capturePoint))
		return nil
	}

	return usagef("invalid --capture-point %q: use child, egress, wire-egress or both", s.capturePoint)
}

func (s *settings) proxyOptions(o *trace.Options) error {
	if s.proxyURL == "" {
		if s.proxyUser != "" || s.proxyPassword != "" || s.proxyInsecure || s.proxyLoopback ||
			s.proxyCA != "" || s.proxyRelay {
			return usagef("--proxy-user, --proxy-password, --proxy-ca, --proxy-insecure, " +
				"--proxy-loopback and --proxy-relay need --proxy URL")
		}
		return nil
	}
	u, err := proxy.ParseURL(s.proxyURL)
	if err != nil {
		return usagef("%v", err)
	}
	pass, err := proxy.ResolvePassword(s.proxyPassword, s.proxyPasswordFile, os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	// The traced command inherits childflow's environment: keep the
	// password out of it.
	_ = os.Unsetenv(proxy.PasswordEnv)
	if s.proxyUser != "" || pass != "" {
		if u, err = u.WithCredentials(s.proxyUser, pass); err != nil {
			return usagef("%v", err)
		}
	}
	if s.proxyInsecure {
		if u.Scheme != proxy.SchemeHTTPS {
			return usagef("--proxy-insecure applies to https:// proxies only (got %s://)", u.Scheme)
		}
		u.Insecure = true
	}
	if s.proxyCA != "" {
		if u.Scheme != proxy.SchemeHTTPS {
			return usagef("--proxy-ca applies to https:// proxies only (got %s://)", u.Scheme)
		}
		if o.ProxyRootCAs, err = proxy.LoadCertPool(s.proxyCA); err != nil {
			return usagef("invalid --proxy-ca: %v", err)
		}
	}
	o.Proxy = u
	o.ProxyLoopback = s.proxyLoopback
	o.ProxyRelay = s.proxyRelay

	return nil
}

// parseDNS parses --dns: an IPv4 or IPv6 address with an optional port.
func parseDNS(v string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(v); err == nil {
		return ap, nil
	}
	if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}

	return netip.AddrPort{}, usagef("invalid --dns %q: want an IP address with an optional port, "+
		"such as 1.1.1.1, 1.1.1.1:5353 or [2606:4700::1111]:53", v)
}

// wantsSummary tells whether the run prints or writes a summary.
func (s *settings) wantsSummary() bool { return s.summary || s.summaryFile != "" }

// summaryPath is the file that receives the markdown summary, if any:
// --summary-file, or $GITHUB_STEP_SUMMARY with --summary.
func (s *settings) summaryPath() string {
	if s.summaryFile == "" && s.summary {
		return os.Getenv("GITHUB_STEP_SUMMARY")
	}

	return s.summaryFile
}

func (s *settings) writeSummary(c *cli.Context, o *trace.Options, res *trace.Result,
	agg *report.Aggregator) error {
	if agg == nil {
		return nil
	}
	file := s.summaryPath()
	format := s.summaryFormat
	rep := agg.Report()

	sum := &report.Summary{
		Backend:    res.Backend,
		Command:    o.Command,
		ExitCode:   res.ExitCode,
		Signal:     res.Signal,
		DurationMs: res.Duration.Milliseconds(),
		Warnings:   res.Warnings,
		Report:     rep,
	}
	if o.Policy != nil {
		sum.Controls = o.Policy.Controls()
	}
	if o.CapturePath != "" {
		sum.Capture = &report.CaptureStatus{Paths: []string{o.CapturePath},
			Packets: res.CapturePackets, Lost: res.CaptureLost}
	}
	if o.FlowLogPath != "" {
		sum.FlowLog = &report.FlowLogStatus{Path: o.FlowLogPath, Events: res.FlowLogEvents,
			Dropped: res.FlowLogDropped}
	}

	f, _ := report.ParseFormat(format)
	if s.summary {
		if err := sum.Write(c.App.ErrWriter, f); err != nil {
			return err
		}
	}
	if file != "" {
		return appendSummary(file, sum)
	}

	return nil
}

// appendSummary appends the markdown summary to file (GitHub job summaries
// are appended to, not replaced).
func appendSummary(file string, sum *report.Summary) error {
	fh, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer fh.Close()

	return sum.Write(fh, report.Markdown)
}
