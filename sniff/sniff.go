// Package sniff finds the server name a client asked for in the first bytes
// it sent on a connection: the SNI of a TLS ClientHello or the Host header of
// an HTTP/1.x request. The flow log records it as server_name next to the
// names learned from DNS.
//
// The input is untrusted and usually cut short (the backends copy at most a
// few hundred bytes), so the parsers read only what is there, never panic,
// and return a name only when it is complete. A ClientHello that puts the SNI
// after a large extension (a post-quantum key share is over a kilobyte) is
// recognised as TLS but yields no name when the SNI lies past the cut. Only
// plain characters of host names are accepted, so a name is safe to log.
package sniff

import (
	"bytes"
	"strings"
)

// Kinds of first bytes ServerName recognises.
const (
	KindTLS  = "tls"
	KindHTTP = "http"
)

// maxName is the longest DNS name in text form.
const maxName = 253

// ServerName returns the server name in payload, the first bytes a client
// sent, lowercased and without a trailing dot or port. kind is KindTLS for a
// TLS handshake record, KindHTTP for an HTTP/1.x request line, and "" for
// anything else; name is "" when the kind is known but no complete, plausible
// name is within payload.
func ServerName(payload []byte) (name string, kind string) {
	if looksLikeTLS(payload) {
		return clientHelloSNI(payload), KindTLS
	}

	if looksLikeHTTP(payload) {
		return httpHost(payload), KindHTTP
	}

	return "", ""
}

// cleanName lowercases a host name, drops a trailing dot, and returns "" when
// it is empty, too long, or has a byte no host name has.
func cleanName(b []byte) string {
	b = bytes.TrimSuffix(b, []byte("."))
	if len(b) == 0 || len(b) > maxName {
		return ""
	}

	for _, c := range b {
		if !isNameByte(c) {
			return ""
		}
	}

	return strings.ToLower(string(b))
}

// isNameByte accepts letters, digits, "-", "_" and "." (underscores occur in
// real names), and ":" for IPv6 literals in a Host header.
func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == ':'
}
