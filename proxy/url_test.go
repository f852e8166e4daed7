package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		raw  string
		want URL
		str  string
	}{
		{"http://proxy.example:3128", URL{Scheme: "http", Host: "proxy.example", Port: 3128},
			"http://proxy.example:3128"},
		{"HTTP://127.0.0.1:8080/", URL{Scheme: "http", Host: "127.0.0.1", Port: 8080},
			"http://127.0.0.1:8080"},
		{"https://[::1]:443", URL{Scheme: "https", Host: "::1", Port: 443}, "https://[::1]:443"},
		{"socks5://10.0.0.1:1080", URL{Scheme: "socks5", Host: "10.0.0.1", Port: 1080},
			"socks5://10.0.0.1:1080"},
		{"socks5h://[2001:db8::7]:1080", URL{Scheme: "socks5h", Host: "2001:db8::7", Port: 1080},
			"socks5h://[2001:db8::7]:1080"},
		{"http://alice:s3cret@proxy:3128",
			URL{Scheme: "http", Host: "proxy", Port: 3128, User: "alice", Password: "s3cret"},
			"http://alice@proxy:3128"},
		{"http://al%40ce:p%3Aw@d@proxy:1",
			URL{Scheme: "http", Host: "proxy", Port: 1, User: "al@ce", Password: "p:w@d"},
			"http://al@ce@proxy:1"},
		{"socks5://bob@proxy:1080", URL{Scheme: "socks5", Host: "proxy", Port: 1080, User: "bob"},
			"socks5://bob@proxy:1080"},
	}

	for _, tt := range tests {
		got, err := ParseURL(tt.raw)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.raw, err)
			continue
		}
		if *got != tt.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tt.raw, *got, tt.want)
		}
		if got.String() != tt.str {
			t.Errorf("ParseURL(%q).String() = %q, want %q", tt.raw, got.String(), tt.str)
		}
	}
}

func TestParseURLErrors(t *testing.T) {
	const pw = "hunter2-secret"
	tests := []struct {
		raw  string
		want string // substring of the error
	}{
		{"127.0.0.1:3128", `"127.0.0.1:3128": missing scheme (write it as http://host:port`},
		{"user:" + pw + "@127.0.0.1:3128", `"user:xxxxx@127.0.0.1:3128": missing scheme`},
		{"ftp://proxy:21", `unknown scheme "ftp" (use http, https, socks5 or socks5h)`},
		{"http://proxy", "missing port (write http://proxy:3128)"},
		{"socks5://u:" + pw + "@proxy", `"socks5://u:xxxxx@proxy": missing port (write ` +
			"socks5://proxy:1080)"},
		{"http://proxy:", `invalid port "" (want a number from 1 to 65535)`},
		{"http://proxy:0", `invalid port "0"`},
		{"http://proxy:65536", `invalid port "65536"`},
		{"http://proxy:+80", `invalid port "+80"`},
		{"http://proxy:http", `invalid port "http"`},
		{"http://proxy:3128/path", `unexpected "/path" after the port`},
		{"http://proxy:3128?x=1", `unexpected "?x=1" after the port`},
		{"http://proxy:3128#frag", `unexpected "#frag" after the port`},
		{"http://::1:3128", "an IPv6 address must be in brackets (write http://[::1]:3128)"},
		{"http://2001:db8::1", "must be in brackets (write http://[2001:db8::1]:PORT)"},
		{"http://[proxy]:3128", `"proxy" in brackets is not an IPv6 address`},
		{"http://[::1]", "missing port"},
		{"http://[::1", "the IPv6 address has no closing bracket (write http://[::1]:PORT)"},
		{"http://[::1:8080", "no closing bracket (write http://[::1]:8080)"},
		{"http://:3128", "missing host (write http://host:3128)"},
		{"http://", "missing host"},
		{"http://pro xy:3128", `invalid host "pro xy"`},
		{"http://:" + pw + "@proxy:3128", "password without a user name"},
		{"http://u:%zz" + pw + "@proxy:1", "bad percent-encoding in the password"},
	}

	for _, tt := range tests {
		_, err := ParseURL(tt.raw)
		if err == nil {
			t.Errorf("ParseURL(%q) succeeded, want an error containing %q", tt.raw, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseURL(%q) error = %q, want it to contain %q", tt.raw, err, tt.want)
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("ParseURL(%q) error = %q, contains the password", tt.raw, err)
		}
	}
}

func TestURLNeverShowsPassword(t *testing.T) {
	const pw = "pw-9f3k2m"
	u, err := ParseURL("https://carol:" + pw + "@[::1]:8443")
	if err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("proxy", "url", u, "value", *u)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("proxy", "url", u, "value", *u)
	asJSON, err := json.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}

	shown := map[string]string{
		"%v":      fmt.Sprintf("%v", u),
		"%+v":     fmt.Sprintf("%+v", *u),
		"%#v":     fmt.Sprintf("%#v", *u),
		"%s ptr":  fmt.Sprintf("%s", u),
		"slog":    logs.String(),
		"json":    string(asJSON),
		"Redact":  u.Redacted(),
		"Addr":    u.Addr(),
		"Dialer":  NewDialer(u, Options{}).Redacted(),
		"creds":   errString(u.WithCredentials("", pw)),
		"creds 2": errString(u.WithCredentials("dave", "")),
	}
	for name, s := range shown {
		if strings.Contains(s, pw) {
			t.Errorf("%s shows the password: %s", name, s)
		}
	}

	if got, want := u.String(), "https://carol@[::1]:8443"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func errString(_ *URL, err error) string {
	if err == nil {
		return ""
	}

	return err.Error()
}

func TestWithCredentials(t *testing.T) {
	base := &URL{Scheme: "http", Host: "p", Port: 1, User: "url-user", Password: "url-pw"}
	tests := []struct {
		user, pass string
		wantUser   string
		wantPass   string
		wantErr    string
	}{
		{"", "", "url-user", "url-pw", ""},
		{"flag-user", "flag-pw", "flag-user", "flag-pw", ""},
		{"flag-user", "", "", "", "given without a password"},
		{"", "flag-pw", "", "", "without a user (set --proxy-user too)"},
	}

	for _, tt := range tests {
		got, err := base.WithCredentials(tt.user, tt.pass)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("WithCredentials(%q, %q) error = %v, want %q", tt.user, tt.pass, err,
					tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("WithCredentials(%q, %q): %v", tt.user, tt.pass, err)
			continue
		}
		if got.User != tt.wantUser || got.Password != tt.wantPass {
			t.Errorf("WithCredentials(%q, %q) = %q/%q, want %q/%q", tt.user, tt.pass, got.User,
				got.Password, tt.wantUser, tt.wantPass)
		}
	}

	if base.User != "url-user" {
		t.Errorf("WithCredentials changed its receiver: user %q", base.User)
	}
}

func TestResolvePassword(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "from-file\r\nsecond line\n")
	empty := write("empty", "\n")
	env := func(k string) string {
		if k == PasswordEnv {
			return "from-env"
		}
		return ""
	}

	tests := []struct {
		name, flag, file string
		env              func(string) string
		want, wantErr    string
	}{
		{"flag wins over env", "from-flag", "", env, "from-flag", ""},
		{"file wins over env", "", good, env, "from-file", ""},
		{"env", "", "", env, "from-env", ""},
		{"nothing", "", "", func(string) string { return "" }, "", ""},
		{"flag and file", "from-flag", good, env, "", "both a proxy password and a password file"},
		{"empty file", "", empty, env, "", "the first line is empty"},
		{"missing file", "", filepath.Join(dir, "nope"), env, "", "read proxy password file"},
	}

	for _, tt := range tests {
		got, err := ResolvePassword(tt.flag, tt.file, tt.env)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: error = %v, want %q", tt.name, err, tt.wantErr)
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case got != tt.want:
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "from-") {
			t.Errorf("%s: error %q contains a password", tt.name, err)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	f.Add("proxy:3128", "s3cret-pw")
	f.Add("[::1]:1080/", "p@ss:word")
	f.Add("::1:80", "zz%41zz")
	f.Add("host", "secret/with#chars")

	f.Fuzz(func(t *testing.T, rest, pw string) {
		// Skip passwords that the quoted rest of the URL could show anyway.
		shown := rest + fmt.Sprintf("%q", rest) + strings.ToValidUTF8(rest, "?")
		if len(pw) < 6 || strings.Contains(shown, pw) || strings.Contains("http://user:", pw) {
			t.Skip()
		}

		raw := "http://user:" + pw + "@" + rest
		u, err := ParseURL(raw)
		if err != nil {
			if strings.Contains(err.Error(), pw) {
				t.Fatalf("error %q contains the password", err)
			}
			return
		}

		if u.Port < 1 || u.Port > 65535 || u.Host == "" {
			t.Fatalf("ParseURL(%q) = %+v without an error", raw, *u)
		}
		if u.Password != "" && strings.Contains(u.String(), u.Password) &&
			!strings.Contains(u.User+u.Host, u.Password) {
			t.Fatalf("String() %q contains the password", u.String())
		}
	})
}
