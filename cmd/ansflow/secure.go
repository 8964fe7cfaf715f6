package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ansflow/ansflow/pkg/natsauth"
	"github.com/ansflow/ansflow/pkg/topology"
)

// cmdSecure runs `ansflow secure init DIR` and `ansflow secure reissue DIR
// IDENTITY`.
func cmdSecure(_ context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "init" && args[0] != "reissue") {
		return invalid("usage: ansflow secure init DIR [--docker-pools P,...] [--k8s-clusters C,...] [--hosts H,...] [--force | --if-missing]\n" +
			"       ansflow secure reissue DIR IDENTITY [--docker-pools P,...] [--k8s-clusters C,...]")
	}
	fs := flag.NewFlagSet("secure "+args[0], flag.ContinueOnError)
	docker := fs.String("docker-pools", "default", "docker runner pools to issue identities for, comma-separated")
	k8s := fs.String("k8s-clusters", "", "Kubernetes clusters to issue runner identities for, comma-separated")
	hosts := fs.String("hosts", "", "extra DNS names or IP addresses of the NATS server certificate, comma-separated")
	listen := fs.String("listen", "0.0.0.0:4222", "client listen address written to nats.conf")
	force := fs.Bool("force", false, "replace an existing initialization: new keys, new CA, every earlier credential stops working")
	ifMissing := fs.Bool("if-missing", false, "do nothing, successfully, when DIR is already initialized (a one-shot init container)")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	pools := topology.Pools{Docker: splitList(*docker), K8s: splitList(*k8s)}
	switch args[0] {
	case "init":
		if len(pos) != 1 {
			return invalid("secure init: want one directory, got %d arguments", len(pos))
		}
		err := natsauth.Init(natsauth.InitConfig{Dir: pos[0], Pools: pools, Hosts: splitList(*hosts), Listen: *listen, Force: *force})
		if errors.Is(err, natsauth.ErrExists) {
			if *ifMissing {
				fmt.Fprintf(os.Stderr, "ansflow secure init: %s already initialized, keys kept\n", pos[0])
				return nil
			}
			return invalid("%v", err)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "ansflow secure init: wrote %s, %s and credentials under %s\n",
			filepath.Join(pos[0], natsauth.ConfFile), filepath.Join(pos[0], natsauth.CAFile), filepath.Join(pos[0], "creds"))
		return nil
	default:
		if len(pos) != 2 {
			return invalid("secure reissue: want a directory and an identity")
		}
		if err := natsauth.Reissue(pos[0], pos[1], pools); err != nil {
			return invalid("%v", err)
		}
		fmt.Fprintf(os.Stderr, "ansflow secure reissue: wrote %s\n", filepath.Join(pos[0], natsauth.CredsFile(pos[1])))
		return nil
	}
}

// parseInterspersed parses flags placed before, between or after the
// positional arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, &usageError{err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
