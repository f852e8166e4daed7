// Package profile reads childflow's TOML profiles: files that hold flag
// values under the flags' names with underscores (capture_point for
// --capture-point, allow_cidrs for --allow-cidr), so that a CI job can keep
// its tracing policy in the repository.
//
// Loading is strict: an unknown key, a value of the wrong type or an invalid
// domain or CIDR is an error naming the file and line. A profile may extend
// one parent (extends = "base.toml", recursively, cycles rejected); the
// child's values override the parent's and a list set in the child replaces
// the parent's list. Relative paths in a profile (capture, flow_log,
// hosts_file, proxy_password_file, summary_file, extends) are resolved against
// the folder of the file that holds them; "-" is left as it is.
//
// A field that is nil was not set. A list set to [] is a non-nil empty slice:
// it replaces a parent's list with nothing.
//
// Domain and CIDR checks here are the simple ones of the design (label rules,
// netip parsing); the policy package holds the canonical parser and may
// reject more.
package profile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// maxExtends bounds the length of an extends chain.
const maxExtends = 32

// Profile is one profile file, or several merged. Field names follow the
// flags; see the package doc for what nil means.
type Profile struct {
	Capture           *string  `toml:"capture"`
	CapturePoint      *string  `toml:"capture_point"`
	Snaplen           *int     `toml:"snaplen"`
	Backend           *string  `toml:"backend"`
	FlowLog           *string  `toml:"flow_log"`
	DNS               *string  `toml:"dns"`
	HostsFile         *string  `toml:"hosts_file"`
	Proxy             *string  `toml:"proxy"`
	ProxyUser         *string  `toml:"proxy_user"`
	ProxyPassword     *string  `toml:"proxy_password"`
	ProxyPasswordFile *string  `toml:"proxy_password_file"`
	ProxyInsecure     *bool    `toml:"proxy_insecure"`
	ProxyOnly         *bool    `toml:"proxy_only"`
	ProxyLoopback     *bool    `toml:"proxy_loopback"`
	ProxyRelay        *bool    `toml:"proxy_relay"`
	Summary           *bool    `toml:"summary"`
	SummaryFormat     *string  `toml:"summary_format"`
	SummaryFile       *string  `toml:"summary_file"`
	Offline           *bool    `toml:"offline"`
	BlockPrivate      *bool    `toml:"block_private"`
	BlockMetadata     *bool    `toml:"block_metadata"`
	DefaultPolicy     *string  `toml:"default_policy"`
	Audit             *bool    `toml:"audit"`
	AllowCIDRs        []string `toml:"allow_cidrs"`
	DenyCIDRs         []string `toml:"deny_cidrs"`
	AllowDomains      []string `toml:"allow_domains"`
	AllowDomainsExact []string `toml:"allow_domains_exact"`
	DenyDomains       []string `toml:"deny_domains"`
	DenyDomainsExact  []string `toml:"deny_domains_exact"`
	FailOnLeak        *bool    `toml:"fail_on_leak"`
	KeepRoot          *bool    `toml:"keep_root"`
	Quiet             *bool    `toml:"quiet"`
	Command           []string `toml:"command"`
	// Extends is the parent profile of a file as parsed; it is nil in the
	// result of Load, which has merged the parents in.
	Extends *string `toml:"extends"`

	// Sources lists the files a loaded profile came from, the child first.
	Sources []string `toml:"-"`
}

// pathKeys are the keys whose relative values are resolved against the
// profile's folder.
var pathKeys = map[string]bool{
	"capture": true, "flow_log": true, "hosts_file": true, "proxy_password_file": true,
	"summary_file": true, "extends": true,
}

// Error is a problem in a profile file, at a line when known (Line > 0).
type Error struct {
	Path string
	Line int
	Err  error
}

// Error implements error: "profile PATH:LINE: message".
func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("profile %s:%d: %v", e.Path, e.Line, e.Err)
	}

	return fmt.Sprintf("profile %s: %v", e.Path, e.Err)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Load reads the profile at path and the chain of profiles it extends, and
// returns them merged. Errors are *Error values.
func Load(path string) (*Profile, error) {
	return load(path, nil)
}

func load(path string, chain []string) (*Profile, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	if err := checkChain(path, abs, chain); err != nil {
		return nil, err
	}

	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Path: path, Err: fmt.Errorf("read file: %w", err)}
	}

	p, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	p.Sources = []string{path}
	if p.Extends == nil {
		return p, nil
	}

	parent, err := load(*p.Extends, append(chain, abs))
	if err != nil {
		return nil, err
	}
	merged := Merge(parent, p)
	merged.Extends = nil
	merged.Sources = append([]string{path}, parent.Sources...)

	return merged, nil
}

// checkChain rejects a profile that is already in the extends chain, or a
// chain that is too long.
func checkChain(path, abs string, chain []string) error {
	for i, c := range chain {
		if c != abs {
			continue
		}
		loop := append(append([]string{}, chain[i:]...), abs)
		return &Error{Path: path, Err: fmt.Errorf("extends cycle: %s", strings.Join(loop, " -> "))}
	}
	if len(chain) >= maxExtends {
		return &Error{Path: path, Err: fmt.Errorf("extends chain longer than %d", maxExtends)}
	}

	return nil
}

// Parse decodes one profile file's bytes, read from path (used in errors and
// to resolve relative paths). It does not follow extends.
func Parse(data []byte, path string) (*Profile, error) {
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return nil, decodeError(path, err)
	}

	if err := p.validate(); err != nil {
		var ke *keyError
		if errors.As(err, &ke) {
			return nil, &Error{Path: path, Line: keyLine(data, ke.key), Err: err}
		}
		return nil, &Error{Path: path, Err: err}
	}
	p.resolvePaths(filepath.Dir(path))

	return &p, nil
}

// decodeError turns go-toml's errors into an *Error with the line, naming
// the closest known key for an unknown one.
func decodeError(path string, err error) error {
	var se *toml.StrictMissingError
	if errors.As(err, &se) && len(se.Errors) > 0 {
		first := se.Errors[0]
		line, _ := first.Position()
		key := strings.Join(first.Key(), ".")
		msg := fmt.Sprintf("unknown key %q", key)
		if s := suggest(key); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		if n := len(se.Errors) - 1; n > 0 {
			msg += fmt.Sprintf(" and %d more unknown keys", n)
		}
		return &Error{Path: path, Line: line, Err: errors.New(msg)}
	}

	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		return &Error{Path: path, Line: line, Err: errors.New(decodeMessage(de))}
	}

	return &Error{Path: path, Err: err}
}

var typeErr = regexp.MustCompile(`^cannot decode TOML (\w+) into struct field \S+ of type (\S+)$`)

// decodeMessage returns go-toml's message without its prefix, and type
// mismatches in flag terms.
func decodeMessage(de *toml.DecodeError) string {
	msg := strings.TrimPrefix(de.Error(), "toml: ")
	key := strings.Join(de.Key(), ".")
	m := typeErr.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want := strings.TrimPrefix(strings.TrimPrefix(m[2], "*"), "[]")
	if strings.HasPrefix(m[2], "[]") {
		want = "list of " + want + "s"
	}

	return fmt.Sprintf("%s: got a TOML %s, want a %s", key, m[1], want)
}

// keyLine returns the line of a top-level "key =" in data, or 0.
func keyLine(data []byte, key string) int {
	re := regexp.MustCompile(`^\s*("` + regexp.QuoteMeta(key) + `"|'` + regexp.QuoteMeta(key) +
		`'|` + regexp.QuoteMeta(key) + `)\s*=`)
	for i, line := range strings.Split(string(data), "\n") {
		if re.MatchString(line) {
			return i + 1
		}
	}

	return 0
}

// resolvePaths makes relative path values absolute against dir.
func (p *Profile) resolvePaths(dir string) {
	v := reflect.ValueOf(p).Elem()
	for i, f := range fields() {
		if !pathKeys[f.key] {
			continue
		}
		s, ok := v.Field(i).Interface().(*string)
		if ok && s != nil && *s != "" && *s != "-" && !filepath.IsAbs(*s) {
			*s = filepath.Join(dir, *s)
		}
	}
}

// Merge returns base with every field set in over replacing it: scalars and
// whole lists alike. Neither argument is changed; the result shares no
// pointers or slices with them. The CLI calls it with the profile as base
// and a Profile holding the flags the user set as over.
func Merge(base, over *Profile) *Profile {
	out := base.clone()
	ov := reflect.ValueOf(over.clone()).Elem()
	rv := reflect.ValueOf(out).Elem()
	for i := range fields() {
		if !ov.Field(i).IsNil() {
			rv.Field(i).Set(ov.Field(i))
		}
	}

	return out
}

// clone returns a deep copy of p (nil gives an empty profile).
func (p *Profile) clone() *Profile {
	out := &Profile{}
	if p == nil {
		return out
	}
	src := reflect.ValueOf(p).Elem()
	dst := reflect.ValueOf(out).Elem()
	for i := range fields() {
		f := src.Field(i)
		if f.IsNil() {
			continue
		}
		if f.Kind() == reflect.Slice {
			dst.Field(i).Set(reflect.AppendSlice(reflect.MakeSlice(f.Type(), 0, f.Len()), f))
			continue
		}
		n := reflect.New(f.Type().Elem())
		n.Elem().Set(f.Elem())
		dst.Field(i).Set(n)
	}
	out.Sources = append([]string(nil), p.Sources...)

	return out
}
