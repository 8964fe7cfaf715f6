package kubernetes

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestNATSConfiguration reads each overlay's NATS configuration with
// nats-server's own parser, laid out as the StatefulSet mounts it (the
// nats-config ConfigMap next to the nats-server Secret of a real `ansflow
// secure init`): the pod's name is the server's, JetStream, TLS and the
// JWT accounts of the Secret's configuration are on, and the production
// overlay clusters its three servers over TLS routes.
func TestNATSConfiguration(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			objs := build(t, overlay)
			sts := find(t, objs, "StatefulSet", ansflowNS, "nats")
			containers, _, _ := unstructured.NestedSlice(sts.Object, "spec", "template", "spec", "containers")
			mounts := map[string]string{}
			for _, m := range containers[0].(map[string]any)["volumeMounts"].([]any) {
				vm := m.(map[string]any)
				mounts[vm["name"].(string)] = vm["mountPath"].(string)
			}
			if mounts["config"] != "/etc/nats/config" || mounts["secure"] != "/etc/nats/secure" {
				t.Fatalf("NATS mounts %v: this test lays the files out at /etc/nats/config and /etc/nats/secure", mounts)
			}

			root := t.TempDir()
			write := func(rel, content string) {
				p := filepath.Join(root, rel)
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				// The pod's absolute paths, under root.
				if err := os.WriteFile(p, []byte(strings.ReplaceAll(content, "/etc/nats/", root+"/")), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for _, cm := range ofKind(objs, "ConfigMap") {
				if strings.HasPrefix(cm.GetName(), "nats-config-") {
					conf, _, _ := unstructured.NestedString(cm.Object, "data", "nats.conf")
					write("config/nats.conf", conf)
				}
			}
			for _, s := range ofKind(objs, "Secret") {
				if !strings.HasPrefix(s.GetName(), "nats-server-") {
					continue
				}
				data, _, _ := unstructured.NestedStringMap(s.Object, "data")
				for name, b64 := range data {
					b, err := base64.StdEncoding.DecodeString(b64)
					if err != nil {
						t.Fatal(err)
					}
					write("secure/"+name, string(b))
				}
			}
			t.Setenv("POD_NAME", "nats-1")
			opts, err := server.ProcessConfigFile(filepath.Join(root, "config", "nats.conf"))
			if err != nil {
				t.Fatal(err)
			}
			if opts.ServerName != "nats-1" || !opts.JetStream || opts.StoreDir != "/data" || opts.Port != 4222 || opts.HTTPPort != 8222 {
				t.Errorf("server %q, JetStream %v in %q, client port %d, monitoring port %d", opts.ServerName, opts.JetStream, opts.StoreDir, opts.Port, opts.HTTPPort)
			}
			if opts.TLSConfig == nil || len(opts.TrustedOperators) != 1 || opts.SystemAccount == "" {
				t.Errorf("TLS %v, %d operators, system account %q: want the secure configuration's", opts.TLSConfig != nil, len(opts.TrustedOperators), opts.SystemAccount)
			}
			clustered := want[overlay].natsReplicas > 1
			if clustered {
				if opts.Cluster.Name != "ansflow" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 || opts.Cluster.TLSConfig == nil {
					t.Errorf("cluster %q on %d, %d routes, TLS %v: want ansflow on 6222, 3 routes over TLS", opts.Cluster.Name, opts.Cluster.Port, len(opts.Routes), opts.Cluster.TLSConfig != nil)
				}
				for i, r := range opts.Routes {
					if r.Hostname() != "nats-"+string(rune('0'+i))+".nats-headless" {
						t.Errorf("route %d: %s", i, r)
					}
				}
			} else if opts.Cluster.Port != 0 || len(opts.Routes) != 0 {
				t.Errorf("a single server with a cluster port %d and %d routes", opts.Cluster.Port, len(opts.Routes))
			}
		})
	}
}
