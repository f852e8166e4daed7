package dns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestResolvConf(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		in      string
		want    []netip.AddrPort
		wantErr error
	}{
		{"systemd stub", "# managed\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
			[]netip.AddrPort{ap("127.0.0.53:53")}, nil},
		{"several in order", "nameserver 192.0.2.1\nnameserver 2001:db8::1\nnameserver 192.0.2.2\n",
			[]netip.AddrPort{ap("192.0.2.1:53"), ap("[2001:db8::1]:53"), ap("192.0.2.2:53")}, nil},
		{"zone and trailing comment", "nameserver fe80::1%eth0 ; router\n",
			[]netip.AddrPort{ap("[fe80::1%eth0]:53")}, nil},
		{"tabs and junk skipped",
			"nameserver\tbad.host\n\tnameserver\t192.0.2.9\t\nnameservers 192.0.2.8\n#nameserver 192.0.2.7\n",
			[]netip.AddrPort{ap("192.0.2.9:53")}, nil},
		{"none", "search example.test\n", nil, ErrNoNameserver},
		{"empty", "", nil, ErrNoNameserver},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tt.in), 0o600); err != nil {
				t.Fatal(err)
			}

			got, err := ResolvConf(path)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestResolvConfMissing(t *testing.T) {
	if _, err := ResolvConf(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("got no error for a missing file, want one")
	}
}
