package notify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// DefaultAllowedHosts is the policy of webhook and Slack targets when the
// operator sets none: public addresses only, as Gitea's webhook
// ALLOWED_HOST_LIST and GitLab's "requests to the local network" default.
const DefaultAllowedHosts = "external"

// HostPolicy says which hosts webhook and Slack notifications may reach.
// The URLs come from pipeline authors (and the holders of secrets), so by
// default a notification cannot be aimed at the pipeline service's own
// network: its loopback, private ranges, link-local addresses (cloud
// metadata endpoints) or anything else that is not a public unicast
// address. The policy is checked against every address a connection is
// actually made to, after name resolution, so a name that resolves to a
// private address is refused as the address itself would be.
type HostPolicy struct {
	all, external, private, loopback bool
	nets                             []netip.Prefix
	names                            []string // exact host names, or "*.suffix"
}

// ParseHostPolicy reads a comma-separated list of entries:
//
//   - external: public unicast addresses (not loopback, private,
//     link-local, multicast or unspecified);
//   - private: RFC 1918 and RFC 4193 (fc00::/7) addresses;
//   - loopback: 127.0.0.0/8 and ::1;
//   - *: every host;
//   - a CIDR prefix (10.1.0.0/16) or an address;
//   - a host name (hooks.example.com) or a wildcard (*.example.com), which
//     allows the name whatever it resolves to.
//
// An empty list is [DefaultAllowedHosts].
func ParseHostPolicy(list string) (*HostPolicy, error) {
	if strings.TrimSpace(list) == "" {
		list = DefaultAllowedHosts
	}
	p := &HostPolicy{}
	for _, raw := range strings.Split(list, ",") {
		e := strings.ToLower(strings.TrimSpace(raw))
		switch {
		case e == "":
			continue
		case e == "*":
			p.all = true
		case e == "external":
			p.external = true
		case e == "private":
			p.private = true
		case e == "loopback":
			p.loopback = true
		case strings.Contains(e, "/"):
			pfx, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("%q: not a CIDR prefix: %v", raw, err)
			}
			p.nets = append(p.nets, pfx.Masked())
		default:
			if ip, err := netip.ParseAddr(e); err == nil {
				p.nets = append(p.nets, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
				continue
			}
			name := strings.TrimPrefix(e, "*.")
			if name == "" || strings.ContainsAny(name, "*:/ ") {
				return nil, fmt.Errorf("%q: want external, private, loopback, *, a CIDR prefix, an address, a host name or *.domain", raw)
			}
			p.names = append(p.names, e)
		}
	}
	return p, nil
}

// AllowsName reports whether host is allowed by name, whatever it
// resolves to.
func (p *HostPolicy) AllowsName(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, n := range p.names {
		if suffix, ok := strings.CutPrefix(n, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if host == n {
			return true
		}
	}
	return p.all
}

// AllowsAddr reports whether a connection to ip is allowed.
func (p *HostPolicy) AllowsAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	switch {
	case p.all:
		return true
	case p.loopback && ip.IsLoopback():
		return true
	case p.private && ip.IsPrivate():
		return true
	case p.external && ip.IsGlobalUnicast() && !ip.IsPrivate():
		return true
	}
	for _, n := range p.nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// HostDeniedError is the failure of a connection the policy refused.
type HostDeniedError struct {
	Host  string
	Addrs []string
}

func (e *HostDeniedError) Error() string {
	return fmt.Sprintf("host %s (%s) is not allowed by --notify-allowed-hosts (default %q: public addresses only)",
		e.Host, strings.Join(e.Addrs, ", "), DefaultAllowedHosts)
}

// resolver is what the policy's dialer asks for a name's addresses.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// dialer returns a DialContext that connects only to the addresses p
// allows, trying each allowed address of a name in turn.
func (p *HostPolicy) dialer(d *net.Dialer, r resolver) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		byName := p.AllowsName(host)
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", portStr, err)
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = r.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
		var denied []string
		var last error
		for _, ip := range ips {
			if !byName && !p.AllowsAddr(ip) {
				denied = append(denied, ip.Unmap().String())
				continue
			}
			conn, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.Unmap(), uint16(port)).String())
			if err == nil {
				return conn, nil
			}
			last = err
		}
		if last != nil {
			return nil, last
		}
		return nil, &HostDeniedError{Host: host, Addrs: denied}
	}
}

// Client returns the HTTP client of webhook deliveries: it connects only
// where p allows, through no proxy (a proxy would make every connection
// one to the proxy's address), follows no redirect and gives up after
// timeout.
func (p *HostPolicy) Client(timeout time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = p.dialer(&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}, net.DefaultResolver)
	return &http.Client{Timeout: timeout, Transport: t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// isHostDenied reports whether err is a refusal of the host policy.
func isHostDenied(err error) bool {
	var d *HostDeniedError
	return errors.As(err, &d)
}
