package profile

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFiles writes name → content under a new temporary folder and returns
// the folder.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	return dir
}

func TestLoadExtendsChain(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"base/root.toml": `
default_policy = "deny"
allow_domains = ["root.example", "shared.example"]
flow_log = "logs/root.jsonl"
block_private = true
summary_format = "json"
`,
		"base/mid.toml": `
extends = "root.toml"
allow_domains = ["mid.example"]
capture = "mid.pcapng"
block_private = false
`,
		"ci/ci.toml": `
extends = "../base/mid.toml"
deny_cidrs = []
summary_format = "markdown"
command = ["make", "test"]
`,
	})
	p, err := Load(filepath.Join(dir, "ci/ci.toml"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	tests := []struct {
		name      string
		got, want any
	}{
		{"default_policy from root", *p.DefaultPolicy, "deny"},
		{"list replaced by mid", p.AllowDomains, []string{"mid.example"}},
		{"bool overridden with false", *p.BlockPrivate, false},
		{"scalar overridden by child", *p.SummaryFormat, "markdown"},
		{"root path against root's folder", *p.FlowLog, filepath.Join(dir, "base/logs/root.jsonl")},
		{"mid path against mid's folder", *p.Capture, filepath.Join(dir, "base/mid.pcapng")},
		{"empty list is set", p.DenyCIDRs != nil && len(p.DenyCIDRs) == 0, true},
		{"unset list", p.AllowCIDRs == nil, true},
		{"command", p.Command, []string{"make", "test"}},
		{"extends cleared", p.Extends == nil, true},
		{"sources", len(p.Sources), 3},
		{"set keys", strings.Join(p.SetKeys(), ","),
			"capture,flow_log,summary_format,block_private,default_policy,deny_cidrs," +
				"allow_domains,command"},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestLoadCycle(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a.toml": `extends = "b.toml"`,
		"b.toml": `extends = "sub/c.toml"`,
		"sub/c.toml": `extends = "../a.toml"
quiet = true`,
		"self.toml": `extends = "self.toml"`,
	})
	tests := []struct {
		file  string
		chain []string
	}{
		{"a.toml", []string{"a.toml", "b.toml", "sub/c.toml", "a.toml"}},
		{"self.toml", []string{"self.toml", "self.toml"}},
	}
	for _, tt := range tests {
		_, err := Load(filepath.Join(dir, tt.file))
		var full []string
		for _, c := range tt.chain {
			full = append(full, filepath.Join(dir, c))
		}
		want := "extends cycle: " + strings.Join(full, " -> ")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%s): got %v, want an error with %q", tt.file, err, want)
		}
	}
}

func TestLoadMissingParent(t *testing.T) {
	dir := writeFiles(t, map[string]string{"a.toml": `extends = "nope.toml"`})
	_, err := Load(filepath.Join(dir, "a.toml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want a not-exist error", err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"unknown key with line", "quiet = true\n\n# c\n\n\n\ncaptur = \"x.pcapng\"\n",
			`profile ci.toml:7: unknown key "captur" (did you mean "capture"?)`},
		{"unknown far key", "zzzzzzzzzz = 1\n", `profile ci.toml:1: unknown key "zzzzzzzzzz"`},
		{"table", "quiet = true\n[settings]\nurl = \"x\"\n",
			`profile ci.toml:2: unknown key "settings"`},
		{"type", "\nsnaplen = \"big\"\n", `profile ci.toml:2: snaplen: got a TOML string, want a int`},
		{"list type", "allow_cidrs = [1]\n", `ci.toml:1: allow_cidrs: got a TOML integer, want a string`},
		{"syntax", "quiet = \n", `profile ci.toml:1: `},
		{"duplicate", "quiet = true\nquiet = false\n", `profile ci.toml:2: `},
		{"bad domain", "quiet = true\nallow_domains = [\"ok.example\",\n \"bad..example\"]\n",
			`profile ci.toml:2: allow_domains: domain "bad..example"`},
		{"bad label", "deny_domains_exact = [\"-x.example\"]\n", `hyphen`},
		{"bad cidr", "\n\ndeny_cidrs = [\"10.0.0.0/33\"]\n",
			`profile ci.toml:3: deny_cidrs: "10.0.0.0/33"`},
		{"enum", "backend = \"kvm\"\n", `profile ci.toml:1: backend: "kvm" is not one of`},
		{"snaplen", "snaplen = 0\n", `snaplen: 0 is not in 1..262144`},
		{"proxy port", "proxy = \"http://u:hunter2@proxy.example\"\n", `proxy: want scheme://host:port`},
		{"proxy scheme", "proxy = \"ftp://p.example:21\"\n", `proxy: scheme "ftp"`},
		{"two passwords", "proxy_password = \"a\"\nproxy_password_file = \"f\"\n", `keep one`},
		{"empty path", "flow_log = \"\"\n", `flow_log: empty value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), "ci.toml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error shows the password: %v", err)
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %T, want *Error", err)
			}
		})
	}
}

func TestParseAcceptsValidValues(t *testing.T) {
	doc := `
capture = "-"
capture_point = "both"
snaplen = 262144
backend = "rootless-internal"
dns = "127.0.0.53"
proxy = "socks5://[2001:db8::1]:1080"
allow_cidrs = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
allow_domains = ["Example.COM.", "a-b.c0"]
`
	p, err := Parse([]byte(doc), "/etc/childflow/p.toml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if *p.Capture != "-" {
		t.Errorf("capture: got %q, want - unchanged", *p.Capture)
	}
}

func TestMergeCLI(t *testing.T) {
	prof := &Profile{}
	must(t, prof.Set("allow_domains", []string{"a.example", "b.example"}))
	must(t, prof.Set("capture", "p.pcapng"))
	must(t, prof.Set("quiet", true))
	must(t, prof.Set("snaplen", 96))

	cli := &Profile{}
	key, ok := KeyForFlag("allow-domain")
	if !ok || key != "allow_domains" {
		t.Fatalf("KeyForFlag(allow-domain): got %q, %v", key, ok)
	}
	must(t, cli.Set(key, []string{"c.example"}))
	must(t, cli.Set("capture", "cli.pcapng"))

	got := Merge(prof, cli)
	if !reflect.DeepEqual(got.AllowDomains, []string{"c.example"}) {
		t.Errorf("allow_domains: got %v, want the CLI list only", got.AllowDomains)
	}
	if *got.Capture != "cli.pcapng" || !*got.Quiet || *got.Snaplen != 96 {
		t.Errorf("got capture %q quiet %v snaplen %d, want cli.pcapng true 96", *got.Capture,
			*got.Quiet, *got.Snaplen)
	}
	cli.AllowDomains[0] = "changed"
	if got.AllowDomains[0] != "c.example" {
		t.Errorf("Merge shares memory with its argument")
	}
	if err := cli.Set("snaplen", "96"); err == nil {
		t.Errorf("Set(snaplen, string): got nil error, want a type error")
	}
	if err := cli.Set("nope", true); err == nil {
		t.Errorf("Set(nope): got nil error, want unknown key")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestKeyForFlag(t *testing.T) {
	tests := []struct {
		flag, key string
		ok        bool
	}{
		{"capture-point", "capture_point", true}, {"deny-cidr", "deny_cidrs", true},
		{"allow-domain-exact", "allow_domains_exact", true}, {"fail-on-leak", "fail_on_leak", true},
		{"proxy-password-file", "proxy_password_file", true}, {"profile", "profile", false},
		{"extends", "extends", false},
	}
	for _, tt := range tests {
		key, ok := KeyForFlag(tt.flag)
		if key != tt.key || ok != tt.ok {
			t.Errorf("KeyForFlag(%q): got %q, %v, want %q, %v", tt.flag, key, ok, tt.key, tt.ok)
		}
	}
}

func TestDumpRedactsPassword(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"base.toml": "proxy_password = \"hunter2\"\nproxy_user = \"ci\"\n",
		"p.toml": "extends = \"base.toml\"\nproxy = \"http://ci:s3cret@proxy.example:3128\"\n" +
			"allow_domains = []\ncommand = [\"echo\", \"a \\\"b\\\"\"]\n",
	})
	p, err := Load(filepath.Join(dir, "p.toml"))
	if err != nil {
		t.Fatal(err)
	}
	out := Dump(p)
	for _, secret := range []string{"hunter2", "s3cret"} {
		if strings.Contains(out, secret) {
			t.Fatalf("dump shows %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"proxy_password = '<redacted>'",
		"proxy = 'http://ci:%3Credacted%3E@proxy.example:3128'",
		"allow_domains = []", "proxy_user = 'ci'"} {
		if !strings.Contains(out, want) {
			t.Errorf("dump lacks %q:\n%s", want, out)
		}
	}

	back, err := Parse([]byte(out), filepath.Join(dir, "dump.toml"))
	if err != nil {
		t.Fatalf("dump does not parse: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back.Command, p.Command) {
		t.Errorf("command: got %q after dump, want %q", back.Command, p.Command)
	}
}

func TestSuggestedPolicyLoads(t *testing.T) {
	// The report package suggests profiles; they must load here.
	p, err := Load("../report/testdata/suggest-policy.toml.golden")
	if err != nil {
		t.Fatalf("Load suggested policy: %v", err)
	}
	if p.DefaultPolicy == nil || *p.DefaultPolicy != "deny" || len(p.AllowDomains) == 0 {
		t.Errorf("got %s, want default deny with allowed domains", Dump(p))
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte("capture = \"x.pcapng\"\nallow_domains = [\"a.example\"]\nsnaplen = 64\n"))
	f.Add([]byte("proxy = \"http://u:p@h.example:1\"\nproxy_password = \"p\"\ncommand = []\n"))
	f.Add([]byte("captur = 1\n[t]\nx = 2\n"))
	f.Add([]byte("flow_log = \"a\\u0000b\"\nallow_cidrs = ['::/0']\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data, "/fuzz/p.toml")
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %T, want *Error", err)
			}
			return
		}
		out := Dump(p)
		if p.ProxyPassword != nil && *p.ProxyPassword != "" &&
			strings.Contains(out, *p.ProxyPassword) && *p.ProxyPassword != Redacted &&
			!strings.Contains(Redacted+"proxy_password", *p.ProxyPassword) {
			// A one-letter password may occur by chance; only flag longer ones.
			if len(*p.ProxyPassword) > 8 {
				t.Fatalf("dump shows the password:\n%s", out)
			}
		}
		back, err := Parse([]byte(out), "/fuzz/p.toml")
		if err != nil {
			t.Fatalf("dump does not parse back: %v\n%s", err, out)
		}
		want := p.clone()
		if want.ProxyPassword != nil {
			want.ProxyPassword = back.ProxyPassword
		}
		if want.Proxy != nil {
			want.Proxy = back.Proxy
		}
		want.Sources = nil
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("dump round trip differs:\n%s\n%#v\n%#v", out, back, want)
		}
	})
}
