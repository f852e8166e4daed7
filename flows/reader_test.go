package flows

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func collect(t *testing.T, log string) ([]Record, []int, []LineError) {
	t.Helper()
	var recs []Record
	var lines []int
	bad, err := ReadLog(strings.NewReader(log), func(line int, rec Record) error {
		recs = append(recs, rec)
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatalf("ReadLog: %v", err)
	}

	return recs, lines, bad
}

func TestReadLogMalformed(t *testing.T) {
	tests := []struct {
		name     string
		log      string
		lines    []int
		badLines []int
	}{
		{"empty", "", nil, nil},
		{"one", `{"event":"x"}`, []int{1}, nil},
		{"blank lines", "\n{\"event\":\"x\"}\n\n  \n{\"event\":\"y\"}\n", []int{2, 5}, nil},
		{"crlf", "{\"event\":\"x\"}\r\n{\"event\":\"y\"}\r\n", []int{1, 2}, nil},
		{"not json", "{\"event\":\"x\"}\nnope\n{\"event\":\"y\"}", []int{1, 3}, []int{2}},
		{"truncated", "{\"event\":\"x\"}\n{\"event\":\"y\",\"ts", []int{1}, []int{2}},
		{"no event", `{"ts_ms":1}`, nil, []int{1}},
		{"event not string", `{"event":5}`, nil, []int{1}},
		{"empty event", `{"event":""}`, nil, []int{1}},
		{"array", `[{"event":"x"}]`, nil, []int{1}},
		{"null", `null`, nil, []int{1}},
		{"trailing", `{"event":"x"} {"event":"y"}`, nil, []int{1}},
		{"too long", `{"event":"x","pad":"` + strings.Repeat("a", MaxLineBytes) + "\"}\n" +
			`{"event":"y"}`, []int{2}, []int{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, lines, bad := collect(t, tt.log)
			if got, want := lines, tt.lines; !equalInts(got, want) {
				t.Errorf("record lines: got %v, want %v", got, want)
			}
			var badLines []int
			for _, e := range bad {
				badLines = append(badLines, e.Line)
			}
			if got, want := badLines, tt.badLines; !equalInts(got, want) {
				t.Errorf("malformed lines: got %v (%v), want %v", got, bad, want)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}

	return true
}

func TestReadLogStopsOnCallbackError(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	_, err := ReadLog(strings.NewReader("{\"event\":\"a\"}\n{\"event\":\"b\"}\n"),
		func(int, Record) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("got err %v after %d records, want stop after 1", err, n)
	}
}

// An old-tool line: keys sorted, nulls, no added fields.
const oldLine = `{"error":null,"event":"connect_result","protocol":"tcp",` +
	`"remote_addr":"[2001:db8::1]:443","remote_ip":"2001:db8::1","remote_port":443,` +
	`"schema_version":1,"status":"ok","ts_ms":1700000000123,"via_proxy":false}`

func TestRecordAccessors(t *testing.T) {
	recs, _, bad := collect(t, oldLine+"\n"+
		`{"event":"flow_end","bytes_in":18446744073709551615,"n":-3,"f":2.0,"g":2.5,`+
		`"names":["a.example","b.example",7],"via_proxy":true}`)
	if len(bad) != 0 || len(recs) != 2 {
		t.Fatalf("got %d records, %v malformed, want 2 and none", len(recs), bad)
	}
	old, fe := recs[0], recs[1]

	tests := []struct {
		name      string
		got, want any
	}{
		{"event", old.Event(), "connect_result"},
		{"str", old.Str("remote_addr"), "[2001:db8::1]:443"},
		{"null str", old.Str("error"), ""},
		{"has null", old.Has("error"), true},
		{"has missing", old.Has("pid"), false},
		{"int", old.Int("remote_port"), int64(443)},
		{"ts", old.Int("ts_ms"), int64(1700000000123)},
		{"str as int", old.Int("status"), int64(0)},
		{"bool", fe.Bool("via_proxy"), true},
		{"uint max", fe.Uint("bytes_in"), uint64(18446744073709551615)},
		{"negative uint", fe.Uint("n"), uint64(0)},
		{"negative int", fe.Int("n"), int64(-3)},
		{"whole float", fe.Int("f"), int64(2)},
		{"fraction", fe.Int("g"), int64(0)},
		{"slice", strings.Join(fe.StrSlice("names"), ","), "a.example,b.example"},
		{"missing slice", fe.StrSlice("nope") == nil, true},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestRecordOfMatchesWrittenLine(t *testing.T) {
	errText := "connection refused"
	ev := &ConnectResult{
		Header: Header{TsMs: 42},
		Remote: Remote{Protocol: "tcp", RemoteAddr: "127.0.0.1:9", RemoteIP: "127.0.0.1",
			RemotePort: 9},
		Proc:   Proc{Pid: 7, Comm: "curl"},
		Status: StatusError,
		Error:  &errText,
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Emit(ev)
	if err := w.Close(); err != nil {
		t.Fatalf("write: %v", err)
	}
	recs, _, bad := collect(t, buf.String())
	if len(recs) != 1 || len(bad) != 0 {
		t.Fatalf("got %d records, %v malformed, want 1", len(recs), bad)
	}

	live := RecordOf(ev)
	if len(live) != len(recs[0]) {
		t.Fatalf("got %d keys live, want %d as read: %v vs %v", len(live), len(recs[0]), live,
			recs[0])
	}
	for k, v := range recs[0] {
		if live[k] != v {
			t.Errorf("key %s: got %v live, want %v as read", k, live[k], v)
		}
	}
	if got := live.Event(); got != EventConnectResult {
		t.Errorf("event: got %q, want %q", got, EventConnectResult)
	}
}

func FuzzReadLog(f *testing.F) {
	f.Add([]byte(oldLine + "\n"))
	f.Add([]byte("{\"event\":\"x\"}\nbad\n{\"event\":\"flow_end\",\"bytes_in\":1e3}"))
	f.Add([]byte("\r\n{}\n[]\nnull\n{\"event\":1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := 0
		last := 0
		bad, err := ReadLog(bytes.NewReader(data), func(line int, rec Record) error {
			if line <= last {
				t.Fatalf("line %d after %d", line, last)
			}
			last = line
			lines++
			if rec.Event() == "" {
				t.Fatalf("line %d: record without event", line)
			}
			for k := range rec {
				_ = rec.Str(k)
				_ = rec.Int(k)
				_ = rec.Uint(k)
				_ = rec.StrSlice(k)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("ReadLog: %v", err)
		}
		if max := bytes.Count(data, []byte("\n")) + 1; lines+len(bad) > max {
			t.Fatalf("got %d records and %d malformed from %d lines", lines, len(bad), max)
		}
	})
}
