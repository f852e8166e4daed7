package profile

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// maxSnaplen is the largest snaplen accepted, the pcapng convention.
const maxSnaplen = 262144

// keyError is a value error of one key, so that Parse can find its line.
type keyError struct {
	key string
	err error
}

func (e *keyError) Error() string { return e.key + ": " + e.err.Error() }

func (e *keyError) Unwrap() error { return e.err }

// choices lists the accepted values of the enumerated keys.
var choices = map[string][]string{
	"capture_point":  {"child", "egress", "wire-egress", "both"},
	"backend":        {"auto", "ebpf", "rootless", "rootful", "rootless-internal"},
	"summary_format": {"text", "json", "markdown"},
	"default_policy": {"allow", "deny"},
}

// validate checks the values of one file's keys.
func (p *Profile) validate() error {
	enums := map[string]*string{"capture_point": p.CapturePoint, "backend": p.Backend,
		"summary_format": p.SummaryFormat, "default_policy": p.DefaultPolicy}
	for _, k := range []string{"capture_point", "backend", "summary_format", "default_policy"} {
		if err := checkChoice(k, enums[k]); err != nil {
			return err
		}
	}
	if p.Snaplen != nil && (*p.Snaplen < 1 || *p.Snaplen > maxSnaplen) {
		return &keyError{"snaplen", fmt.Errorf("%d is not in 1..%d", *p.Snaplen, maxSnaplen)}
	}
	if err := p.validateLists(); err != nil {
		return err
	}

	return p.validateStrings()
}

func (p *Profile) validateLists() error {
	lists := []struct {
		key   string
		vals  []string
		check func(string) error
	}{
		{"allow_cidrs", p.AllowCIDRs, CheckCIDR}, {"deny_cidrs", p.DenyCIDRs, CheckCIDR},
		{"allow_domains", p.AllowDomains, CheckDomain},
		{"allow_domains_exact", p.AllowDomainsExact, CheckDomain},
		{"deny_domains", p.DenyDomains, CheckDomain},
		{"deny_domains_exact", p.DenyDomainsExact, CheckDomain},
	}
	for _, l := range lists {
		for _, v := range l.vals {
			if err := l.check(v); err != nil {
				return &keyError{l.key, err}
			}
		}
	}

	return nil
}

func (p *Profile) validateStrings() error {
	nonEmpty := map[string]*string{"capture": p.Capture, "flow_log": p.FlowLog,
		"dns": p.DNS, "hosts_file": p.HostsFile, "proxy_password_file": p.ProxyPasswordFile,
		"summary_file": p.SummaryFile, "extends": p.Extends, "proxy_user": p.ProxyUser}
	for _, k := range Keys() {
		if s, ok := nonEmpty[k]; ok && s != nil && *s == "" {
			return &keyError{k, errors.New("empty value")}
		}
	}
	if p.Proxy != nil {
		if err := CheckProxy(*p.Proxy); err != nil {
			return &keyError{"proxy", err}
		}
	}
	if p.ProxyPassword != nil && p.ProxyPasswordFile != nil {
		return &keyError{"proxy_password", errors.New("set with proxy_password_file; keep one")}
	}

	return nil
}

func checkChoice(key string, v *string) error {
	if v == nil {
		return nil
	}
	for _, c := range choices[key] {
		if *v == c {
			return nil
		}
	}

	return &keyError{key, fmt.Errorf("%q is not one of %s", *v, strings.Join(choices[key], ", "))}
}

// CheckCIDR accepts a CIDR prefix ("10.0.0.0/8", "2001:db8::/32") or a bare
// address.
func CheckCIDR(s string) error {
	if _, err := netip.ParsePrefix(s); err == nil {
		return nil
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}

	return fmt.Errorf("%q is not a CIDR or an IP address", s)
}

// CheckDomain accepts a domain rule as the design states it: compared in
// lower case without a trailing dot, 1-253 characters, labels of a-z, 0-9
// and hyphens, 1-63 characters, no hyphen first or last.
func CheckDomain(s string) error {
	d := strings.TrimSuffix(strings.ToLower(s), ".")
	if d == "" || len(d) > 253 {
		return fmt.Errorf("domain %q: want 1-253 characters", s)
	}
	for _, label := range strings.Split(d, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("domain %q: %w", s, err)
		}
	}

	return nil
}

func checkLabel(l string) error {
	if l == "" || len(l) > 63 {
		return errors.New("labels must have 1-63 characters")
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with a hyphen", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("label %q has a character other than a-z, 0-9 and -", l)
		}
	}

	return nil
}

// CheckProxy accepts scheme://host:port with scheme http, https or socks5,
// a port, and an IPv6 host in brackets. Errors never repeat credentials
// embedded in the URL.
func CheckProxy(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL (want scheme://host:port)")
	}
	switch u.Scheme {
	case "http", "https", "socks5":
	default:
		return fmt.Errorf("scheme %q: want http, https or socks5", u.Scheme)
	}

	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return errors.New("want scheme://host:port with a port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	if u.Path != "" && u.Path != "/" {
		return errors.New("want no path after host:port")
	}

	return nil
}
