package report

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// mdSection writes Markdown tables under headings of one level.
type mdSection struct {
	buf *bytes.Buffer
	top int
	h   string
}

// table writes a heading, a table of up to s.top rows and how many were left
// out. Empty tables are skipped.
func (s mdSection) table(title string, header []string, total int, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(s.buf, "\n%s %s\n\n", s.h, title)
	fmt.Fprintf(s.buf, "| %s |\n", strings.Join(header, " | "))
	fmt.Fprintf(s.buf, "|%s\n", strings.Repeat(" --- |", len(header)))
	for _, row := range rows[:min(len(rows), s.top)] {
		cells := make([]string, len(row))
		for i, c := range row {
			cells[i] = mdCell(c)
		}
		fmt.Fprintf(s.buf, "| %s |\n", strings.Join(cells, " | "))
	}
	if total > s.top {
		fmt.Fprintf(s.buf, "\n%d more not shown.\n", total-s.top)
	}
}

func (s mdSection) ranked(title, keyName string, rs []Ranked) {
	rows := make([][]string, 0, len(rs))
	for _, r := range rs {
		rows = append(rows, []string{r.Key, strconv.Itoa(r.Count)})
	}
	s.table(title, []string{keyName, "count"}, len(rs), rows)
}

// mdCell escapes a value for a Markdown table cell.
func mdCell(s string) string {
	s = oneLine(s)
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "<", "&lt;")
	if s == "" {
		return " "
	}

	return s
}

// writeMarkdown writes the report with headings of level h ("##").
func (r *Report) writeMarkdown(buf *bytes.Buffer, top int, h string) {
	s := mdSection{buf: buf, top: top, h: h}
	c, ft := r.Connects, r.Flows
	fmt.Fprintf(buf, "%s Flow report\n\n", h)
	if r.Run != nil {
		fmt.Fprintf(buf, "Run: %s\n\n", mdCell(r.Run.describe()))
	}
	fmt.Fprintf(buf, "| events | connects | via proxy | direct | ok | errors | violations "+
		"| flows | bytes in | bytes out | lost |\n")
	fmt.Fprintf(buf, "|%s\n", strings.Repeat(" ---: |", 11))
	fmt.Fprintf(buf, "| %d | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d |\n",
		r.Events, c.Attempts, c.Proxied, c.Direct, c.OK, c.Errors, r.Violations, ft.Flows,
		ft.BytesIn, ft.BytesOut, sumRanked(r.Loss))

	s.ranked("Events", "event", r.EventCounts)
	s.ranked("Protocols", "protocol", r.Protocols)
	s.ranked("DNS names", "name", r.DNSNames)
	s.ranked("DNS answers by mode", "mode", r.DNSAnswerModes)
	s.table("DNS correlations", []string{"name", "queries", "answer IPs", "connects",
		"matched domains"}, len(r.Correlations), mdCorrelationRows(r.Correlations))
	s.ranked("Connect errors", "error", r.ConnectErrors)
	s.ranked("Violations by reason", "reason_code", r.ViolationsByReason)
	s.ranked("Violations by control", "control", r.ViolationsByControl)
	s.ranked("Violations by destination", "destination", r.ViolationsByDestination)
	s.ranked("Matched domains", "domain", r.MatchedDomains)
	s.ranked("Matched CIDRs", "cidr", r.MatchedCIDRs)
	s.table("Top destinations by bytes", targetHeader, len(r.TopByBytes),
		mdTargetRows(r.TopByBytes))
	s.table("Top destinations by connections", targetHeader, len(r.TopByConnections),
		mdTargetRows(r.TopByConnections))
	r.writeFailuresMarkdown(s)
}

var targetHeader = []string{"destination", "names", "connects", "flows", "bytes in", "bytes out"}

func (r *Report) writeFailuresMarkdown(s mdSection) {
	rows := make([][]string, 0, len(r.RuntimeFailures))
	for _, f := range r.RuntimeFailures {
		rows = append(rows, []string{f.Phase, f.ReasonCode, f.Detail})
	}
	s.table("Runtime failures", []string{"phase", "reason_code", "detail"}, len(rows), rows)
	s.ranked("Loss (not delivered)", "source", r.Loss)

	rows = rows[:0]
	for _, e := range r.Malformed {
		rows = append(rows, []string{strconv.Itoa(e.Line), e.Err})
	}
	s.table(fmt.Sprintf("Malformed lines (%d)", r.MalformedLines), []string{"line", "error"},
		r.MalformedLines, rows)
}

func mdCorrelationRows(cs []Correlation) [][]string {
	rows := make([][]string, 0, len(cs))
	for _, c := range cs {
		rows = append(rows, []string{c.Name, strconv.Itoa(c.Queries),
			strings.Join(c.AnswerIPs, ", "), rankedInline(c.Connects),
			strings.Join(c.MatchedDomains, ", ")})
	}

	return rows
}

func mdTargetRows(ts []Target) [][]string {
	rows := make([][]string, 0, len(ts))
	for _, t := range ts {
		rows = append(rows, []string{t.Protocol + " " + t.Address, strings.Join(t.Names, ", "),
			strconv.Itoa(t.Connections), strconv.Itoa(t.Flows),
			strconv.FormatUint(t.BytesIn, 10), strconv.FormatUint(t.BytesOut, 10)})
	}

	return rows
}

func sumRanked(rs []Ranked) int {
	n := 0
	for _, r := range rs {
		n += r.Count
	}

	return n
}
