package report

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// summaryTop is how many entries of a ranked list the text and Markdown forms
// of a summary show.
const summaryTop = 5

// Summary is what childflow prints after a run (--summary): how the run was
// set up and ended, what it wrote, and the Report of its events. The CLI
// fills it; none of its fields may hold a secret (proxy passwords).
type Summary struct {
	Backend    string   `json:"backend"`
	Command    []string `json:"command"`
	ExitCode   int      `json:"exit_code"`
	Signal     string   `json:"signal,omitempty"`
	DurationMs int64    `json:"duration_ms"`
	// Controls are the active policy controls, as flags ("--offline").
	Controls []string `json:"controls"`
	// Capture and FlowLog are nil when not asked for.
	Capture  *CaptureStatus `json:"capture"`
	FlowLog  *FlowLogStatus `json:"flow_log"`
	Warnings []string       `json:"warnings"`
	Report   *Report        `json:"report"`
}

// CaptureStatus says where packets were written and how many were lost.
type CaptureStatus struct {
	Paths   []string `json:"paths"`
	Packets uint64   `json:"packets"`
	Lost    uint64   `json:"lost"`
}

// FlowLogStatus says where the flow log was written and how many events it
// holds; Dropped counts events that could not be written.
type FlowLogStatus struct {
	Path    string `json:"path"`
	Events  uint64 `json:"events"`
	Dropped uint64 `json:"dropped"`
}

// Write renders the summary to w in format f.
func (s *Summary) Write(w io.Writer, f Format) error {
	var buf bytes.Buffer
	switch f {
	case Text:
		s.writeText(&buf)
	case Markdown:
		s.writeMarkdown(&buf)
	case JSON:
		if err := writeJSON(&buf, s.normalized()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("write summary: unknown format %q", f)
	}

	_, err := w.Write(buf.Bytes())
	return err
}

// normalized returns a copy whose lists are not nil, for stable JSON.
func (s *Summary) normalized() *Summary {
	c := *s
	if c.Command == nil {
		c.Command = []string{}
	}
	if c.Controls == nil {
		c.Controls = []string{}
	}
	if c.Warnings == nil {
		c.Warnings = []string{}
	}
	if c.Report == nil {
		c.Report = NewAggregator().Report()
	}
	rep := *c.Report
	rep.Run = nil // the summary's header says it
	c.Report = &rep

	return &c
}

// headerRows returns the run's header as label, value pairs.
func (s *Summary) headerRows() [][2]string {
	exit := strconv.Itoa(s.ExitCode)
	if s.Signal != "" {
		exit += " (" + s.Signal + ")"
	}
	rows := [][2]string{
		{"backend", s.Backend},
		{"command", shellJoin(s.Command)},
		{"exit code", exit},
		{"duration", fmt.Sprintf("%.3f s", float64(s.DurationMs)/1000)},
		{"controls", orNone(strings.Join(s.Controls, " "))},
		{"capture", "off"},
		{"flow log", "off"},
	}
	if c := s.Capture; c != nil {
		rows[5][1] = fmt.Sprintf("%s, %d packets, %d lost", strings.Join(c.Paths, ", "),
			c.Packets, c.Lost)
	}
	if l := s.FlowLog; l != nil {
		rows[6][1] = fmt.Sprintf("%s, %d events, %d dropped", l.Path, l.Events, l.Dropped)
	}

	return rows
}

func (s *Summary) writeText(buf *bytes.Buffer) {
	fmt.Fprintf(buf, "childflow summary\n")
	for _, r := range s.headerRows() {
		fmt.Fprintf(buf, "  %-10s %s\n", r[0]+":", oneLine(r[1]))
	}
	for _, w := range s.Warnings {
		fmt.Fprintf(buf, "  warning:   %s\n", oneLine(w))
	}
	fmt.Fprintf(buf, "\n")

	rep := s.normalized().Report
	rep.writeText(buf, summaryTop)
}

func (s *Summary) writeMarkdown(buf *bytes.Buffer) {
	fmt.Fprintf(buf, "## childflow summary\n\n| | |\n| --- | --- |\n")
	for _, r := range s.headerRows() {
		fmt.Fprintf(buf, "| %s | %s |\n", r[0], mdCell(r[1]))
	}
	for _, w := range s.Warnings {
		fmt.Fprintf(buf, "\n> [!WARNING]\n> %s\n", mdCell(w))
	}

	fmt.Fprintf(buf, "\n")
	rep := s.normalized().Report
	rep.writeMarkdown(buf, summaryTop, "###")
}

// shellJoin joins a command line, quoting arguments that a shell would split
// or expand.
func shellJoin(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		parts[i] = a
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
			parts[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}

	return strings.Join(parts, " ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}

	return s
}
