package flows

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the Writer's timer goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestWriterFlushesWithinInterval checks that a line reaches the file
// without Close, within a few flush intervals.
func TestWriterFlushesWithinInterval(t *testing.T) {
	var out syncBuffer
	w := NewWriter(&out)
	defer w.Close()

	w.Emit(&RunEnd{ExitCode: 3})
	deadline := time.Now().Add(100 * FlushInterval)
	for out.String() == "" && time.Now().Before(deadline) {
		time.Sleep(FlushInterval / 2)
	}
	if got := out.String(); !strings.Contains(got, `"event":"run_end"`) || !strings.Contains(got, `"exit_code":3`) {
		t.Fatalf("after %s the file holds %q, want the run_end line", 100*FlushInterval, got)
	}
}

// TestWriterConcurrentAndClose writes from many goroutines, then checks
// every line is whole and that events after Close are counted as dropped.
func TestWriterConcurrentAndClose(t *testing.T) {
	var out syncBuffer
	w := NewWriter(&out)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				w.Emit(&Loss{Source: "events", Count: uint64(i)})
			}
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4000 || w.Count() != 4000 {
		t.Fatalf("got %d lines, Count %d, want 4000", len(lines), w.Count())
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, `{"schema_version":1,`) || !strings.HasSuffix(l, "}") {
			t.Fatalf("line %d is not whole: %q", i+1, l)
		}
	}

	w.Emit(&RunEnd{})
	if w.Dropped() != 1 {
		t.Errorf("Dropped = %d after an event past Close, want 1", w.Dropped())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestWriterKeepsFirstError checks that a write error is reported and the
// events after it are counted as dropped.
func TestWriterKeepsFirstError(t *testing.T) {
	w := NewWriter(failWriter{})
	w.Emit(&RunEnd{})
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Flush = %v, want the disk full error", err)
	}
	w.Emit(&RunEnd{})
	w.Emit(&RunEnd{})
	if w.Dropped() != 2 {
		t.Errorf("Dropped = %d, want 2", w.Dropped())
	}
}
