package proxy

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

func FuzzReadConnectResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 Connection established\r\n\r\nearly"))
	f.Add([]byte("HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 502\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 403 \x1b[31mred\r\n\r\n"))
	f.Add([]byte("SSH-2.0-OpenSSH_9.6\r\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(io.LimitReader(bytes.NewReader(data), maxResponseHeader))
		code, text, err := readConnectResponse(br)
		if err != nil {
			return
		}

		if code < 100 || code > 999 {
			t.Fatalf("status %d accepted", code)
		}
		if len(text) > 130 || strings.ContainsFunc(text, func(r rune) bool {
			return r < 0x20 || r == 0x7f
		}) {
			t.Fatalf("status text %q is not one short printable line", text)
		}
	})
}

func FuzzReadSOCKSReply(f *testing.F) {
	f.Add([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0, 80, 'x'})
	f.Add([]byte{5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187})
	f.Add([]byte{5, 0, 0, 3, 3, 'a', '.', 'b', 0, 80})
	f.Add([]byte{5, 5})
	f.Add([]byte{5, 1, 0, 9})

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		reply, err := readSOCKSReply(r)
		if err != nil || reply != 0 {
			return
		}

		used := len(data) - r.Len()
		if used < 7 || data[0] != 5 {
			t.Fatalf("success read from %d bytes %x", used, data[:used])
		}
	})
}
