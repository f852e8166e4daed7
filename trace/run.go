package trace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/childflow/childflow/capture"
	"github.com/childflow/childflow/flows"
)

// Version is childflow's version, set by the CLI.
var Version = "dev"

// UsageError is an error in what the user asked for; the CLI exits 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Failure is a run-time failure of childflow itself (not of the command),
// with the flow log's phase and reason code.
type Failure struct {
	Phase  string
	Reason string
	Hint   string
	Err    error
}

func (f *Failure) Error() string {
	if f.Hint != "" {
		return fmt.Sprintf("%v (%s)", f.Err, f.Hint)
	}

	return f.Err.Error()
}

func (f *Failure) Unwrap() error { return f.Err }

// outputs are the files a run writes.
type outputs struct {
	flowFile *os.File
	flowLog  *flows.Writer
	capFile  *os.File
	capture  *capture.Writer
	sink     flows.Sink
}

// openOutputs creates the flow log and capture files up front, so that an
// unwritable path fails the run before the command starts.
func openOutputs(o *Options, iface capture.Interface) (*outputs, error) {
	out := &outputs{}
	var sinks flows.Tee
	if o.FlowLogPath != "" {
		f, err := createOutput(o.FlowLogPath, "--flow-log")
		if err != nil {
			return nil, err
		}
		out.flowFile = f
		out.flowLog = flows.NewWriter(f)
		sinks = append(sinks, out.flowLog)
	}
	if o.CapturePath != "" {
		f, err := createOutput(o.CapturePath, "--capture")
		if err != nil {
			out.close()
			return nil, err
		}
		out.capFile = f
		iface.SnapLen = o.SnapLen
		w, err := capture.New(f, []capture.Interface{iface})
		if err != nil {
			out.close()
			return nil, fmt.Errorf("start capture %s: %w", o.CapturePath, err)
		}
		out.capture = w
	}
	if o.Sink != nil {
		sinks = append(sinks, o.Sink)
	}
	out.sink = sinks

	return out, nil
}

func createOutput(path, flag string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, &UsageError{Msg: fmt.Sprintf("cannot write %s %s: %v (choose a writable path)",
			flag, path, errors.Unwrap(err))}
	}

	return f, nil
}

// close flushes and closes the outputs, returning the first error.
func (out *outputs) close() error {
	var errs []error
	if out.capture != nil {
		errs = append(errs, out.capture.Close())
		out.capture = nil
	}
	if out.capFile != nil {
		errs = append(errs, out.capFile.Close())
		out.capFile = nil
	}
	if out.flowLog != nil {
		errs = append(errs, out.flowLog.Close())
	}
	if out.flowFile != nil {
		errs = append(errs, out.flowFile.Close())
		out.flowFile = nil
	}

	return errors.Join(errs...)
}

// Run runs opts.Command under the chosen backend. The error is a
// *UsageError, a *Failure, or the command's own failure to start
// (ErrCommandNotFound, ErrCommandNotExecutable); the Result is set whenever
// the command ran.
func Run(ctx context.Context, o Options) (*Result, error) {
	if len(o.Command) == 0 {
		return nil, &UsageError{Msg: "no command to run (usage: childflow trace [flags] -- CMD ARGS...)"}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}

	backend, err := chooseBackend(o.Backend)
	if err != nil {
		return nil, err
	}
	switch backend {
	case BackendEBPF:
		return runEBPF(ctx, &o)
	default:
		return runRootless(ctx, &o)
	}
}

// complete ends a backend's run: a failure is recorded in the flow log, and
// the outputs are closed in every case; failing to complete them fails the run.
func complete(out *outputs, res *Result, err error) (*Result, error) {
	var f *Failure
	if errors.As(err, &f) {
		emitFailure(out.sink, f.Phase, f.Reason, f.Err)
	}
	if cerr := out.close(); cerr != nil && err == nil {
		err = &Failure{Phase: flows.PhaseRun, Reason: "output_write", Err: cerr}
	}

	return res, err
}

// emitFailure writes a runtime_failure event.
func emitFailure(sink flows.Sink, phase, reason string, err error) {
	if sink == nil {
		return
	}
	sink.Emit(&flows.RuntimeFailure{Phase: phase, ReasonCode: reason, Detail: err.Error()})
}

// rawIface is the capture interface of the eBPF view.
func rawIface() capture.Interface {
	return capture.Interface{
		Name:        "childflow",
		Description: "packets of the traced command tree's sockets, from the IP header (ebpf)",
		LinkType:    capture.LinkTypeRaw,
	}
}

// endRun fills the result's counts and writes the services' losses and the
// run_end line: the last steps of every backend.
func endRun(out *outputs, svc *services, viol *violations, res *Result) {
	if out.capture != nil {
		st := out.capture.Stats()
		res.CapturePackets, res.CaptureLost = st.Packets, st.Dropped
	}
	viol.mu.Lock()
	res.Violations, res.FirstViolation = viol.count, viol.first
	viol.mu.Unlock()

	svc.report(out.sink, res)
	out.sink.Emit(&flows.RunEnd{ExitCode: res.ExitCode, Signal: res.Signal,
		DurationMs: res.Duration.Milliseconds()})
	if out.flowLog != nil {
		res.FlowLogEvents = out.flowLog.Count()
		res.FlowLogDropped = out.flowLog.Dropped()
	}
}
