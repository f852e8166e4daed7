package doctor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Output formats of Write.
const (
	Text = "text"
	JSON = "json"
)

// Write renders r to w as Text or JSON. The JSON form has stable snake_case
// field names and the checks in a fixed order.
func (r Result) Write(w io.Writer, format string) error {
	var buf bytes.Buffer
	switch format {
	case Text, "":
		r.writeText(&buf)
	case JSON:
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("encode doctor result: %w", err)
		}
	default:
		return fmt.Errorf("write doctor result: unknown format %q (want text or json)", format)
	}

	_, err := w.Write(buf.Bytes())
	return err
}

func (r Result) writeText(buf *bytes.Buffer) {
	fmt.Fprintf(buf, "childflow doctor: %s (--backend auto picks %s)\n", r.Verdict, r.Auto)
	for _, b := range r.Backends {
		fmt.Fprintf(buf, "\n%s: %s\n", b.Name, b.Verdict)
		var tb bytes.Buffer
		tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', 0)
		for _, c := range b.Capabilities {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Status, c.Label, c.Detail)
		}
		tw.Flush()
		for _, line := range strings.Split(strings.TrimSuffix(tb.String(), "\n"), "\n") {
			if line != "" {
				fmt.Fprintf(buf, "%s\n", strings.TrimRight(line, " "))
			}
		}

		var notes []string
		for _, p := range b.Preflight {
			if p.Status != OK {
				notes = append(notes, fmt.Sprintf("  %s %s: %s", p.Status, p.Key, p.Hint))
			}
		}
		if len(notes) > 0 {
			fmt.Fprintf(buf, "%s\n", strings.Join(notes, "\n"))
		}
	}
	r.writeStaleText(buf)
}

func (r Result) writeStaleText(buf *bytes.Buffer) {
	if len(r.Stale) == 0 {
		return
	}
	fmt.Fprintf(buf, "\nstale run cgroups (owner gone):\n")
	for _, s := range r.Stale {
		state := "left in place"
		switch {
		case s.Removed:
			state = "removed"
		case s.Error != "":
			state = "not removed: " + s.Error
		}
		fmt.Fprintf(buf, "  %s  pid %d, %d processes, %s\n", s.Path, s.Pid, s.Processes, state)
	}
}
