package flows

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Sink receives events. Implementations must be safe for concurrent use: the
// ring buffer reader, the DNS forwarder and the proxy relay emit from their own
// goroutines.
type Sink interface {
	Emit(ev Event)
}

// Writer writes events as JSON Lines. Each line is flushed when written, so a
// crash loses at most the line being written. It is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	bw  *bufio.Writer
	enc *json.Encoder
	err error
	n   uint64
}

// NewWriter returns a Writer on w. The caller keeps ownership of w.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)

	return &Writer{bw: bw, enc: enc}
}

// Emit implements Sink. The first write error is kept and returned by Err;
// later events are dropped and counted.
func (w *Writer) Emit(ev Event) {
	h := Prepare(ev)

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return
	}
	if err := w.enc.Encode(ev); err != nil {
		w.err = fmt.Errorf("encode %s event: %w", h.Event, err)
		return
	}
	if err := w.bw.Flush(); err != nil {
		w.err = fmt.Errorf("write flow log: %w", err)
		return
	}
	w.n++
}

// Count returns how many events were written.
func (w *Writer) Count() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()

	return w.n
}

// Err returns the first error that stopped the writer, if any.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()

	return w.err
}

// Prepare fills the common header of ev (schema version, event name, and the
// timestamp when it is zero) and returns it. Sinks call it before reading ev.
func Prepare(ev Event) *Header {
	h := ev.header()
	h.SchemaVersion = SchemaVersion
	h.Event = ev.Name()
	if h.TsMs == 0 {
		h.TsMs = time.Now().UnixMilli()
	}

	return h
}

// Tee is a Sink that passes each event to every sink in order.
type Tee []Sink

// Emit implements Sink.
func (t Tee) Emit(ev Event) {
	Prepare(ev)
	for _, s := range t {
		s.Emit(ev)
	}
}

// SinkFunc adapts a function to the Sink interface.
type SinkFunc func(Event)

// Emit implements Sink.
func (f SinkFunc) Emit(ev Event) { f(ev) }
