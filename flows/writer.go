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

// FlushInterval bounds how long a written line waits in the Writer's buffer
// before it reaches the file.
const FlushInterval = 10 * time.Millisecond

// Writer writes events as JSON Lines. Lines are buffered and flushed at most
// FlushInterval after they were written (a full buffer is written at once),
// so a crash loses at most the last FlushInterval of events, while a burst
// of events costs one write instead of one per line. It is safe for
// concurrent use; Close flushes what is left.
type Writer struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	enc     *json.Encoder
	err     error
	n       uint64
	dropped uint64
	timer   *time.Timer
	dirty   bool
	closed  bool
}

// NewWriter returns a Writer on w. The caller keeps ownership of w and must
// call Close before closing it.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)

	return &Writer{bw: bw, enc: enc}
}

// Emit implements Sink. The first write error is kept and returned by Err;
// events that could not be written after it (or after Close) are counted by
// Dropped.
func (w *Writer) Emit(ev Event) {
	h := Prepare(ev)

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.closed {
		w.dropped++
		return
	}
	if err := w.enc.Encode(ev); err != nil {
		w.err = fmt.Errorf("encode %s event: %w", h.Event, err)
		w.dropped++
		return
	}
	w.n++
	if !w.dirty {
		w.dirty = true
		w.timer = time.AfterFunc(FlushInterval, w.timedFlush)
	}
}

func (w *Writer) timedFlush() {
	w.mu.Lock()
	defer w.mu.Unlock()

	w.flushLocked()
}

func (w *Writer) flushLocked() {
	if !w.dirty || w.err != nil {
		return
	}
	w.dirty = false
	if err := w.bw.Flush(); err != nil {
		w.err = fmt.Errorf("write flow log: %w", err)
	}
}

// Flush writes the buffered lines now and returns the first error.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()

	w.flushLocked()

	return w.err
}

// Close flushes what is left; later events are dropped and counted. It is
// safe to call more than once.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()

	if w.timer != nil {
		w.timer.Stop()
	}
	w.flushLocked()
	w.closed = true

	return w.err
}

// Count returns how many events were written.
func (w *Writer) Count() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()

	return w.n
}

// Dropped returns how many events could not be written.
func (w *Writer) Dropped() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()

	return w.dropped
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
