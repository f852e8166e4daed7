package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// recordConn is a net.Conn that keeps what is written to it and has nothing
// to read, so a TLS client writes its ClientHello and then fails.
type recordConn struct{ out bytes.Buffer }

func (c *recordConn) Read([]byte) (int, error)         { return 0, errors.New("no server") }
func (c *recordConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *recordConn) Close() error                     { return nil }
func (c *recordConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recordConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recordConn) SetDeadline(time.Time) error      { return nil }
func (c *recordConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }

// clientHello returns the bytes crypto/tls sends to open a connection with
// cfg.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	conn := &recordConn{}
	if err := tls.Client(conn, cfg).Handshake(); err == nil {
		t.Fatal("handshake without a server succeeded")
	}

	if conn.out.Len() == 0 {
		t.Fatal("crypto/tls wrote no ClientHello")
	}

	return conn.out.Bytes()
}

// splitRecords re-frames a single handshake record as records of at most n
// body bytes each.
func splitRecords(hello []byte, n int) []byte {
	body := hello[recordHeaderLen:]
	var out []byte
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, recordHandshake, 3, 1, byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}

	return out
}

func TestServerNameTLS(t *testing.T) {
	tls13 := clientHello(t, &tls.Config{ServerName: "Example.COM"})
	tls12 := clientHello(t, &tls.Config{ServerName: "api.example.net", MaxVersion: tls.VersionTLS12})
	noSNI := clientHello(t, &tls.Config{ServerName: "192.0.2.1", InsecureSkipVerify: true})

	tests := []struct {
		name     string
		payload  []byte
		wantName string
		wantKind string
	}{
		{"tls 1.3 hello", tls13, "example.com", KindTLS},
		{"tls 1.2 hello", tls12, "api.example.net", KindTLS},
		{"cut at 512", tls13[:min(512, len(tls13))], "example.com", KindTLS},
		{"split records", splitRecords(tls12, 40), "api.example.net", KindTLS},
		{"ip address sends no sni", noSNI, "", KindTLS},
		{"header only", tls13[:5], "", KindTLS},
		{"three bytes", tls13[:3], "", KindTLS},
		{"two bytes", tls13[:2], "", ""},
		{"alert record", append([]byte{0x15}, tls13[1:]...), "", ""},
	}
	for _, tt := range tests {
		name, kind := ServerName(tt.payload)
		if name != tt.wantName || kind != tt.wantKind {
			t.Errorf("%s: got %q %q, want %q %q", tt.name, name, kind, tt.wantName, tt.wantKind)
		}
	}
}

// TestServerNameTLSTruncated cuts a ClientHello at every length: the name is
// either complete or absent.
func TestServerNameTLSTruncated(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "www.example.org"})
	sawName := false
	for n := range len(hello) + 1 {
		name, kind := ServerName(hello[:n])
		if n >= 3 && kind != KindTLS {
			t.Fatalf("cut at %d: got kind %q, want tls", n, kind)
		}

		if name != "" && name != "www.example.org" {
			t.Fatalf("cut at %d: got name %q, want the full name or none", n, name)
		}

		sawName = sawName || name != ""
		if sawName && name == "" {
			t.Fatalf("cut at %d: name lost after it was found at a shorter length", n)
		}
	}

	if !sawName {
		t.Fatal("got no name at any length")
	}
}

func TestServerNameTLSBadName(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "abc.example"})
	i := bytes.Index(hello, []byte("abc.example"))
	if i < 0 {
		t.Fatal("name not found in the ClientHello")
	}

	for _, bad := range []byte{'\n', ' ', ':', 0, 0xff} {
		b := bytes.Clone(hello)
		b[i+1] = bad
		if name, _ := ServerName(b); name != "" {
			t.Errorf("byte %#x in the name: got %q, want none", bad, name)
		}
	}
}

func TestServerNameHTTP(t *testing.T) {
	tests := []struct {
		name     string
		payload  string
		wantName string
		wantKind string
	}{
		{"get", "GET / HTTP/1.1\r\nHost: Example.com\r\nAccept: */*\r\n\r\n", "example.com", KindHTTP},
		{"port", "POST /x HTTP/1.1\r\nUser-Agent: t\r\nhost: api.example:8080\r\n\r\n",
			"api.example", KindHTTP},
		{"ipv6", "GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", "2001:db8::1", KindHTTP},
		{"bare lf", "HEAD / HTTP/1.0\nHOST:  a.example.  \n\n", "a.example", KindHTTP},
		{"no host", "GET / HTTP/1.0\r\n\r\nHost: after.body\r\n", "", KindHTTP},
		{"host line cut", "GET / HTTP/1.1\r\nHost: exampl", "", KindHTTP},
		{"request line cut", "GET /very/long/pa", "", KindHTTP},
		{"bad host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "", KindHTTP},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "", ""},
		{"not http version", "GET / SMTP/1.0\r\nHost: x\r\n", "", ""},
		{"lowercase method", "get / HTTP/1.1\r\nHost: x\r\n", "", ""},
		{"ssh", "SSH-2.0-OpenSSH_9.2\r\n", "", ""},
		{"empty", "", "", ""},
	}
	for _, tt := range tests {
		name, kind := ServerName([]byte(tt.payload))
		if name != tt.wantName || kind != tt.wantKind {
			t.Errorf("%s: got %q %q, want %q %q", tt.name, name, kind, tt.wantName, tt.wantKind)
		}
	}
}

func FuzzServerName(f *testing.F) {
	f.Add(clientHello(f, &tls.Config{ServerName: "example.com"}))
	f.Add(clientHello(f, &tls.Config{ServerName: "example.com", MaxVersion: tls.VersionTLS12}))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})

	f.Fuzz(func(t *testing.T, b []byte) {
		name, kind := ServerName(b)
		if name != "" && kind == "" {
			t.Fatalf("got name %q without a kind", name)
		}

		if len(name) > maxName {
			t.Fatalf("got a %d-byte name", len(name))
		}

		for i := 0; i < len(name); i++ {
			if !isNameByte(name[i]) || name[i] >= 'A' && name[i] <= 'Z' {
				t.Fatalf("got name %q with byte %#x", name, name[i])
			}
		}
	})
}

func BenchmarkServerNameTLS(b *testing.B) {
	hello := clientHello(b, &tls.Config{ServerName: "example.com"})[:512]
	for b.Loop() {
		if name, _ := ServerName(hello); name != "example.com" {
			b.Fatalf("got %q", name)
		}
	}
}
