package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Format is an output format of reports and summaries.
type Format string

// Output formats.
const (
	Text     Format = "text"
	Markdown Format = "markdown"
	JSON     Format = "json"
)

// reportTop is how many entries of a ranked list the text and Markdown forms
// of a report show; the JSON form lists all of them.
const reportTop = 10

// ParseFormat returns the Format named s ("md" is accepted for Markdown).
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(s) {
	case "text", "":
		return Text, nil
	case "markdown", "md":
		return Markdown, nil
	case "json":
		return JSON, nil
	}

	return "", fmt.Errorf("parse format %q: want text, markdown or json", s)
}

// Write renders the report to w in format f. Text and Markdown show the top
// entries of each list and say how many more there are; JSON has everything
// with stable snake_case field names.
func (r *Report) Write(w io.Writer, f Format) error {
	var buf bytes.Buffer
	switch f {
	case Text:
		r.writeText(&buf, reportTop)
	case Markdown:
		r.writeMarkdown(&buf, reportTop, "##")
	case JSON:
		if err := writeJSON(&buf, r); err != nil {
			return err
		}
	default:
		return fmt.Errorf("write report: unknown format %q", f)
	}

	_, err := w.Write(buf.Bytes())
	return err
}

func writeJSON(buf *bytes.Buffer, v any) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode json: %w", err)
	}

	return nil
}

// textSection is one titled list of rows in the text form.
type textSection struct {
	buf *bytes.Buffer
	top int
}

// ranked writes a titled ranked list, skipping empty lists.
func (s textSection) ranked(title string, rs []Ranked) {
	if len(rs) == 0 {
		return
	}
	rows := make([][]string, 0, len(rs))
	for _, r := range rs {
		rows = append(rows, []string{oneLine(r.Key), strconv.Itoa(r.Count)})
	}
	s.table(title, len(rs), rows)
}

// table writes title and up to s.top aligned rows, then how many were left
// out.
func (s textSection) table(title string, total int, rows [][]string) {
	fmt.Fprintf(s.buf, "%s\n", title)
	var tb bytes.Buffer
	tw := tabwriter.NewWriter(&tb, 0, 0, 2, ' ', 0)
	for _, row := range rows[:min(len(rows), s.top)] {
		fmt.Fprintf(tw, "  %s\n", strings.Join(row, "\t"))
	}
	tw.Flush()
	for _, line := range strings.SplitAfter(tb.String(), "\n") {
		if line != "" {
			fmt.Fprintf(s.buf, "%s\n", strings.TrimRight(line, " \n"))
		}
	}
	if total > s.top {
		fmt.Fprintf(s.buf, "  ... and %d more\n", total-s.top)
	}
}

func (r *Report) writeText(buf *bytes.Buffer, top int) {
	s := textSection{buf: buf, top: top}
	if r.Run != nil {
		fmt.Fprintf(buf, "Run: %s\n", oneLine(r.Run.describe()))
	}
	s.ranked(fmt.Sprintf("Events: %d", r.Events), r.EventCounts)
	s.ranked("Protocols", r.Protocols)
	s.ranked("DNS names", r.DNSNames)
	s.ranked("DNS answers by mode", r.DNSAnswerModes)
	if len(r.Correlations) > 0 {
		s.table("DNS name -> answer IPs -> connects [matched domains]", len(r.Correlations),
			correlationRows(r.Correlations))
	}

	c := r.Connects
	fmt.Fprintf(buf, "Connects: %d attempts (%d via proxy, %d direct), %d results (%d ok, %d error)\n",
		c.Attempts, c.Proxied, c.Direct, c.Results, c.OK, c.Errors)
	s.ranked("Connect errors", r.ConnectErrors)

	fmt.Fprintf(buf, "Violations: %d\n", r.Violations)
	s.ranked("Violations by reason", r.ViolationsByReason)
	s.ranked("Violations by control", r.ViolationsByControl)
	s.ranked("Violations by destination", r.ViolationsByDestination)
	s.ranked("Matched domains", r.MatchedDomains)
	s.ranked("Matched CIDRs", r.MatchedCIDRs)

	ft := r.Flows
	fmt.Fprintf(buf, "Flows: %d, bytes in %d, out %d, packets in %d, out %d, open at exit %d\n",
		ft.Flows, ft.BytesIn, ft.BytesOut, ft.PacketsIn, ft.PacketsOut, ft.OpenAtExit)
	if len(r.TopByBytes) > 0 {
		s.table("Top destinations by bytes", len(r.TopByBytes), targetRows(r.TopByBytes))
	}
	if len(r.TopByConnections) > 0 {
		s.table("Top destinations by connections", len(r.TopByConnections),
			targetRows(r.TopByConnections))
	}

	r.writeFailuresText(s)
}

func (r *Report) writeFailuresText(s textSection) {
	if len(r.RuntimeFailures) > 0 {
		rows := make([][]string, 0, len(r.RuntimeFailures))
		for _, f := range r.RuntimeFailures {
			rows = append(rows, []string{f.Phase, f.ReasonCode, oneLine(f.Detail)})
		}
		s.table("Runtime failures", len(rows), rows)
	}
	if len(r.Loss) == 0 {
		fmt.Fprintf(s.buf, "Loss: none\n")
	} else {
		s.ranked("Loss (not delivered)", r.Loss)
	}
	if r.MalformedLines > 0 {
		rows := make([][]string, 0, len(r.Malformed))
		for _, e := range r.Malformed {
			rows = append(rows, []string{"line " + strconv.Itoa(e.Line), oneLine(e.Err)})
		}
		s.table(fmt.Sprintf("Malformed lines: %d", r.MalformedLines), r.MalformedLines, rows)
	}
}

func correlationRows(cs []Correlation) [][]string {
	rows := make([][]string, 0, len(cs))
	for _, c := range cs {
		rows = append(rows, []string{c.Name, plural(c.Queries, "query", "queries"),
			orDash(strings.Join(c.AnswerIPs, ", ")), orDash(rankedInline(c.Connects)),
			bracket(strings.Join(c.MatchedDomains, ", "))})
	}

	return rows
}

func targetRows(ts []Target) [][]string {
	rows := make([][]string, 0, len(ts))
	for _, t := range ts {
		rows = append(rows, []string{t.Protocol + " " + t.Address,
			orDash(strings.Join(t.Names, ", ")), plural(t.Connections, "connect", "connects"),
			plural(t.Flows, "flow", "flows"), fmt.Sprintf("%d B in", t.BytesIn),
			fmt.Sprintf("%d B out", t.BytesOut)})
	}

	return rows
}

func rankedInline(rs []Ranked) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%s x%d", r.Key, r.Count))
	}

	return strings.Join(parts, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}

	return strconv.Itoa(n) + " " + many
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}

	return s
}

func bracket(s string) string {
	if s == "" {
		return ""
	}

	return "[" + s + "]"
}

// oneLine replaces control characters so that a value from the log cannot
// break the layout of a text table.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
