package profile

import (
	"fmt"
	"net/url"
	"reflect"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// Redacted replaces secrets in Dump's output.
const Redacted = "<redacted>"

// Dump returns p as TOML, one key per line in Keys order, unset keys left
// out. The proxy password is never printed: proxy_password, when set, is
// written as "<redacted>", and a password inside the proxy URL is replaced
// the same way, percent-encoded ("%3Credacted%3E") so the URL stays valid.
// The sources of a loaded profile are listed in a comment.
func Dump(p *Profile) string {
	var b strings.Builder
	if p == nil {
		return ""
	}
	if len(p.Sources) > 0 {
		fmt.Fprintf(&b, "# merged from: %s\n", strings.Join(p.Sources, " <- "))
	}

	v := reflect.ValueOf(p.clone()).Elem()
	for i, f := range fields() {
		fv := v.Field(i)
		if fv.IsNil() {
			continue
		}
		val := fv.Interface()
		switch f.key {
		case "proxy_password":
			val = Redacted
		case "proxy":
			val = redactURL(*p.Proxy)
		}
		b.WriteString(encodeKey(f.key, val))
	}

	return b.String()
}

// encodeKey returns "key = value\n" with value encoded by go-toml, so that
// strings are escaped as TOML wants.
func encodeKey(key string, val any) string {
	data, err := toml.Marshal(map[string]any{key: val})
	if err != nil {
		// Only strings, bools, ints and string lists reach here.
		return fmt.Sprintf("# %s: cannot encode: %v\n", key, err)
	}

	return string(data)
}

// redactURL replaces the password of a URL's user info.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		if strings.Contains(s, "@") {
			return Redacted
		}
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Redacted)
		return u.String()
	}

	return s
}
