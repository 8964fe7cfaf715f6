package notify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestHostPolicy(t *testing.T) {
	for _, c := range []struct {
		list  string
		allow []string // addresses or names (n:...)
		deny  []string
	}{
		{"", []string{"1.1.1.1", "2606:4700::1111", "100.64.0.1"},
			[]string{"127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "fd00::1", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "n:localhost", "n:example.com"}},
		{"loopback", []string{"127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"}, []string{"1.1.1.1", "10.0.0.1"}},
		{"private", []string{"10.1.2.3", "172.31.255.255", "192.168.0.1", "fd12::1"}, []string{"1.1.1.1", "127.0.0.1", "169.254.169.254"}},
		{"external, 10.20.0.0/16, 192.168.7.7", []string{"8.8.8.8", "10.20.3.4", "192.168.7.7"}, []string{"10.21.0.1", "192.168.7.8", "127.0.0.1"}},
		{"hooks.internal,*.corp.example", []string{"n:hooks.internal", "n:HOOKS.internal.", "n:ci.corp.example", "n:a.b.corp.example"},
			[]string{"n:corp.example", "n:xhooks.internal", "n:ci.corp.example.evil", "1.1.1.1"}},
		{"*", []string{"127.0.0.1", "169.254.169.254", "n:anything"}, nil},
	} {
		p, err := ParseHostPolicy(c.list)
		if err != nil {
			t.Fatalf("%q: %v", c.list, err)
		}
		allows := func(x string) bool {
			if name, ok := strings.CutPrefix(x, "n:"); ok {
				return p.AllowsName(name)
			}
			return p.AllowsAddr(netip.MustParseAddr(x))
		}
		for _, x := range c.allow {
			if !allows(x) {
				t.Errorf("%q denies %s", c.list, x)
			}
		}
		for _, x := range c.deny {
			if allows(x) {
				t.Errorf("%q allows %s", c.list, x)
			}
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "a b", "hooks.*.example", "*.", "http://x", "[::1]:80"} {
		if _, err := ParseHostPolicy(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// names is the resolver's neighbour in the dialer test: a fixed table.
type names map[string][]netip.Addr

func (n names) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := n[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestDialerChecksTheAddressesConnectedTo: the policy holds for the
// address a connection is made to after resolution, on a real listener.
func TestDialerChecksTheAddressesConnectedTo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	r := names{
		"rebound.example": {netip.MustParseAddr("127.0.0.1")},
		"mixed.example":   {netip.MustParseAddr("10.255.255.1"), netip.MustParseAddr("127.0.0.1")},
		"named.internal":  {netip.MustParseAddr("127.0.0.1")},
	}
	d := &net.Dialer{Timeout: 2 * time.Second}
	dial := func(list, host string) error {
		p, err := ParseHostPolicy(list)
		if err != nil {
			t.Fatal(err)
		}
		c, err := p.dialer(d, r)(context.Background(), "tcp", net.JoinHostPort(host, fmt.Sprint(port)))
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	var denied *HostDeniedError
	for _, c := range []struct{ list, host string }{
		{"external", "127.0.0.1"},
		{"external", "rebound.example"}, // a public-looking name that resolves to loopback
		{"external", "::ffff:127.0.0.1"},
		{"private", "mixed.example"}, // 10/8 is allowed but unreachable here; 127.0.0.1 is not allowed
	} {
		err := dial(c.list, c.host)
		if c.host == "mixed.example" {
			if err == nil || errors.As(err, &denied) {
				t.Errorf("%s with %q: %v, want the private address's own dial error", c.host, c.list, err)
			}
			continue
		}
		if !errors.As(err, &denied) || !strings.Contains(err.Error(), "127.0.0.1") || !strings.Contains(err.Error(), "--notify-allowed-hosts") {
			t.Errorf("%s with %q: %v, want a HostDeniedError naming the address", c.host, c.list, err)
		}
	}
	for _, c := range []struct{ list, host string }{
		{"loopback", "127.0.0.1"},
		{"loopback", "rebound.example"},
		{"loopback", "mixed.example"}, // the denied address is skipped, the allowed one used
		{"named.internal", "named.internal"},
		{"127.0.0.0/8", "rebound.example"},
	} {
		if err := dial(c.list, c.host); err != nil {
			t.Errorf("%s with %q: %v", c.host, c.list, err)
		}
	}
}
