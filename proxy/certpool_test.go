package proxy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/childflow/childflow/proxy"
	"github.com/childflow/childflow/proxy/proxytest"
)

// TestLoadCertPool trusts a self-signed https proxy through a PEM file, as
// --proxy-ca does, and rejects files that hold no certificate.
func TestLoadCertPool(t *testing.T) {
	origin := proxytest.StartOrigin(t, "127.0.0.1:0")
	srv := proxytest.StartHTTPS(t, proxytest.Options{})
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	tests := []struct {
		name, path, wantErr string
	}{
		{"proxy certificate", write("ca.pem", string(srv.CertPEM())), ""},
		{"not PEM", write("junk", "not a certificate\n"), "no PEM certificate in it"},
		{"missing", filepath.Join(dir, "none.pem"), "read proxy CA file: open "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := proxy.LoadCertPool(tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}

			u, err := proxy.ParseURL(srv.URL())
			if err != nil {
				t.Fatal(err)
			}
			d := proxy.NewDialer(u, proxy.Options{RootCAs: pool})
			c, err := d.DialContext(context.Background(), proxy.Target{Addr: origin.Addr()})
			if err != nil {
				t.Fatalf("dial through the https proxy trusted from the file: %v", err)
			}
			_ = c.Close()
		})
	}
}
