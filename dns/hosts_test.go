package dns

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseHosts(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name    string
		in      string
		want    map[string][]netip.Addr
		wantErr string
	}{
		{"empty", "", map[string][]netip.Addr{}, ""},
		{"comments and blanks", "# c\n\n   \t\n", map[string][]netip.Addr{}, ""},
		{"aliases", "192.0.2.1  Web.Test.  web # primary\n", map[string][]netip.Addr{
			"web.test": {a("192.0.2.1")}, "web": {a("192.0.2.1")},
		}, ""},
		{"both families and duplicates", "192.0.2.1 x.test\n2001:db8::1 x.test\n192.0.2.1 X.test\n",
			map[string][]netip.Addr{"x.test": {a("192.0.2.1"), a("2001:db8::1")}}, ""},
		{"zone", "fe80::1%lo x.test\n", map[string][]netip.Addr{"x.test": {a("fe80::1%lo")}}, ""},
		{"bad address", "ok 192.0.2.1\n", nil, "parse hosts line 1"},
		{"no name", "192.0.2.1\n192.0.2.2 # y.test\n", nil, "parse hosts line 1: address 192.0.2.1 has no name"},
		{"bad name", "192.0.2.1 a..b\n", nil, `parse hosts line 1: invalid name "a..b"`},
		{"second line", "192.0.2.1 a.test\n300.1.1.1 b.test\n", nil, "parse hosts line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHosts(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one starting %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if !maps.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestReadHostsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(path, []byte("192.0.2.7 seven.test\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	got, err := ReadHostsFile(path)
	if err != nil || !slices.Equal(got["seven.test"], []netip.Addr{netip.MustParseAddr("192.0.2.7")}) {
		t.Errorf("got %v, %v; want seven.test → 192.0.2.7", got, err)
	}

	if _, err := ReadHostsFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("got no error for a missing file, want one")
	}
}

// FuzzParseHosts checks that any input either fails or yields normalised
// names that survive a round trip through the hosts format.
func FuzzParseHosts(f *testing.F) {
	f.Add("192.0.2.1 a.test b # c\n::1 localhost\n")
	f.Add("fe80::1%eth0 X.Test.\n")
	f.Add("1.2.3.4\n")
	f.Add("\x00\xff 1.1.1.1 \\. a")

	f.Fuzz(func(t *testing.T, in string) {
		hosts, err := ParseHosts(strings.NewReader(in))
		if err != nil {
			return
		}

		var b strings.Builder
		for name, addrs := range hosts {
			if name == "" || name != strings.ToLower(name) || strings.HasSuffix(name, ".") || len(addrs) == 0 {
				t.Fatalf("got name %q with %v, want a normalised name with addresses", name, addrs)
			}
			for _, a := range addrs {
				fmt.Fprintf(&b, "%s %s\n", a, name)
			}
		}

		again, err := ParseHosts(strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("reparse %q: %v", b.String(), err)
		}
		for name, addrs := range hosts {
			if !slices.Equal(again[name], addrs) {
				t.Fatalf("round trip of %q: got %v, want %v", name, again[name], addrs)
			}
		}
	})
}
