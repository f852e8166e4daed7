package proxytest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"
)

// HTTPS is a running HTTPS test proxy with its own self-signed certificate.
type HTTPS struct {
	*Server
	pool *x509.CertPool
	der  []byte
}

// CertPool returns a pool holding the proxy's certificate, for
// proxy.Options.RootCAs. The certificate names 127.0.0.1, ::1 and localhost.
func (s *HTTPS) CertPool() *x509.CertPool { return s.pool }

// CertPEM returns the proxy's certificate in PEM form, as a file for
// childflow's --proxy-ca.
func (s *HTTPS) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.der})
}

// StartHTTP starts an HTTP proxy that serves CONNECT requests. Other
// methods get 405; wrong or missing credentials 407; a name it cannot resolve
// 502; a target neither on loopback nor in Options.Targets 403; a target that
// cannot be reached 502.
func StartHTTP(t testing.TB, opts Options) *Server {
	t.Helper()

	return start(t, "http", opts, nil, (*Server).serveHTTP)
}

// StartHTTPS starts the proxy of StartHTTP behind TLS, with a certificate
// generated for this test.
func StartHTTPS(t testing.TB, opts Options) *HTTPS {
	t.Helper()

	cert, pool := selfSigned(t)
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	s := start(t, "https", opts, func(ln net.Listener) net.Listener {
		return tls.NewListener(ln, conf)
	}, (*Server).serveHTTP)

	return &HTTPS{Server: s, pool: pool, der: cert.Certificate[0]}
}

func (s *Server) serveHTTP(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}

	if req.Method != http.MethodConnect {
		answer(c, http.StatusMethodNotAllowed, "")
		return
	}

	if !s.record(req.RequestURI) {
		return
	}

	if !s.authorized(req.Header.Get("Proxy-Authorization")) {
		answer(c, http.StatusProxyAuthRequired, "Proxy-Authenticate: Basic realm=\"test\"\r\n")
		return
	}

	up, status := s.connectTarget(req.RequestURI)
	if up == nil {
		answer(c, status, "")
		return
	}

	_ = c.SetReadDeadline(time.Time{})
	ok := "HTTP/1.1 200 Connection established\r\n\r\n" + string(s.opts.SendAfterConnect)
	if _, err := c.Write([]byte(ok)); err != nil {
		_ = up.Close()
		return
	}

	s.pipe(c, br, up)
}

// connectTarget resolves and dials a CONNECT target, or returns the HTTP
// status that refuses it.
func (s *Server) connectTarget(target string) (net.Conn, int) {
	a, err := s.resolve(target)
	switch {
	case errors.Is(err, errNotLoopback):
		return nil, http.StatusForbidden
	case err != nil:
		return nil, http.StatusBadGateway
	}

	up, err := s.dial(a)
	if err != nil {
		return nil, http.StatusBadGateway
	}

	return up, 0
}

func (s *Server) authorized(header string) bool {
	if s.opts.User == "" {
		return true
	}

	want := "Basic " + base64.StdEncoding.EncodeToString(
		[]byte(s.opts.User+":"+s.opts.Password))

	return subtle.ConstantTimeCompare([]byte(header), []byte(want)) == 1
}

func answer(c net.Conn, status int, headers string) {
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\n\r\n", status,
		http.StatusText(status), headers)
}

// selfSigned returns a certificate for the loopback names and a pool that
// trusts it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate test proxy key: %v", err)
	}

	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "childflow test proxy"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create test proxy certificate: %v", err)
	}

	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse test proxy certificate: %v", err)
	}

	pool := x509.NewCertPool()
	pool.AddCert(leaf)

	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
