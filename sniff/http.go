package sniff

import (
	"bytes"
	"net"
)

// methods are the request methods ServerName recognises, with their space.
var methods = [][]byte{
	[]byte("GET "), []byte("POST "), []byte("HEAD "), []byte("PUT "), []byte("DELETE "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE "),
}

// looksLikeHTTP reports whether b starts with a known request method and,
// when the request line is complete, ends it with an HTTP/1.x version.
func looksLikeHTTP(b []byte) bool {
	if !hasMethod(b) {
		return false
	}

	line, _, complete := cutLine(b)
	if !complete {
		return true
	}

	_, version, ok := cutLast(line, ' ')

	return ok && bytes.HasPrefix(version, []byte("HTTP/1."))
}

func hasMethod(b []byte) bool {
	for _, m := range methods {
		if bytes.HasPrefix(b, m) {
			return true
		}
	}

	return false
}

// httpHost returns the host of the first Host header whose line is complete,
// without its port.
func httpHost(b []byte) string {
	_, rest, _ := cutLine(b) // the request line
	for {
		line, next, complete := cutLine(rest)
		if !complete || len(line) == 0 {
			return "" // cut short, or the end of the headers
		}

		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("host")) {
			return cleanName(stripPort(bytes.TrimSpace(value)))
		}

		rest = next
	}
}

// cutLine splits b after its first line feed, dropping "\r\n" or "\n".
// complete is false when b has no line feed.
func cutLine(b []byte) (line, rest []byte, complete bool) {
	line, rest, complete = bytes.Cut(b, []byte("\n"))

	return bytes.TrimSuffix(line, []byte("\r")), rest, complete
}

func cutLast(b []byte, sep byte) (before, after []byte, found bool) {
	i := bytes.LastIndexByte(b, sep)
	if i < 0 {
		return b, nil, false
	}

	return b[:i], b[i+1:], true
}

// stripPort removes a ":port" and the brackets of an IPv6 literal.
func stripPort(hostport []byte) []byte {
	if host, _, err := net.SplitHostPort(string(hostport)); err == nil {
		return []byte(host)
	}

	return bytes.TrimSuffix(bytes.TrimPrefix(hostport, []byte("[")), []byte("]"))
}
