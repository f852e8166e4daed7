package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/childflow/childflow/internal/testenv"
)

// cliCall is one childflow invocation with its arguments exactly as given;
// run.do, by contrast, always runs `childflow trace ... -- CMD`.
type cliCall struct {
	args   []string
	env    []string
	dir    string // working directory; a new temporary one when empty
	bin    string // the binary; the one binary() built when empty
	nobody bool   // run as uid and gid 65534
}

// do runs childflow and waits for it, for at most 30 s.
func (c cliCall) do(t testing.TB) *result {
	t.Helper()
	bin := c.bin
	if bin == "" {
		bin = binary(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cmd := exec.CommandContext(ctx, bin, c.args...)
	if c.nobody {
		testenv.AsNobody(cmd)
	}
	cmd.Dir = c.dir
	if cmd.Dir == "" {
		cmd.Dir = t.TempDir()
	}
	cmd.Env = append(cliEnv(), c.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	err := cmd.Run()
	res := &result{stdout: stdout.String(), stderr: stderr.String(), dir: cmd.Dir}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("childflow %q did not finish within 30 s; stderr:\n%s", c.args, res.stderr)
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run childflow %q: %v", c.args, err)
	}

	return res
}

// cliEnv is the test's environment without the variables that would change
// what childflow does: a CI job summary must not receive the tests' output.
func cliEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GITHUB_STEP_SUMMARY=") &&
			!strings.HasPrefix(kv, "CHILDFLOW_PROXY_PASSWORD=") {
			env = append(env, kv)
		}
	}

	return env
}

// cliNobodyBinary copies childflow to a folder that uid 65534 can read and
// execute (the test's temporary folders are private to root).
func cliNobodyBinary(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "childflow-nobody-")
	if err != nil {
		t.Fatalf("create folder for the binary: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("open %s to all users: %v", dir, err)
	}
	data, err := os.ReadFile(binary(t))
	if err != nil {
		t.Fatalf("read childflow: %v", err)
	}
	dst := filepath.Join(dir, "childflow")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatalf("copy childflow: %v", err)
	}

	return dst
}

// cliWriteFile writes content to dir/name, creating folders, and returns the
// path.
func cliWriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}

	return path
}

// cliOneLine fails t unless stderr is exactly one "childflow: ..." line.
func cliOneLine(t testing.TB, stderr string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "childflow: ") || !strings.HasSuffix(stderr, "\n") ||
		strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr is not one \"childflow: ...\" line:\n%q", stderr)
	}
}

// cliHelpFlag is one flag as --help shows it.
type cliHelpFlag struct {
	group       string   // the category heading above it ("" for none)
	names       []string // every name and alias, with dashes
	placeholder string   // the value placeholder after the long name
	line        string
}

var cliHelpGroups = map[string]bool{
	"Output": true, "Policy": true, "DNS": true, "Proxy": true, "Backend": true, "Profile": true,
}

// cliParseHelp reads urfave/cli's help text into its flags, by each name.
func cliParseHelp(out string) map[string]cliHelpFlag {
	flags := map[string]cliHelpFlag{}
	group := ""
	for _, line := range strings.Split(out, "\n") {
		tl := strings.TrimSpace(line)
		switch {
		case cliHelpGroups[tl]:
			group = tl
		case strings.HasSuffix(tl, ":"):
			group = ""
		case strings.HasPrefix(tl, "-"):
			f := cliHelpFlag{group: group, line: tl}
			namePart, _, _ := strings.Cut(tl, "  ")
			for i, alias := range strings.Split(namePart, ", ") {
				fields := strings.Fields(alias)
				f.names = append(f.names, fields[0])
				if i == 0 {
					f.placeholder = strings.Join(fields[1:], " ")
				}
			}
			for _, n := range f.names {
				flags[n] = f
			}
		}
	}

	return flags
}

// cliDesignFlags are the flags of design section 10, with their short alias,
// the --help group they belong to, and whether they take no value.
var cliDesignFlags = []struct {
	name, short, group string
	boolean            bool
}{
	{"--capture", "-c", "Output", false},
	{"--capture-point", "-C", "Output", false},
	{"--flow-log", "", "Output", false},
	{"--summary", "", "Output", true},
	{"--summary-format", "", "Output", false},
	{"--offline", "", "Policy", true},
	{"--block-private", "", "Policy", true},
	{"--block-metadata", "", "Policy", true},
	{"--default-policy", "", "Policy", false},
	{"--allow-cidr", "", "Policy", false},
	{"--deny-cidr", "", "Policy", false},
	{"--allow-domain", "", "Policy", false},
	{"--allow-domain-exact", "", "Policy", false},
	{"--deny-domain", "", "Policy", false},
	{"--deny-domain-exact", "", "Policy", false},
	{"--proxy-only", "", "Policy", true},
	{"--fail-on-leak", "", "Policy", true},
	{"--dns", "-d", "DNS", false},
	{"--hosts-file", "", "DNS", false},
	{"--proxy", "-p", "Proxy", false},
	{"--proxy-user", "-U", "Proxy", false},
	{"--proxy-password", "-P", "Proxy", false},
	{"--proxy-insecure", "", "Proxy", true},
	{"--backend", "", "Backend", false},
	{"--root", "", "Backend", true},
	{"--iface", "-i", "Backend", false},
	{"--profile", "", "Profile", false},
	{"--dump-profile", "", "Profile", true},
}

// cliRootOnlyFlags are childflow 0.8's root flags, shown by `childflow --help`.
var cliRootOnlyFlags = []struct {
	name    string
	boolean bool
}{
	{"--doctor", true}, {"--doctor-format", false}, {"--report", false}, {"--report-format", false},
}

// TestCLIHelp checks that both help texts list every flag of the design in
// its group, with its short alias, and that boolean flags show no value.
func TestCLIHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"trace", "--help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			res := cliCall{args: args}.do(t)
			if res.code != 0 {
				t.Fatalf("exit %d, want 0; stderr:\n%s", res.code, res.stderr)
			}
			help := cliParseHelp(res.stdout)
			for _, want := range cliDesignFlags {
				cliCheckHelpFlag(t, help, want.name, want.short, want.group, want.boolean)
			}
			if args[0] == "--help" {
				for _, want := range cliRootOnlyFlags {
					cliCheckHelpFlag(t, help, want.name, "", "", want.boolean)
				}
			}
			for _, line := range strings.Split(res.stdout, "\n") {
				if strings.Count(line, "(default:") > 1 {
					t.Errorf("help line states its default twice: %q", strings.TrimSpace(line))
				}
			}
		})
	}
}

func cliCheckHelpFlag(t *testing.T, help map[string]cliHelpFlag, name, short, group string, boolean bool) {
	t.Helper()
	f, ok := help[name]
	switch {
	case !ok:
		t.Errorf("help does not list %s", name)
		return
	case group != "" && f.group != group:
		t.Errorf("help lists %s under %q, want %q", name, f.group, group)
	case boolean && f.placeholder != "":
		t.Errorf("help shows boolean %s with a value %q: %s", name, f.placeholder, f.line)
	}
	if short != "" && !cliHas(f.names, short) {
		t.Errorf("help lists %s with names %v, want alias %s", name, f.names, short)
	}
}

func cliHas(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}

	return false
}

var cliVersionLine = regexp.MustCompile(`^childflow (\d+\.\d+\.\d+\S*)\n$`)

// TestCLIVersion checks `childflow version` and that it is the version a run
// records in its flow log.
func TestCLIVersion(t *testing.T) {
	res := cliCall{args: []string{"version"}}.do(t)
	m := cliVersionLine.FindStringSubmatch(res.stdout)
	if res.code != 0 || m == nil {
		t.Fatalf("childflow version: exit %d, stdout %q; want 0 and \"childflow X.Y.Z\"", res.code, res.stdout)
	}

	requireEBPF(t)
	res = run{command: []string{"true"}, flowLog: true}.do(t)
	starts := res.events("run_start", nil)
	if len(starts) != 1 || str(starts[0], "childflow_version") != m[1] {
		t.Errorf("run_start = %v, want childflow_version %q", starts, m[1])
	}
}

// TestCLIUsageErrors checks that every usage error exits 2 with one line
// naming the input and the fix, and never runs the command.
func TestCLIUsageErrors(t *testing.T) {
	requireEBPF(t)
	dir := t.TempDir()
	cliWriteFile(t, dir, "bad.toml", "summary = true\n# a comment\nbogus_key = 1\n")
	cliWriteFile(t, dir, "a.toml", "extends = \"b.toml\"\n")
	cliWriteFile(t, dir, "b.toml", "extends = \"a.toml\"\n")
	missing := filepath.Join(dir, "missing.toml")
	noDir := filepath.Join(dir, "no", "such", "dir", "flows.jsonl")
	const secret = "Sekr1t-w0rd-CLI"
	// c appends a command that leaves a mark if it runs.
	c := func(args ...string) []string { return append(args, "--", "touch", "ran") }

	for _, tc := range []struct {
		name     string
		args     []string
		want     []string
		code     int  // 2 when zero
		stdoutOK bool // the error may come with the help on stdout
	}{
		{"unknown flag", c("trace", "--bogus"), []string{"bogus", "--help"}, 0, false},
		{"unknown short flag", c("trace", "-Z"), []string{"Z", "--help"}, 0, false},
		{"unknown root flag", c("--bogus"), []string{"bogus", "--help"}, 0, false},
		{"summary format", c("trace", "--summary-format", "xml"),
			[]string{"--summary-format", "xml", "markdown"}, 0, false},
		{"summary format at root", c("--summary-format", "xml"),
			[]string{"--summary-format", "xml", "markdown"}, 0, false},
		{"capture point", c("trace", "-C", "sideways"),
			[]string{"--capture-point", "sideways", "child"}, 0, false},
		{"dns", c("trace", "--dns", "not-an-ip"), []string{"--dns", "not-an-ip", "1.1.1.1"}, 0, false},
		{"dns port", c("trace", "-d", "1.1.1.1:99999"), []string{"--dns", "1.1.1.1:99999"}, 0, false},
		{"proxy without port", c("trace", "--proxy", "http://127.0.0.1"),
			[]string{"http://127.0.0.1", "port"}, 0, false},
		{"proxy scheme", c("trace", "-p", "ftp://127.0.0.1:21"), []string{"ftp", "socks5"}, 0, false},
		{"proxy user without proxy", c("trace", "-U", "bob"),
			[]string{"--proxy-user", "--proxy URL"}, 0, false},
		{"proxy password without proxy", c("trace", "-P", secret),
			[]string{"--proxy-password", "--proxy URL"}, 0, false},
		{"proxy-only without proxy", c("trace", "--proxy-only"),
			[]string{"--proxy-only", "--proxy URL"}, 0, false},
		{"no command", []string{"trace"}, []string{"no command", "-- CMD"}, 0, false},
		{"empty command", []string{"trace", "--"}, []string{"no command", "-- CMD"}, 0, false},
		{"only flags", []string{"trace", "--summary"}, []string{"no command", "-- CMD"}, 0, false},
		{"no command at root", nil, []string{"no command", "-- CMD"}, 0, true},
		{"missing profile", c("trace", "--profile", missing),
			[]string{"--profile", missing}, 0, false},
		{"profile is a folder", c("trace", "--profile", dir), []string{"--profile", dir}, 0, false},
		{"unknown profile key", c("trace", "--profile", filepath.Join(dir, "bad.toml")),
			[]string{"bad.toml:3", "bogus_key"}, 0, false},
		{"extends cycle", c("trace", "--profile", filepath.Join(dir, "a.toml")),
			[]string{"a.toml", "cycle"}, 0, false},
		{"flow log folder missing", c("trace", "--flow-log", noDir), []string{"--flow-log", noDir}, 0, false},
		{"capture folder missing", c("trace", "-c", noDir), []string{"--capture", noDir}, 0, false},
		{"backend", c("trace", "--backend", "kernel"),
			[]string{"--backend", "kernel", "auto, ebpf or rootless"}, 0, false},
		{"root and rootless", c("--root", "--backend", "rootless"),
			[]string{"--root", "--backend rootless"}, 0, false},
		{"default policy", c("trace", "--default-policy", "maybe"),
			[]string{"--default-policy", "maybe", "allow or deny"}, 0, false},
		{"cidr", c("trace", "--allow-cidr", "10.0.0.0/33"),
			[]string{"--allow-cidr", "10.0.0.0/33"}, 0, false},
		{"doctor format", []string{"--doctor", "--doctor-format", "yaml"}, []string{"yaml", "json"}, 0, false},
		{"report format", []string{"report", "--format", "yaml", "x.jsonl"},
			[]string{"yaml", "markdown"}, 0, false},
		{"report without file", []string{"report"}, []string{"report", "FILE"}, 0, false},
		{"report of a missing file", []string{"report", missing}, []string{missing}, 0, false},
		{"command not found", []string{"trace", "--", "childflow-no-such-cmd"},
			[]string{"childflow-no-such-cmd", "not found"}, 127, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			want := tc.code
			if want == 0 {
				want = 2
			}
			res := cliCall{args: args, dir: dir}.do(t)
			if res.code != want {
				t.Errorf("exit %d, want %d; stderr:\n%s", res.code, want, res.stderr)
			}
			cliOneLine(t, res.stderr)
			for _, w := range tc.want {
				if !strings.Contains(res.stderr, w) {
					t.Errorf("stderr %q does not name %q", res.stderr, w)
				}
			}
			if strings.Contains(res.stderr+res.stdout, secret) {
				t.Errorf("output shows the proxy password:\n%s%s", res.stdout, res.stderr)
			}
			if res.stdout != "" && !tc.stdoutOK {
				t.Errorf("stdout = %q, want nothing", res.stdout)
			}
			if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
				t.Errorf("the command ran despite the usage error")
				os.Remove(filepath.Join(dir, "ran"))
			}
		})
	}
}

// cliDump runs --dump-profile and returns its output, parsed.
func cliDump(t *testing.T, dir string, env []string, args ...string) (map[string]any, string) {
	t.Helper()
	full := append([]string{"trace", "--dump-profile"}, args...)
	res := cliCall{args: full, dir: dir, env: env}.do(t)
	if res.code != 0 {
		t.Fatalf("childflow %q: exit %d, want 0; stderr:\n%s", full, res.code, res.stderr)
	}
	var m map[string]any
	if err := toml.Unmarshal([]byte(res.stdout), &m); err != nil {
		t.Fatalf("--dump-profile output is not TOML: %v\n%s", err, res.stdout)
	}

	return m, res.stdout
}

// cliSecrets are the proxy passwords the profile tests use; no output
// may contain them.
var cliSecrets = []string{"pr0file-Secret", "cl1-Secret", "url-Secret"}

func cliNoSecret(t *testing.T, out string) {
	t.Helper()
	for _, s := range cliSecrets {
		if strings.Contains(out, s) {
			t.Errorf("output shows the password %q:\n%s", s, out)
		}
	}
}

// cliProfileTree writes base.toml <- mid.toml <- child.toml and run.toml in
// dir/prof.
func cliProfileTree(t *testing.T, dir string) {
	t.Helper()
	cliWriteFile(t, dir, "prof/base.toml", `summary_format = "json"
block_metadata = true
allow_domains = ["example.com", "example.org"]
deny_cidrs = ["10.0.0.0/8"]
proxy = "http://127.0.0.1:3128"
proxy_user = "bob"
proxy_password = "pr0file-Secret"
`)
	cliWriteFile(t, dir, "prof/mid.toml", `extends = "base.toml"
summary_format = "markdown"
deny_domains = ["bad.example"]
flow_log = "logs/mid.jsonl"
`)
	cliWriteFile(t, dir, "prof/child.toml", `extends = "mid.toml"
deny_cidrs = []
command = ["sh", "-c", "echo from-child"]
`)
	cliWriteFile(t, dir, "prof/run.toml", `flow_log = "run.jsonl"
command = ["sh", "-c", "echo from-profile"]
`)
}

// TestCLIProfiles runs profiles end to end: a command from the profile, an
// extends chain, flags over profile values, and no password in the dump.
func TestCLIProfiles(t *testing.T) {
	requireEBPF(t)
	dir := t.TempDir()
	cliProfileTree(t, dir)

	t.Run("command from profile", func(t *testing.T) {
		for _, args := range [][]string{{"trace", "--profile", "prof/run.toml"}, {"--profile", "prof/run.toml"}} {
			res := cliCall{args: args, dir: dir}.do(t)
			if res.code != 0 || res.stdout != "from-profile\n" {
				t.Fatalf("childflow %q: exit %d, stdout %q; want 0 and the profile's command output\n%s",
					args, res.code, res.stdout, res.stderr)
			}
			log := readLog(t, filepath.Join(dir, "prof", "run.jsonl"))
			if len(log) == 0 || !reflect.DeepEqual(log[0]["command"], []any{"sh", "-c", "echo from-profile"}) {
				t.Errorf("flow log next to the profile starts with %v, want run_start of the profile's command", log)
			}
		}
		args := []string{"trace", "--profile", "prof/run.toml", "--", "echo", "from-cli"}
		res := cliCall{args: args, dir: dir}.do(t)
		if res.code != 0 || res.stdout != "from-cli\n" {
			t.Errorf("command on the command line: exit %d, stdout %q; want it to replace the profile's",
				res.code, res.stdout)
		}
	})

	t.Run("extends chain", func(t *testing.T) {
		m, out := cliDump(t, dir, nil, "--profile", "prof/child.toml")
		cliCheckDump(t, m, map[string]any{
			"summary_format": "markdown", "block_metadata": true,
			"allow_domains": []any{"example.com", "example.org"}, "deny_domains": []any{"bad.example"},
			"deny_cidrs": nil, "proxy_user": "bob", "proxy_password": "<redacted>",
			"command": []any{"sh", "-c", "echo from-child"},
		})
		if got := cliResolve(dir, m["flow_log"]); got != filepath.Join(dir, "prof", "logs", "mid.jsonl") {
			t.Errorf("flow_log = %v, want the path resolved against mid.toml's folder", m["flow_log"])
		}
		cliNoSecret(t, out)
	})

	t.Run("flags override", func(t *testing.T) {
		m, out := cliDump(t, dir, nil, "--profile", "prof/child.toml", "--summary-format", "text",
			"--allow-domain", "cli.example", "--allow-domain", "cli2.example", "--block-metadata=false",
			"--summary", "-P", "cl1-Secret", "--", "echo", "hi")
		cliCheckDump(t, m, map[string]any{
			"summary_format": "text", "allow_domains": []any{"cli.example", "cli2.example"},
			"deny_domains": []any{"bad.example"}, "block_metadata": nil, "summary": true,
			"proxy_password": "<redacted>", "command": []any{"echo", "hi"},
		})
		cliNoSecret(t, out)
	})

	t.Run("password from flags", func(t *testing.T) {
		m, out := cliDump(t, dir, nil, "-p", "http://127.0.0.1:3128", "-U", "u", "-P", "cl1-Secret", "--", "true")
		cliCheckDump(t, m, map[string]any{"proxy_password": "<redacted>", "proxy_user": "u"})
		cliNoSecret(t, out)

		m, out = cliDump(t, dir, nil, "-p", "http://u:url-Secret@127.0.0.1:3128", "--", "true")
		if p, _ := m["proxy"].(string); !strings.Contains(p, "redacted") {
			t.Errorf("proxy = %q, want its password shown as redacted", p)
		}
		cliNoSecret(t, out)
	})

	t.Run("password flag over profile", func(t *testing.T) {
		// A password flag replaces the profile's password and password file
		// alike, instead of clashing with them.
		cliWriteFile(t, dir, "prof/pw.txt", "pr0file-Secret\n")
		cliWriteFile(t, dir, "prof/pwfile.toml", "proxy = \"http://127.0.0.1:3128\"\nproxy_user = \"bob\"\n"+
			"proxy_password_file = \"pw.txt\"\n")
		for _, args := range [][]string{
			{"--profile", "prof/pwfile.toml", "-P", "cl1-Secret"},
			{"--profile", "prof/base.toml", "--proxy-password-file", "prof/pw.txt"},
		} {
			full := append(append([]string{"trace"}, args...), "--", "true")
			res := cliCall{args: full, dir: dir}.do(t)
			if res.code != 0 {
				t.Errorf("childflow %q: exit %d, want 0; stderr:\n%s", full, res.code, res.stderr)
			}
			cliNoSecret(t, res.stdout+res.stderr)
		}
	})

	t.Run("dump reloads", func(t *testing.T) {
		_, first := cliDump(t, dir, nil, "--profile", "prof/child.toml")
		cliWriteFile(t, dir, "elsewhere/dumped.toml", first)
		env := []string{"CHILDFLOW_PROXY_PASSWORD=cl1-Secret"}
		_, again := cliDump(t, dir, env, "--profile", "elsewhere/dumped.toml")
		// The password now comes from the environment, which no dump shows.
		want := strings.Replace(first, "proxy_password = '<redacted>'\n", "", 1)
		if again != want {
			t.Errorf("dump of the dumped profile differs:\n%s\nwant:\n%s", again, want)
		}

		// Without a real password, the placeholder must not reach the proxy.
		res := cliCall{args: []string{"trace", "--profile", "elsewhere/dumped.toml"}, dir: dir}.do(t)
		if res.code != 2 || !strings.Contains(res.stderr, "proxy_password") {
			t.Errorf("run of a dumped profile without a password: exit %d, stderr %q; "+
				"want 2 naming proxy_password", res.code, res.stderr)
		}
	})
}

// cliCheckDump compares the keys of want with a parsed dump; a nil want means
// the key must be absent.
func cliCheckDump(t *testing.T, got, want map[string]any) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		switch {
		case w == nil && ok:
			t.Errorf("dump has %s = %v, want it absent", k, g)
		case w != nil && !reflect.DeepEqual(g, w):
			t.Errorf("dump has %s = %#v, want %#v", k, g, w)
		}
	}
}

// cliResolve makes a dumped path absolute against dir.
func cliResolve(dir string, v any) string {
	s, _ := v.(string)
	if s == "" || filepath.IsAbs(s) {
		return s
	}

	return filepath.Join(dir, s)
}

// TestCLILegacyRootFlags checks childflow 0.8's root flags.
func TestCLILegacyRootFlags(t *testing.T) {
	requireEBPF(t)
	dir := t.TempDir()
	oldLog, err := filepath.Abs("testdata/cli/old-tool.jsonl")
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		old, new []string // the same request in 0.8's and in today's form
	}{
		{"doctor", []string{"--doctor"}, []string{"doctor"}},
		{"doctor json", []string{"--doctor", "--doctor-format", "json"}, []string{"doctor", "--format", "json"}},
		{"report json", []string{"--report", oldLog, "--report-format", "json"},
			[]string{"report", "--format", "json", oldLog}},
		{"report markdown", []string{"--report", oldLog, "--report-format", "markdown"},
			[]string{"report", "--format", "markdown", oldLog}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := cliCall{args: tc.old, dir: dir}.do(t)
			cur := cliCall{args: tc.new, dir: dir}.do(t)
			if old.code != 0 || old.stdout == "" {
				t.Fatalf("childflow %q: exit %d, stdout %q; stderr:\n%s", tc.old, old.code, old.stdout, old.stderr)
			}
			if old.stdout != cur.stdout || old.code != cur.code {
				t.Errorf("childflow %q gave exit %d and\n%s\nwant what %q gives: exit %d and\n%s",
					tc.old, old.code, old.stdout, tc.new, cur.code, cur.stdout)
			}
		})
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"root", []string{"--root"}, 0},
		{"capture point child", []string{"-C", "child"}, 0},
		{"exit code", []string{"-C", "child", "--root"}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(dir, "flows.jsonl")
			args := append(append([]string{}, tc.args...), "--flow-log", log,
				"--", "sh", "-c", fmt.Sprintf("exit %d", tc.code))
			res := cliCall{args: args, dir: dir}.do(t)
			if res.code != tc.code {
				t.Fatalf("childflow %q: exit %d, want %d; stderr:\n%s", args, res.code, tc.code, res.stderr)
			}
			l := readLog(t, log)
			if len(l) == 0 || str(l[0], "event") != "run_start" || str(l[0], "backend") != "ebpf" {
				t.Errorf("flow log starts with %v, want run_start on the ebpf backend", l)
			}
		})
	}
}

// cliReport is the part of the JSON report the tests check; decoding into
// it also checks the field names.
type cliReport struct {
	Run *struct {
		Backend  string   `json:"backend"`
		Command  []string `json:"command"`
		ExitCode int      `json:"exit_code"`
	} `json:"run"`
	Events      int         `json:"events"`
	EventCounts []cliRanked `json:"event_counts"`
	DNSNames    []cliRanked `json:"dns_names"`
	Correlation []struct {
		Name      string      `json:"name"`
		AnswerIPs []string    `json:"answer_ips"`
		Connects  []cliRanked `json:"connects"`
	} `json:"correlations"`
	Connects struct {
		Attempts int `json:"attempts"`
		OK       int `json:"ok"`
		Errors   int `json:"errors"`
	} `json:"connects"`
	ConnectErrors      []cliRanked `json:"connect_errors"`
	Violations         int         `json:"violations"`
	ViolationsByReason []cliRanked `json:"violations_by_reason"`
	RuntimeFailures    []struct {
		ReasonCode string `json:"reason_code"`
	} `json:"runtime_failures"`
	Targets []struct {
		Address     string `json:"address"`
		Connections int    `json:"connections"`
		BytesIn     int64  `json:"bytes_in"`
		BytesOut    int64  `json:"bytes_out"`
	} `json:"targets"`
	MalformedLines int `json:"malformed_lines"`
	Malformed      []struct {
		Line  int    `json:"line"`
		Error string `json:"error"`
	} `json:"malformed"`
}

type cliRanked struct {
	Key   string `json:"key"`
	Count int    `json:"count"`
}

// cliReportOf runs `childflow report` in format over files.
func cliReportOf(t *testing.T, format string, files ...string) string {
	t.Helper()
	args := append([]string{"report", "--format", format}, files...)
	res := cliCall{args: args}.do(t)
	if res.code != 0 || res.stdout == "" {
		t.Fatalf("childflow %q: exit %d, stdout %q; want 0 and a report; stderr:\n%s",
			args, res.code, res.stdout, res.stderr)
	}

	return res.stdout
}

func cliJSONReport(t *testing.T, files ...string) *cliReport {
	t.Helper()
	var r cliReport
	if err := json.Unmarshal([]byte(cliReportOf(t, "json", files...)), &r); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}

	return &r
}

// TestCLIReport reports over the log of a real run and over a log in
// childflow 0.8's style, and round-trips --suggest-policy.
func TestCLIReport(t *testing.T) {
	requireEBPF(t)
	testenv.RequireTool(t, "curl")
	srv := startHTTP(t, "tcp4")
	curl := []string{"curl", "-sS", "-o", "/dev/null", srv.url + "/bytes/5000"}
	res := run{command: curl, flowLog: true}.do(t)
	if res.code != 0 {
		t.Fatalf("traced curl: exit %d; stderr:\n%s", res.code, res.stderr)
	}
	logPath := filepath.Join(res.dir, "flows.jsonl")
	target := fmt.Sprintf("127.0.0.1:%d", srv.port)

	t.Run("real run", func(t *testing.T) {
		r := cliJSONReport(t, logPath)
		cliCheckRunReport(t, r, res, srv, curl, target)
		for _, format := range []string{"text", "markdown"} {
			out := cliReportOf(t, format, logPath)
			if !strings.Contains(out, target) || !strings.Contains(out, "curl") {
				t.Errorf("%s report does not name %s and curl:\n%s", format, target, out)
			}
		}
	})

	t.Run("old tool", func(t *testing.T) {
		old, err := filepath.Abs("testdata/cli/old-tool.jsonl")
		if err != nil {
			t.Fatal(err)
		}
		cliCheckOldReport(t, cliJSONReport(t, old))
		text := cliReportOf(t, "text", old)
		md := cliReportOf(t, "markdown", old)
		if !regexp.MustCompile(`line 7\b`).MatchString(text) || !strings.Contains(md, "| 7 |") {
			t.Errorf("text or markdown report lacks malformed line 7:\n%s\n%s", text, md)
		}
		for _, out := range []string{text, md} {
			if !strings.Contains(out, "pkg.example.net") || !strings.Contains(out, "connection timed out") {
				t.Errorf("report lacks the DNS name or the connect error:\n%s", out)
			}
		}
	})

	t.Run("suggest policy", func(t *testing.T) {
		cliCheckSuggest(t, logPath, curl, srv.port)
	})
}

func cliCheckRunReport(t *testing.T, r *cliReport, res *result, srv *httpServer, curl []string,
	target string) {
	t.Helper()
	if r.Events != len(res.log) {
		t.Errorf("report counts %d events, the log has %d lines", r.Events, len(res.log))
	}
	if n := len(res.events("connect_attempt", nil)); r.Connects.Attempts != n || r.Connects.OK != n {
		t.Errorf("report connects %+v, want %d attempts, all ok", r.Connects, n)
	}
	if r.Run == nil || r.Run.Backend != "ebpf" || !reflect.DeepEqual(r.Run.Command, curl) {
		t.Errorf("report run = %+v, want backend ebpf and command %q", r.Run, curl)
	}
	_, written := singleConn(t, srv)
	for _, tg := range r.Targets {
		if tg.Address == target {
			if tg.Connections != 1 || tg.BytesIn != written {
				t.Errorf("target %s: %d connections, %d bytes in; want 1 and the %d bytes the server wrote",
					target, tg.Connections, tg.BytesIn, written)
			}
			return
		}
	}
	t.Errorf("report targets %+v lack %s", r.Targets, target)
}

// cliCheckOldReport checks the report of testdata/cli/old-tool.jsonl: 12
// lines, line 7 cut short, one event of a newer tool.
func cliCheckOldReport(t *testing.T, r *cliReport) {
	t.Helper()
	if r.Events != 11 || r.MalformedLines != 1 || len(r.Malformed) != 1 || r.Malformed[0].Line != 7 {
		t.Errorf("report counts %d events and malformed %d %+v; want 11 events and line 7 malformed",
			r.Events, r.MalformedLines, r.Malformed)
	}
	wantCounts := []cliRanked{{"connect_attempt", 2}, {"connect_result", 2}, {"policy_violation", 2},
		{"dns_answer", 1}, {"dns_query", 1}, {"flow_end", 1}, {"runtime_failure", 1}, {"unknown_event", 1}}
	if !reflect.DeepEqual(r.EventCounts, wantCounts) {
		t.Errorf("event counts %v, want %v", r.EventCounts, wantCounts)
	}
	if c := r.Connects; c.Attempts != 2 || c.OK != 1 || c.Errors != 1 {
		t.Errorf("connects %+v, want 2 attempts, 1 ok, 1 error", c)
	}
	if want := []cliRanked{{"connection timed out", 1}}; !reflect.DeepEqual(r.ConnectErrors, want) {
		t.Errorf("connect errors %v, want %v", r.ConnectErrors, want)
	}
	if want := []cliRanked{{"deny_cidr", 1}, {"metadata", 1}}; r.Violations != 2 ||
		!reflect.DeepEqual(r.ViolationsByReason, want) {
		t.Errorf("violations %d %v, want 2 %v", r.Violations, r.ViolationsByReason, want)
	}
	if len(r.Correlation) != 1 || r.Correlation[0].Name != "pkg.example.net" ||
		!reflect.DeepEqual(r.Correlation[0].AnswerIPs, []string{"198.51.100.20"}) ||
		len(r.Correlation[0].Connects) != 1 {
		t.Errorf("correlations %+v, want pkg.example.net -> 198.51.100.20 -> one connect", r.Correlation)
	}
	if len(r.RuntimeFailures) != 1 || r.RuntimeFailures[0].ReasonCode != "relay_failed" {
		t.Errorf("runtime failures %+v, want relay_failed", r.RuntimeFailures)
	}
}

// cliCheckSuggest turns the log into a profile, then runs the same
// traffic under it (no leak) and other traffic (a leak).
func cliCheckSuggest(t *testing.T, logPath string, curl []string, port int) {
	t.Helper()
	dir := t.TempDir()
	res := cliCall{args: []string{"report", "--suggest-policy", logPath}}.do(t)
	if res.code != 0 {
		t.Fatalf("report --suggest-policy: exit %d; stderr:\n%s", res.code, res.stderr)
	}
	prof := cliWriteFile(t, dir, "suggested.toml", res.stdout)

	same := append([]string{"trace", "--profile", prof, "--fail-on-leak", "--"}, curl...)
	if r := (cliCall{args: same, dir: dir}).do(t); r.code != 0 {
		t.Errorf("same traffic under the suggested profile:\n%s\nexit %d, want 0; stderr:\n%s",
			res.stdout, r.code, r.stderr)
	}

	other := fmt.Sprintf("curl -sS -o /dev/null --max-time 5 http://127.0.0.2:%d/; exit 0", port)
	leak := []string{"trace", "--profile", prof, "--fail-on-leak", "--", "sh", "-c", other}
	r := cliCall{args: leak, dir: dir}.do(t)
	if r.code != 1 || !strings.Contains(r.stderr, "--fail-on-leak") {
		t.Errorf("other traffic under the suggested profile: exit %d, want 1 from --fail-on-leak; stderr:\n%s",
			r.code, r.stderr)
	}
}

// cliSummary is the part of the JSON summary the tests check.
type cliSummary struct {
	Backend  string   `json:"backend"`
	Command  []string `json:"command"`
	ExitCode int      `json:"exit_code"`
	Capture  *struct {
		Paths   []string `json:"paths"`
		Packets uint64   `json:"packets"`
	} `json:"capture"`
	FlowLog *struct {
		Path   string `json:"path"`
		Events int    `json:"events"`
	} `json:"flow_log"`
	Report *cliReport `json:"report"`
}

// TestCLISummary checks --summary in each format after a real run, and the
// markdown appended to --summary-file and $GITHUB_STEP_SUMMARY.
func TestCLISummary(t *testing.T) {
	requireEBPF(t)
	testenv.RequireTool(t, "curl")
	srv := startHTTP(t, "tcp4")
	command := []string{"sh", "-c", fmt.Sprintf("curl -sS -o /dev/null %s/; exit 3", srv.url)}
	dir := t.TempDir()
	logPath, capPath := filepath.Join(dir, "flows.jsonl"), filepath.Join(dir, "cap.pcapng")
	traced := func(extra []string, env ...string) *result {
		t.Helper()
		args := append([]string{"trace", "--flow-log", logPath, "--capture", capPath}, extra...)
		res := cliCall{args: append(append(args, "--"), command...), dir: dir, env: env}.do(t)
		if res.code != 3 {
			t.Fatalf("childflow %q: exit %d, want the command's 3; stderr:\n%s", args, res.code, res.stderr)
		}
		return res
	}

	t.Run("json", func(t *testing.T) {
		res := traced([]string{"--summary", "--summary-format", "json"})
		cliCheckJSONSummary(t, res.stderr, command, logPath, capPath)
	})
	t.Run("markdown", func(t *testing.T) {
		res := traced([]string{"--summary", "--summary-format", "markdown"})
		cliCheckMarkdownSummary(t, res.stderr, logPath, capPath)
	})
	t.Run("text", func(t *testing.T) {
		out := traced([]string{"--summary"}).stderr
		for _, re := range []string{`backend:\s+ebpf`, `command:\s+sh -c .*curl -sS`, `exit code:\s+3`,
			`flow log:\s+` + regexp.QuoteMeta(logPath), `capture:\s+` + regexp.QuoteMeta(capPath)} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("text summary does not match %s:\n%s", re, out)
			}
		}
	})
	t.Run("summary file", func(t *testing.T) {
		file := filepath.Join(dir, "summary.md")
		for i := 0; i < 2; i++ {
			res := traced([]string{"--summary-file", file, "--summary-format", "json"})
			if strings.Contains(res.stderr, "ebpf") {
				t.Errorf("summary printed to stderr without --summary:\n%s", res.stderr)
			}
		}
		b, _ := os.ReadFile(file)
		if n := strings.Count(string(b), "| backend | ebpf |"); n != 2 {
			t.Errorf("summary file holds %d markdown summaries after two runs, want 2:\n%s", n, b)
		}
		cliCheckMarkdownSummary(t, string(b), logPath, capPath)
	})
	t.Run("GITHUB_STEP_SUMMARY", func(t *testing.T) {
		file := cliWriteFile(t, dir, "step.md", "earlier step\n")
		res := traced([]string{"--summary", "--summary-format", "json"}, "GITHUB_STEP_SUMMARY="+file)
		cliCheckJSONSummary(t, res.stderr, command, logPath, capPath)
		b, _ := os.ReadFile(file)
		if !strings.HasPrefix(string(b), "earlier step\n") {
			t.Errorf("job summary lost what was there:\n%s", b)
		}
		cliCheckMarkdownSummary(t, string(b), logPath, capPath)
	})
}

func cliCheckJSONSummary(t *testing.T, stderr string, command []string, logPath, capPath string) {
	t.Helper()
	start := strings.Index(stderr, "{\n")
	if start < 0 {
		t.Fatalf("no JSON summary on stderr:\n%s", stderr)
	}
	var s cliSummary
	if err := json.NewDecoder(strings.NewReader(stderr[start:])).Decode(&s); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, stderr)
	}
	lines := len(readLog(t, logPath))
	switch {
	case s.Backend != "ebpf" || !reflect.DeepEqual(s.Command, command) || s.ExitCode != 3:
		t.Errorf("summary names backend %q, command %q, exit %d; want ebpf, %q, 3",
			s.Backend, s.Command, s.ExitCode, command)
	case s.FlowLog == nil || s.FlowLog.Path != logPath || s.FlowLog.Events != lines:
		t.Errorf("summary flow log %+v, want %s with %d events", s.FlowLog, logPath, lines)
	case s.Capture == nil || !reflect.DeepEqual(s.Capture.Paths, []string{capPath}) || s.Capture.Packets == 0:
		t.Errorf("summary capture %+v, want %s with packets", s.Capture, capPath)
	case s.Report == nil || s.Report.Connects.Attempts != 1:
		t.Errorf("summary report %+v, want one connect attempt", s.Report)
	}
}

func cliCheckMarkdownSummary(t *testing.T, out, logPath, capPath string) {
	t.Helper()
	wants := []string{"| backend | ebpf |", "| exit code | 3 |", "sh -c", "curl -sS", logPath, capPath}
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("markdown summary lacks %q:\n%s", want, out)
		}
	}
}

// cliDoctor is the part of doctor's JSON the tests check.
type cliDoctor struct {
	Verdict  string `json:"verdict"`
	Auto     string `json:"auto"`
	Backends []struct {
		Name         string `json:"name"`
		Verdict      string `json:"verdict"`
		Capabilities []struct {
			Key, Status, Detail string
		} `json:"capabilities"`
		Preflight []struct {
			Key, Status, Hint string
		} `json:"preflight"`
	} `json:"backends"`
}

func cliDoctorJSON(t *testing.T, c cliCall) (*cliDoctor, *result) {
	t.Helper()
	c.args = []string{"doctor", "--format", "json", "--no-clean"}
	res := c.do(t)
	var d cliDoctor
	if err := json.Unmarshal([]byte(res.stdout), &d); err != nil {
		t.Fatalf("doctor output is not JSON: %v\n%s\n%s", err, res.stdout, res.stderr)
	}
	wantCode := 0
	if d.Verdict == "blocked" {
		wantCode = 1
	}
	if res.code != wantCode {
		t.Errorf("doctor verdict %q with exit %d, want exit %d", d.Verdict, res.code, wantCode)
	}

	return &d, res
}

// TestCLIDoctor checks doctor as root (stable JSON, ready, a run that works)
// and as uid 65534 (eBPF blocked for lack of privileges, and a run on the
// eBPF backend failing for that reason).
func TestCLIDoctor(t *testing.T) {
	requireEBPF(t)

	t.Run("root", func(t *testing.T) {
		d, first := cliDoctorJSON(t, cliCall{})
		_, second := cliDoctorJSON(t, cliCall{})
		if first.stdout != second.stdout {
			t.Errorf("doctor JSON differs between two runs:\n%s\n%s", first.stdout, second.stdout)
		}
		if d.Verdict != "ready" || d.Auto != "ebpf" {
			t.Fatalf("doctor verdict %q, auto %q; want ready and ebpf", d.Verdict, d.Auto)
		}
		res := run{command: []string{"true"}, flowLog: true}.do(t)
		starts := res.events("run_start", nil)
		if res.code != 0 || len(starts) != 1 || str(starts[0], "backend") != d.Auto {
			t.Errorf("run: exit %d, run_start %v; want 0 on the backend doctor picked (%s)", res.code, starts, d.Auto)
		}
	})

	t.Run("nobody", func(t *testing.T) {
		bin := cliNobodyBinary(t)
		d, _ := cliDoctorJSON(t, cliCall{bin: bin, nobody: true, dir: "/"})
		reason := cliCheckNobodyDoctor(t, d)

		args := []string{"trace", "--backend", "ebpf", "--", "true"}
		res := cliCall{args: args, bin: bin, nobody: true, dir: "/"}.do(t)
		if res.code != 1 {
			t.Errorf("eBPF run as nobody: exit %d, want 1; stderr:\n%s", res.code, res.stderr)
		}
		cliOneLine(t, res.stderr)
		low := strings.ToLower(res.stderr)
		if !strings.Contains(low, "privilege") && !strings.Contains(res.stderr, reason) {
			t.Errorf("eBPF run as nobody says %q; want the reason doctor gives: privileges (%s)",
				res.stderr, reason)
		}
	})
}

// cliCheckNobodyDoctor checks that doctor blocks the eBPF backend for lack of
// privileges, and returns its detail.
func cliCheckNobodyDoctor(t *testing.T, d *cliDoctor) string {
	t.Helper()
	for _, b := range d.Backends {
		if b.Name != "ebpf" {
			continue
		}
		if b.Verdict != "blocked" {
			t.Errorf("ebpf verdict for nobody %q, want blocked", b.Verdict)
		}
		for _, c := range b.Capabilities {
			if c.Key == "privileges" {
				if c.Status != "unavailable" {
					t.Errorf("privileges capability %q for nobody, want unavailable", c.Status)
				}
				return c.Detail
			}
		}
	}
	t.Fatalf("doctor has no ebpf privileges check: %+v", d)

	return ""
}

// cliQuote quotes args for sh.
func cliQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}

	return strings.Join(q, " ")
}

// cliPTYOutput collects what a command wrote to its terminal.
type cliPTYOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (p *cliPTYOutput) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

func (p *cliPTYOutput) copyFrom(r io.Reader) {
	br := bufio.NewReader(r)
	chunk := make([]byte, 4096)
	for {
		n, err := br.Read(chunk)
		p.mu.Lock()
		p.buf.Write(chunk[:n])
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// cliInTerminal starts childflow with a terminal as stdout and stderr (through
// script(1)), and returns it with its output.
func cliInTerminal(t *testing.T, dir string, args ...string) (*exec.Cmd, *cliPTYOutput) {
	t.Helper()
	script := testenv.RequireTool(t, "script")
	line := cliQuote(append([]string{binary(t)}, args...))
	cmd := exec.Command(script, "-qfec", line, "/dev/null")
	cmd.Dir = dir
	cmd.Env = cliEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start script: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	out := &cliPTYOutput{}
	go out.copyFrom(stdout)

	return cmd, out
}

var cliANSI = regexp.MustCompile("\x1b\\[[0-9;]*m")

// cliLiveLine returns the live-view line that names comm and target, if any.
func cliLiveLine(out, comm, target string) string {
	for _, l := range strings.Split(cliANSI.ReplaceAllString(out, ""), "\n") {
		if strings.Contains(l, comm+"[") && strings.Contains(l, target) {
			return l
		}
	}

	return ""
}

// TestCLILiveView checks that a terminal shows one line per connection
// while the command runs, and that --quiet or a non-terminal shows none.
func TestCLILiveView(t *testing.T) {
	requireEBPF(t)
	testenv.RequireTool(t, "curl")
	srv := startHTTP(t, "tcp4")
	target := fmt.Sprintf("127.0.0.1:%d", srv.port)
	curl := []string{"curl", "-sS", "-o", "/dev/null", srv.url + "/"}

	t.Run("terminal", func(t *testing.T) {
		dir := t.TempDir()
		// The command holds until the test creates "go" (at most 10 s) and
		// exits 9 if it never came: exit 0 proves it was still running
		// when the test saw the live line.
		hold := cliQuote(curl) + `; i=0; while [ ! -e go ] && [ $i -lt 400 ]; ` +
			`do sleep 0.025; i=$((i+1)); done; [ -e go ] || exit 9`
		cmd, out := cliInTerminal(t, dir, "trace", "--", "sh", "-c", hold)

		deadline := time.Now().Add(10 * time.Second)
		for cliLiveLine(out.String(), "curl", target) == "" && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		seen := cliLiveLine(out.String(), "curl", target)
		cliWriteFile(t, dir, "go", "")
		err := cmd.Wait()
		if seen == "" {
			t.Fatalf("no live line naming curl and %s within 10 s; terminal:\n%q", target, out.String())
		}
		if err != nil {
			t.Errorf("childflow in a terminal: %v (exit 9: the live line came after the command ended); terminal:\n%q",
				err, out.String())
		}
		if n := strings.Count(cliANSI.ReplaceAllString(out.String(), ""), target); n != 1 {
			t.Errorf("terminal names %s %d times, want once (one line per connection):\n%q", target, n, out.String())
		}
	})

	t.Run("quiet terminal", func(t *testing.T) {
		cmd, out := cliInTerminal(t, t.TempDir(), append([]string{"trace", "--quiet", "--"}, curl...)...)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("childflow --quiet in a terminal: %v; terminal:\n%q", err, out.String())
		}
		if got := out.String(); strings.Contains(got, target) || strings.Contains(got, "childflow") {
			t.Errorf("--quiet terminal shows:\n%q\nwant nothing", got)
		}
	})

	t.Run("not a terminal", func(t *testing.T) {
		res := run{command: curl}.do(t)
		if res.code != 0 || res.stderr != "" {
			t.Errorf("exit %d, stderr %q; want 0 and nothing on a non-terminal stderr", res.code, res.stderr)
		}
	})
}
