package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// Stage says how far a dial through the proxy got before it failed.
type Stage string

// Stages of a dial through the proxy, in order.
const (
	// StageDial: the TCP connection to the proxy failed.
	StageDial Stage = "dial"
	// StageTLS: the TLS handshake with an https proxy failed.
	StageTLS Stage = "tls"
	// StageAuth: the proxy refused the credentials, or asked for some when
	// none were configured (HTTP 407, SOCKS5 authentication).
	StageAuth Stage = "auth"
	// StageConnect: the proxy refused or failed to reach the target (HTTP
	// status other than 2xx except 407, SOCKS5 reply other than 0).
	StageConnect Stage = "connect"
	// StageProtocol: the proxy's answer was malformed or the connection to
	// it broke during the handshake.
	StageProtocol Stage = "protocol"
)

// Error is the error of a failed dial through the proxy. Its message names
// the proxy by address only (never with credentials) and quotes what the
// proxy answered, for example
//
//	proxy refused CONNECT to example.org:443: 407 Proxy Authentication Required
//	socks5 connect to [2001:db8::1]:80: connection refused by proxy (reply 5)
//	proxy 127.0.0.1:3128 unreachable: connection refused
type Error struct {
	Stage  Stage
	Proxy  string // host:port of the proxy
	Target string // what the proxy was asked for, "" before the request
	Status int    // HTTP status of a refused CONNECT, else 0
	Reply  byte   // SOCKS5 reply code of a refused CONNECT, else 0
	Msg    string // the complete message returned by Error
	Err    error  // the underlying error, if any

	format string // message template until the reason is known
}

// Error implements error.
func (e *Error) Error() string { return e.Msg }

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Timeout reports whether the dial failed because its time ran out.
func (e *Error) Timeout() bool {
	var ne net.Error

	return errors.Is(e.Err, context.DeadlineExceeded) ||
		errors.As(e.Err, &ne) && ne.Timeout()
}

// reason turns a network error into the short text a flow log shows, such as
// "connection refused", "timed out" or "connection closed by proxy".
func reason(ctx context.Context, err error) string {
	var errno syscall.Errno
	var dnsErr *net.DNSError

	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return "timed out"
	case errors.Is(ctx.Err(), context.Canceled):
		return "canceled"
	case errors.As(err, &dnsErr):
		return "cannot resolve " + dnsErr.Name + ": " + dnsErr.Err
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by proxy"
	}

	return err.Error()
}
