package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// Proxy URL schemes.
const (
	SchemeHTTP    = "http"
	SchemeHTTPS   = "https"
	SchemeSOCKS5  = "socks5"
	SchemeSOCKS5H = "socks5h"
)

// PasswordEnv is the environment variable ResolvePassword reads when neither
// a password flag nor a password file is given.
const PasswordEnv = "CHILDFLOW_PROXY_PASSWORD"

// redactedPassword replaces a password wherever a URL is shown.
const redactedPassword = "xxxxx"

// URL is a parsed --proxy value. Password is a secret: String, Redacted and
// every error of this package leave it out; fmt verbs (%v, %+v, %#v), slog and
// encoding/json print the URL without it.
type URL struct {
	Scheme   string // SchemeHTTP, SchemeHTTPS, SchemeSOCKS5 or SchemeSOCKS5H
	Host     string // name or IP address, without brackets
	Port     int
	User     string
	Password string `json:"-"`
	// Insecure skips the verification of an https proxy's certificate chain
	// and host name; see Options.
	Insecure bool
}

// ParseURL parses scheme://[user[:password]@]host:port with one of the
// schemes http, https, socks5 and socks5h. The port is required, an IPv6
// host must be in brackets, and a path (other than a lone "/"), query or
// fragment is rejected. User and password may be percent-encoded. Errors quote
// raw with the password replaced and say how to fix it.
func ParseURL(raw string) (*URL, error) {
	u, problem := parseURL(raw)
	if problem != "" {
		return nil, fmt.Errorf("parse proxy URL %q: %s", redactRaw(raw), problem)
	}

	return u, nil
}

// parseURL returns the URL or a description of what is wrong with raw.
func parseURL(raw string) (*URL, string) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, "missing scheme (write it as http://host:port, https://host:port, " +
			"socks5://host:port or socks5h://host:port)"
	}

	u := &URL{Scheme: strings.ToLower(scheme)}
	switch u.Scheme {
	case SchemeHTTP, SchemeHTTPS, SchemeSOCKS5, SchemeSOCKS5H:
	default:
		return nil, fmt.Sprintf("unknown scheme %q (use http, https, socks5 or socks5h)",
			printable(scheme))
	}

	rest, problem := u.parseUserinfo(rest)
	if problem != "" {
		return nil, problem
	}

	hostport, tail := splitTail(rest)
	if tail != "" && tail != "/" {
		return nil, fmt.Sprintf("unexpected %q after the port (a proxy URL is "+
			"scheme://host:port with nothing after it)", printable(tail))
	}

	if problem := u.parseHostPort(hostport); problem != "" {
		return nil, problem
	}

	return u, ""
}

// parseUserinfo takes "user[:password]@" off the front of rest, if present.
func (u *URL) parseUserinfo(rest string) (string, string) {
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return rest, ""
	}

	user, pass, hasPass := strings.Cut(rest[:at], ":")
	var err error
	if u.User, err = url.PathUnescape(user); err != nil {
		return "", "bad percent-encoding in the user name"
	}
	if u.Password, err = url.PathUnescape(pass); err != nil {
		return "", "bad percent-encoding in the password"
	}
	if u.User == "" && hasPass {
		return "", "password without a user name (write user:password@ or use " +
			"--proxy-user and --proxy-password)"
	}

	return rest[at+1:], ""
}

// splitTail splits "host:port/path?q#f" before the first '/', '?' or '#'.
func splitTail(s string) (string, string) {
	if i := strings.IndexAny(s, "/?#"); i >= 0 {
		return s[:i], s[i:]
	}

	return s, ""
}

// parseHostPort fills Host and Port from "host:port" or "[v6]:port".
func (u *URL) parseHostPort(hp string) string {
	if hp == "" {
		return "missing host (write " + u.Scheme + "://host:port)"
	}

	if strings.Count(hp, ":") > 1 && !strings.HasPrefix(hp, "[") {
		return "an IPv6 address must be in brackets (write " + u.Scheme + "://" +
			printable(bracketHint(hp)) + ")"
	}

	if strings.HasPrefix(hp, "[") && !strings.Contains(hp, "]") {
		return "the IPv6 address has no closing bracket (write " + u.Scheme + "://" +
			printable(bracketHint(hp[1:])) + ")"
	}

	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Sprintf("missing port (write %s://%s:%d)", u.Scheme, printable(hp),
			defaultPort(u.Scheme))
	}

	return u.setHostPort(host, port, strings.HasPrefix(hp, "["))
}

// setHostPort checks and stores the host and port parts.
func (u *URL) setHostPort(host, port string, bracketed bool) string {
	if host == "" {
		return "missing host (write " + u.Scheme + "://host:" + printable(port) + ")"
	}

	if bracketed {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return fmt.Sprintf("%q in brackets is not an IPv6 address", printable(host))
		}
	} else if _, err := netip.ParseAddr(host); err != nil && !validHostname(host) {
		return fmt.Sprintf("invalid host %q (want a host name or an IP address)",
			printable(host))
	}

	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 || port[0] == '+' {
		return fmt.Sprintf("invalid port %q (want a number from 1 to 65535)", printable(port))
	}

	u.Host, u.Port = host, p

	return ""
}

// bracketHint suggests the bracketed form of an unbracketed IPv6 host:port.
// "::1:3128" is itself an address; the hint assumes a port was meant.
func bracketHint(hp string) string {
	i := strings.LastIndexByte(hp, ':')
	if _, err := netip.ParseAddr(hp[:i]); err == nil {
		return "[" + hp[:i] + "]" + hp[i:]
	}

	if _, err := netip.ParseAddr(hp); err == nil {
		return "[" + hp + "]:PORT"
	}

	return "[ADDRESS]:PORT"
}

func defaultPort(scheme string) int {
	switch scheme {
	case SchemeHTTPS:
		return 443
	case SchemeSOCKS5, SchemeSOCKS5H:
		return 1080
	}

	return 3128
}

// validHostname reports whether s is a DNS name made of letters, digits,
// hyphens, underscores and dots, at most 253 characters long.
func validHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}

	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !isHostByte(c) {
				return false
			}
		}
	}

	return true
}

func isHostByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_'
}

// printable keeps error messages on one line whatever the input holds.
func printable(s string) string {
	const max = 80
	if len(s) > max {
		s = s[:max] + "..."
	}

	return strings.ToValidUTF8(s, "?")
}

// redactRaw replaces the password part of a raw proxy URL, if any.
func redactRaw(raw string) string {
	prefix, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		prefix, rest = raw[:i+3], raw[i+3:]
	}

	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return raw
	}

	userinfo := rest[:at]
	if c := strings.IndexByte(userinfo, ':'); c >= 0 {
		userinfo = userinfo[:c] + ":" + redactedPassword
	}

	return prefix + userinfo + rest[at:]
}

// Addr returns "host:port" of the proxy, with an IPv6 host in brackets.
func (u URL) Addr() string { return net.JoinHostPort(u.Host, strconv.Itoa(u.Port)) }

// String returns the URL without the password: scheme://[user@]host:port.
// It is what logs, errors and events show.
func (u URL) String() string {
	if u.User == "" {
		return u.Scheme + "://" + u.Addr()
	}

	return u.Scheme + "://" + url.PathEscape(u.User) + "@" + u.Addr()
}

// Redacted is String; the name says at the call site that no secret leaks.
func (u URL) Redacted() string { return u.String() }

// GoString makes %#v print String too.
func (u URL) GoString() string { return u.String() }

// LogValue makes slog print String too.
func (u URL) LogValue() slog.Value { return slog.StringValue(u.String()) }

// WithCredentials returns a copy of u with user and password set from the
// --proxy-user and --proxy-password values, which go together: both empty
// keeps the credentials of u (from the URL, if any), one without the other is
// an error. The error never contains the password.
func (u *URL) WithCredentials(user, password string) (*URL, error) {
	c := *u
	switch {
	case user == "" && password == "":
		return &c, nil
	case user == "":
		return nil, errors.New("proxy password given without a user (set --proxy-user too)")
	case password == "":
		return nil, fmt.Errorf("proxy user %q given without a password (set --proxy-password, "+
			"%s or a password file too)", printable(user), PasswordEnv)
	}

	c.User, c.Password = user, password

	return &c, nil
}

// ResolvePassword returns the proxy password from, in this order: flagValue
// (-P/--proxy-password), the first line of file (a password file, for
// passwords that must not appear in the process list), and the environment
// variable PasswordEnv read through env (os.Getenv when nil). Setting both
// flagValue and file is an error. It returns "" and no error when no source
// is set. One trailing newline ("\n" or "\r\n") of the file is removed; an
// empty password file is an error. Errors never contain the password.
func ResolvePassword(flagValue, file string, env func(string) string) (string, error) {
	if flagValue != "" && file != "" {
		return "", errors.New("both a proxy password and a password file are set (use one)")
	}

	if flagValue != "" {
		return flagValue, nil
	}

	if file != "" {
		return readPasswordFile(file)
	}

	if env == nil {
		env = os.Getenv
	}

	return env(PasswordEnv), nil
}

func readPasswordFile(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read proxy password file: %w", err)
	}

	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("read proxy password file %s: the first line is empty", file)
	}

	return pw, nil
}
