package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	env := map[string]string{"ANSFLOW_NATS_URL": "nats://n1:4222", "ANSFLOW_HTTP": "0.0.0.0:8080", "ANSFLOW_OPS_ADDR": "0.0.0.0:9090", "ANSFLOW_NATS_REPLICAS": "3"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c, err := parseConfig([]string{"--lease-check", "5s", "--external-url", "https://ci.example.com"}, lookup, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://n1:4222" || c.OpsAddr != "0.0.0.0:9090" || c.Service.HTTPAddr != "0.0.0.0:8080" || c.Service.Replicas != 3 ||
		c.Service.Orchestrator.LeaseCheck != 5*time.Second || c.Service.ExternalURL != "https://ci.example.com" || !c.LogJSON {
		t.Errorf("config %+v", c)
	}
	if c, err = parseConfig(nil, func(string) (string, bool) { return "", false }, io.Discard); err != nil || c.OpsAddr != DefaultOpsAddr {
		t.Errorf("defaults: %v %+v", err, c)
	}
	for _, bad := range [][]string{{"--tls-cert", "c.pem"}, {"--ops-addr", "nowhere"}, {"--nats", ""}, {"stray"}, {"--admin-token-file", "/nonexistent"}} {
		if _, err := parseConfig(bad, func(string) (string, bool) { return "", false }, io.Discard); err == nil {
			t.Errorf("parseConfig(%q) = nil error", bad)
		}
	}
	if _, err := parseConfig(nil, func(k string) (string, bool) { return "often", k == "ANSFLOW_ALLOW_LOCAL_CLONE" }, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "ANSFLOW_ALLOW_LOCAL_CLONE") {
		t.Errorf("a bad variable: %v, want an error naming it", err)
	}
}
