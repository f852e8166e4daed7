package flows

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// MaxLineBytes is the longest flow-log line ReadLog decodes. A longer line is
// reported as malformed and skipped; reading continues after it.
const MaxLineBytes = 1 << 20

// Record is one flow-log line decoded into generic JSON values: strings,
// json.Number, bool, nil, []any and map[string]any. Readers use it rather than
// the typed events so that logs of other versions (the older tool's, with
// fewer fields; newer ones, with more) are read alike. Every key is optional;
// the accessors return zero values for missing keys or keys of another type.
type Record map[string]any

// LineError is a flow-log line that could not be read as a record.
type LineError struct {
	Line int    `json:"line"`
	Err  string `json:"error"`
}

// Error implements error.
func (e LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Err) }

// ReadLog reads a JSON Lines flow log from r and calls fn for every record in
// order, with its 1-based line number. Keys may come in any order and only
// "event" (a non-empty string) is required. A malformed line (not a JSON
// object, trailing data, no event, longer than MaxLineBytes) is collected in
// malformed and reading continues; blank lines are skipped. ReadLog stops and
// returns fn's error, or the read error of r.
func ReadLog(r io.Reader, fn func(line int, rec Record) error) (malformed []LineError, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	for line := 1; ; line++ {
		data, tooLong, err := readLine(br)
		if err != nil && !errors.Is(err, io.EOF) {
			return malformed, fmt.Errorf("read flow log line %d: %w", line, err)
		}
		if errors.Is(err, io.EOF) && len(data) == 0 && !tooLong {
			return malformed, nil
		}

		rec, perr := parseLine(data, tooLong)
		switch {
		case perr != nil:
			malformed = append(malformed, LineError{Line: line, Err: perr.Error()})
		case rec != nil:
			if ferr := fn(line, rec); ferr != nil {
				return malformed, ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return malformed, nil
		}
	}
}

// readLine returns the next line without its newline. A line longer than
// MaxLineBytes is consumed and reported by tooLong with no data.
func readLine(br *bufio.Reader) (data []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong && len(data)+len(chunk) <= MaxLineBytes+1 {
			data = append(data, chunk...)
		} else {
			tooLong, data = true, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}

		return bytes.TrimSuffix(data, []byte("\n")), tooLong, err
	}
}

// parseLine decodes one line. It returns nil, nil for a blank line.
func parseLine(data []byte, tooLong bool) (Record, error) {
	if tooLong {
		return nil, fmt.Errorf("line longer than %d bytes", MaxLineBytes)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, nil
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var rec Record
	if err := dec.Decode(&rec); err != nil {
		return nil, fmt.Errorf("decode json: %w", err)
	}
	if rec == nil {
		return nil, errors.New("not a json object")
	}
	if dec.More() {
		return nil, errors.New("trailing data after json object")
	}
	if rec.Event() == "" {
		return nil, errors.New(`no "event" string`)
	}

	return rec, nil
}

// RecordOf converts a typed event into the Record its flow-log line decodes
// to, so that consumers fed live (the summary during a run) and consumers fed
// from a file see the same values. It prepares ev's header (see Prepare).
func RecordOf(ev Event) Record {
	Prepare(ev)
	data, err := json.Marshal(ev)
	if err != nil {
		// Event types hold only strings, numbers, bools and slices of them.
		return Record{"event": ev.Name(), "encode_error": err.Error()}
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var rec Record
	if err := dec.Decode(&rec); err != nil {
		return Record{"event": ev.Name(), "encode_error": err.Error()}
	}

	return rec
}

// Event returns the record's event name, or "" when it has none.
func (r Record) Event() string { return r.Str("event") }

// Has reports whether key is present, even with a null value.
func (r Record) Has(key string) bool {
	_, ok := r[key]
	return ok
}

// Str returns the string value of key, or "" when it is missing or not a
// string.
func (r Record) Str(key string) string {
	s, _ := r[key].(string)
	return s
}

// StrOK returns the string value of key and whether it is a string. A JSON
// null gives "", false.
func (r Record) StrOK(key string) (string, bool) {
	s, ok := r[key].(string)
	return s, ok
}

// Int returns the integer value of key, or 0 when it is missing, not an
// integer, or out of the int64 range.
func (r Record) Int(key string) int64 {
	v, _ := r.IntOK(key)
	return v
}

// IntOK returns the integer value of key and whether it is one. Numbers with a
// fraction or exponent are accepted when they hold a whole value.
func (r Record) IntOK(key string) (int64, bool) {
	switch v := r[key].(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, true
		}
		f, err := v.Float64()
		if err != nil || f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
			return 0, false
		}
		return int64(f), true
	case float64:
		if v != math.Trunc(v) || v < math.MinInt64 || v >= math.MaxInt64 {
			return 0, false
		}
		return int64(v), true
	}

	return 0, false
}

// Uint returns the unsigned integer value of key (byte and packet counters),
// or 0 when it is missing, negative, or not an integer.
func (r Record) Uint(key string) uint64 {
	if n, ok := r[key].(json.Number); ok {
		if u, err := strconv.ParseUint(string(n), 10, 64); err == nil {
			return u
		}
	}
	if i, ok := r.IntOK(key); ok && i > 0 {
		return uint64(i)
	}

	return 0
}

// Bool returns the boolean value of key, or false when it is missing or not
// a boolean.
func (r Record) Bool(key string) bool {
	b, _ := r[key].(bool)
	return b
}

// StrSlice returns the string elements of the array value of key, skipping
// elements of other types, or nil when key is missing or not an array.
func (r Record) StrSlice(key string) []string {
	arr, ok := r[key].([]any)
	if !ok {
		return nil
	}

	out := make([]string, 0, len(arr))
	for _, v := range arr {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}

	return out
}
