package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/flows"
)

// liveView prints one compact line per new connection and per violation
// while the command runs, when stderr is a terminal.
type liveView struct {
	mu sync.Mutex
	w  io.Writer
}

// newLiveView returns nil when the view is off: --quiet, or stderr is not a
// terminal (CI logs stay clean).
func newLiveView(w io.Writer, quiet bool) flows.Sink {
	if quiet {
		return nil
	}
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}

	return &liveView{w: w}
}

// Emit implements flows.Sink.
func (l *liveView) Emit(ev flows.Event) {
	line := liveLine(ev)
	if line == "" {
		return
	}
	l.mu.Lock()
	fmt.Fprintf(l.w, "\r\033[2mchildflow\033[0m %s\n", line)
	l.mu.Unlock()
}

func liveLine(ev flows.Event) string {
	switch e := ev.(type) {
	case *flows.ConnectAttempt:
		return fmt.Sprintf("%s[%d] → %s %s%s%s", e.Comm, e.Pid, e.Protocol, e.RemoteAddr,
			namesSuffix(e.Names.Names, e.ServerName), proxySuffix(e.ViaProxy))
	case *flows.PolicyViolation:
		return fmt.Sprintf("\033[31m%s\033[0m %s[%d] → %s %s (%s)", strings.ToUpper(e.Action),
			e.Comm, e.Pid, e.Protocol, e.RemoteStr, e.ReasonCode)
	case *flows.ConnectResult:
		if e.Status == flows.StatusError && e.Error != nil {
			return fmt.Sprintf("%s[%d] ✗ %s %s: %s", e.Comm, e.Pid, e.Protocol, e.RemoteAddr, *e.Error)
		}
	}

	return ""
}

func namesSuffix(names []string, server string) string {
	if server != "" {
		return " (" + server + ")"
	}
	if len(names) > 0 {
		return " (" + names[0] + ")"
	}

	return ""
}

func proxySuffix(via bool) string {
	if via {
		return " via proxy"
	}

	return ""
}
