package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  string // substring; "" means success
	}{
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "192.0.2.7", want: "192.0.2.7/32"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "2001:DB8:0:0:1::/64", want: "2001:db8::/64"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "::/0", want: "::/0"},
		{in: "::ffff:10.1.2.3/104", want: "10.0.0.0/8"},
		{in: "::ffff:10.1.2.3", want: "10.1.2.3/32"},
		{in: "10.0.0.300/8", wantErr: `invalid CIDR "10.0.0.300/8": bad address`},
		{in: "10.0.0.0/33", wantErr: "prefix length must be a number from 0 to 32"},
		{in: "2001:db8::/129", wantErr: "from 0 to 128"},
		{in: "10.0.0.0/", wantErr: "prefix length"},
		{in: "10.0.0.0/-1", wantErr: "prefix length"},
		{in: "", wantErr: "bad address"},
		{in: "example.com", wantErr: "bad address"},
		{in: "fe80::1%eth0/64", wantErr: "zoned"},
		{in: " 10.0.0.0/8", wantErr: "bad address"},
	}
	for _, tt := range tests {
		got, err := ParseCIDR(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCIDR(%q): got error %v, want one containing %q", tt.in, err, tt.wantErr)
			}

			continue
		}

		if err != nil || got.String() != tt.want {
			t.Errorf("ParseCIDR(%q): got %v, %v, want %s", tt.in, got, err, tt.want)
		}
	}
}

func TestParseFlagCIDRMessage(t *testing.T) {
	_, err := ParseFlagCIDR("--deny-cidr", "10.0.0.300/8")

	want := `invalid --deny-cidr "10.0.0.300/8": bad address: IPv4 field has value >255 ` +
		`(want a CIDR such as 10.0.0.0/8 or an address)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}

	var ie *InputError
	if !errors.As(err, &ie) || ie.Flag != "--deny-cidr" {
		t.Errorf("got %#v, want an *InputError for --deny-cidr", err)
	}
}

func TestParseDefaultPolicy(t *testing.T) {
	tests := []struct {
		in      string
		deny    bool
		wantErr bool
	}{
		{"allow", false, false},
		{"deny", true, false},
		{"DENY", true, false},
		{" allow ", false, false},
		{"block", false, true},
		{"", false, true},
	}
	for _, tt := range tests {
		deny, err := ParseDefaultPolicy(tt.in)
		if deny != tt.deny || (err != nil) != tt.wantErr {
			t.Errorf("ParseDefaultPolicy(%q): got %v, %v, want %v, error %v",
				tt.in, deny, err, tt.deny, tt.wantErr)
		}
	}
}

func TestNormalizeDomain(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	long64 := strings.Repeat("a", 64)
	// 4 labels of 63 plus 3 dots = 255; trim to build 253 and 254.
	name253 := strings.Join([]string{long63, long63, long63, strings.Repeat("b", 61)}, ".")
	name254 := name253 + "b"

	tests := []struct {
		in, want string
		wantErr  string
	}{
		{in: "Example.COM", want: "example.com"},
		{in: "example.com.", want: "example.com"},
		{in: "*.example.com", want: "example.com"},
		{in: "*.Example.com.", want: "example.com"},
		{in: "a-b.x1.io", want: "a-b.x1.io"},
		{in: "localhost", want: "localhost"},
		{in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{in: long63 + ".com", want: long63 + ".com"},
		{in: name253, want: name253},
		{in: "", wantErr: "empty name"},
		{in: ".", wantErr: "empty name"},
		{in: "*.", wantErr: "character other than"},
		{in: "*", wantErr: "character other than"},
		{in: "example.com..", wantErr: "empty label"},
		{in: ".example.com", wantErr: "empty label"},
		{in: "a..b", wantErr: "empty label"},
		{in: "-a.com", wantErr: "starts or ends"},
		{in: "a-.com", wantErr: "starts or ends"},
		{in: "ex ample.com", wantErr: "character other than"},
		{in: "_dmarc.example.com", wantErr: "character other than"},
		{in: "*.*.example.com", wantErr: "character other than"},
		{in: "bücher.example", wantErr: "character other than"},
		{in: long64 + ".com", wantErr: "longer than 63"},
		{in: name254, wantErr: "limit is 253"},
	}
	for _, tt := range tests {
		got, err := NormalizeDomain(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NormalizeDomain(%q): got %q, %v, want error containing %q",
					tt.in, got, err, tt.wantErr)
			}

			continue
		}

		if err != nil || got != tt.want {
			t.Errorf("NormalizeDomain(%q): got %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"example.com", "*.a.b.", "-x.y", "", "a..b", "A.B.C"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		got, err := NormalizeDomain(s)
		if err != nil {
			return
		}

		again, err := NormalizeDomain(got)
		if err != nil || again != got {
			t.Fatalf("NormalizeDomain(%q) = %q is not stable: %q, %v", s, got, again, err)
		}

		if len(got) == 0 || len(got) > 253 || strings.ToLower(got) != got {
			t.Fatalf("NormalizeDomain(%q) = %q breaks the rules", s, got)
		}
	})
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "::1", "::ffff:1.2.3.4/120", "1.2.3.4/33", "x/1"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseCIDR(s)
		if err != nil {
			return
		}

		if !got.IsValid() || got != got.Masked() || got.Addr().Is4In6() {
			t.Fatalf("ParseCIDR(%q) = %v is not canonical", s, got)
		}

		again, err := ParseCIDR(got.String())
		if err != nil || again != got {
			t.Fatalf("ParseCIDR(%q) = %v does not round-trip: %v, %v", s, got, again, err)
		}

		if want, perr := netip.ParsePrefix(s); perr == nil && !want.Addr().Is4In6() &&
			want.Masked() != got {
			t.Fatalf("ParseCIDR(%q) = %v, netip says %v", s, got, want.Masked())
		}
	})
}
