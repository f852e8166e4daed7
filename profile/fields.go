package profile

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// field is one settable key of a Profile: its TOML key and struct index.
// fields() lists them in struct order, which is also the index order.
type field struct {
	key string
	typ reflect.Type
}

var fieldsOnce = sync.OnceValue(func() []field {
	t := reflect.TypeOf(Profile{})
	var out []field
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("toml")
		if tag == "" || tag == "-" {
			break // Sources and anything after it are not keys
		}
		out = append(out, field{key: tag, typ: t.Field(i).Type})
	}

	return out
})

func fields() []field { return fieldsOnce() }

// Keys returns every key a profile may hold, in the order Dump writes them.
func Keys() []string {
	out := make([]string, 0, len(fields()))
	for _, f := range fields() {
		out = append(out, f.key)
	}

	return out
}

// index returns the struct index of key, or -1.
func index(key string) int {
	for i, f := range fields() {
		if f.key == key {
			return i
		}
	}

	return -1
}

// IsSet reports whether key was set in p.
func (p *Profile) IsSet(key string) bool {
	i := index(key)
	if i < 0 || p == nil {
		return false
	}

	return !reflect.ValueOf(p).Elem().Field(i).IsNil()
}

// SetKeys returns the keys set in p, in Keys order.
func (p *Profile) SetKeys() []string {
	var out []string
	for _, k := range Keys() {
		if p.IsSet(k) {
			out = append(out, k)
		}
	}

	return out
}

// Set sets key to value, which must be a string, bool, int or []string as the
// key's type requires. The CLI uses it to turn the flags the user set into a
// Profile to Merge over the loaded one. Set does not validate the value.
func (p *Profile) Set(key string, value any) error {
	i := index(key)
	if i < 0 {
		return fmt.Errorf("set profile key %q: unknown key", key)
	}

	f := reflect.ValueOf(p).Elem().Field(i)
	v := reflect.ValueOf(value)
	switch {
	case f.Kind() == reflect.Slice && v.Type() == f.Type():
		f.Set(reflect.AppendSlice(reflect.MakeSlice(f.Type(), 0, v.Len()), v))
	case f.Kind() == reflect.Pointer && v.Type() == f.Type().Elem():
		n := reflect.New(v.Type())
		n.Elem().Set(v)
		f.Set(n)
	default:
		return fmt.Errorf("set profile key %q: got a %T, want %s", key, value,
			strings.TrimPrefix(f.Type().String(), "*"))
	}

	return nil
}

// KeyForFlag returns the profile key of a command-line flag name (without
// dashes), such as "allow_cidrs" for "allow-cidr", and whether there is one.
func KeyForFlag(flag string) (string, bool) {
	k := strings.ReplaceAll(flag, "-", "_")
	switch k {
	case "allow_cidr", "deny_cidr", "allow_domain", "deny_domain":
		k += "s"
	case "allow_domain_exact", "deny_domain_exact":
		k = strings.TrimSuffix(k, "_exact") + "s_exact"
	}

	return k, index(k) >= 0 && k != "extends"
}

// suggest returns the known key closest to an unknown one, or "" when none
// is close (more than a third of its letters differ).
func suggest(key string) string {
	best, bestD := "", len(key)/3+1
	for _, k := range Keys() {
		if d := distance(key, k); d < bestD {
			best, bestD = k, d
		}
	}

	return best
}

// distance is the Levenshtein edit distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}

	return prev[len(b)]
}
