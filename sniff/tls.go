package sniff

import "bytes"

const (
	recordHandshake    = 0x16
	handshakeHello     = 0x01
	extServerName      = 0x0000
	serverNameHostName = 0x00
	recordHeaderLen    = 5
	maxRecordLen       = 1<<14 + 2048 // TLSCiphertext limit (RFC 8446, 5.2)
)

// looksLikeTLS reports whether b starts with a TLS handshake record header
// of a plausible version and length.
func looksLikeTLS(b []byte) bool {
	if len(b) < 3 || b[0] != recordHandshake || b[1] != 3 || b[2] > 4 {
		return false
	}

	return len(b) < recordHeaderLen || int(b[3])<<8|int(b[4]) <= maxRecordLen
}

// clientHelloSNI returns the host name of the server_name extension of the
// ClientHello in the handshake records of b, or "".
func clientHelloSNI(b []byte) string {
	hs := handshakeBytes(b)

	r := reader{b: hs}
	if t, ok := r.u8(); !ok || t != handshakeHello {
		return ""
	}

	r.skip(3)  // length: the message may be longer than what we have
	r.skip(2)  // legacy_version
	r.skip(32) // random
	r.skipVec8()
	r.skipVec16() // cipher_suites
	r.skipVec8()  // compression methods

	exts, ok := r.vec16Prefix()
	if !ok {
		return ""
	}

	return sniFromExtensions(exts)
}

// handshakeBytes joins the fragments of consecutive handshake records in b:
// a ClientHello may be split across records.
func handshakeBytes(b []byte) []byte {
	var out []byte
	for len(b) >= recordHeaderLen && b[0] == recordHandshake {
		n := int(b[3])<<8 | int(b[4])
		body := b[recordHeaderLen:]
		if n < len(body) {
			body = body[:n]
		}

		b = b[recordHeaderLen+len(body):]
		if out == nil && (len(b) < recordHeaderLen || b[0] != recordHandshake) {
			return body // the common case: one record, no copy
		}

		out = append(out, body...)
	}

	return out
}

// sniFromExtensions walks the extensions, which may be cut short, to the
// server_name extension.
func sniFromExtensions(exts []byte) string {
	r := reader{b: exts}
	for {
		typ, ok1 := r.u16()
		data, ok2 := r.vec16()
		if !ok1 || !ok2 {
			return ""
		}

		if typ == extServerName {
			return hostNameFromSNI(data)
		}
	}
}

// hostNameFromSNI reads the first host_name entry of a ServerNameList.
func hostNameFromSNI(data []byte) string {
	r := reader{b: data}
	list, ok := r.vec16()
	if !ok {
		return ""
	}

	l := reader{b: list}
	for {
		typ, ok1 := l.u8()
		name, ok2 := l.vec16()
		if !ok1 || !ok2 {
			return ""
		}

		if typ == serverNameHostName && !bytes.ContainsRune(name, ':') {
			return cleanName(name)
		}
	}
}

// reader reads big-endian fields from b and fails, without panicking, when
// b runs out. After a failure every read fails.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) ([]byte, bool) {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil, false
	}

	v := r.b[:n]
	r.b = r.b[n:]

	return v, true
}

func (r *reader) skip(n int) { r.take(n) }

func (r *reader) u8() (int, bool) {
	v, ok := r.take(1)
	if !ok {
		return 0, false
	}

	return int(v[0]), true
}

func (r *reader) u16() (int, bool) {
	v, ok := r.take(2)
	if !ok {
		return 0, false
	}

	return int(v[0])<<8 | int(v[1]), true
}

// vec16 reads a vector with a 2-byte length; it fails when cut short.
func (r *reader) vec16() ([]byte, bool) {
	n, ok := r.u16()
	if !ok {
		return nil, false
	}

	return r.take(n)
}

// vec16Prefix reads a vector with a 2-byte length, returning what is present
// when the input ends inside it.
func (r *reader) vec16Prefix() ([]byte, bool) {
	n, ok := r.u16()
	if !ok {
		return nil, false
	}

	n = min(n, len(r.b))

	return r.take(n)
}

func (r *reader) skipVec8() {
	if n, ok := r.u8(); ok {
		r.skip(n)
	}
}

func (r *reader) skipVec16() {
	if n, ok := r.u16(); ok {
		r.skip(n)
	}
}
