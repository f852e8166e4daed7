package proxy

import "testing"

// TestHeaderTakeSplits feeds an answer followed by tunnel bytes to
// headerReader.take in two pieces, split at every offset: it must take
// exactly the header, wherever the blank line falls.
func TestHeaderTakeSplits(t *testing.T) {
	const header = "HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
	stream := header + "\r\n\r\nTUNNEL"
	for split := 1; split < len(stream); split++ {
		h := &headerReader{}
		taken := h.take([]byte(stream[:split]))
		h.tail = []byte(stream[max(0, taken-3):taken])
		if !h.done {
			taken += h.take([]byte(stream[split:]))
		}
		if !h.done || taken != len(header) {
			t.Errorf("split at %d: took %d bytes (done %v), want %d", split, taken, h.done,
				len(header))
		}
	}
}
