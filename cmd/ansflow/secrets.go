package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/secret"
)

// cmdSecrets is "ansflow secrets set|list|delete".
func cmdSecrets(ctx context.Context, args []string) error {
	const use = "usage: ansflow secrets set NAME [--pipeline P] [--events E,...] [--branches G,...] [--images G,...] [--allow-forks] < value" +
		" | list [--pipeline P] | delete NAME [--pipeline P] | identity FILE"
	if len(args) == 0 {
		return invalid(use)
	}
	if args[0] == "identity" {
		return secretsIdentity(args[1:])
	}
	var pipeline, events, branches, images string
	var f secret.Filters
	c, output, fs, err := clientFlags("secrets "+args[0], args[1:], func(fs *flag.FlagSet) {
		fs.StringVar(&pipeline, "pipeline", "", "the pipeline whose secret it is (default: a global secret)")
		if args[0] != "set" {
			return
		}
		fs.StringVar(&events, "events", "", "give the secret only to runs of these events: "+strings.Join(secret.Events, ", "))
		fs.StringVar(&branches, "branches", "", "give the secret only to runs of these branches (globs)")
		fs.StringVar(&images, "images", "", "give the secret only to steps of these images (globs)")
		fs.BoolVar(&f.AllowForks, "allow-forks", false, "give the secret to runs of forks' pull requests too")
	})
	if err != nil {
		return err
	}
	base := "/api/v1/secrets"
	if pipeline != "" {
		base = "/api/v1/pipelines/" + url.PathEscape(pipeline) + "/secrets"
	}
	switch args[0] {
	case "set":
		name := fs.Arg(0)
		if err := secret.CheckName(name); err != nil {
			return invalid("ansflow secrets set NAME: %v", err)
		}
		f.Events, f.Branches, f.Images = splitList(events), splitList(branches), splitList(images)
		if err := f.Validate(); err != nil {
			return invalid("%v", err)
		}
		value, err := readSecretValue(os.Stdin)
		if err != nil {
			return err
		}
		body, err := json.Marshal(apiv1.SetSecretRequest{Value: string(value), Filters: f})
		clear(value)
		if err != nil {
			return err
		}
		var m apiv1.SecretInfo
		err = c.do(ctx, http.MethodPut, base+"/"+url.PathEscape(name), "application/json", bytes.NewReader(body), &m)
		clear(body)
		if err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, m)
		}
		fmt.Printf("secret %s (%s) set\n", m.Name, m.Scope)
		return nil
	case "list":
		var list []apiv1.SecretInfo
		if err := c.do(ctx, http.MethodGet, base, "", nil, &list); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, list)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSCOPE\tEVENTS\tBRANCHES\tIMAGES\tFORKS\tUPDATED\tBY")
		for _, m := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s\n", m.Name, m.Scope, orAll(m.Filters.Events), orAll(m.Filters.Branches),
				orAll(m.Filters.Images), m.Filters.AllowForks, m.UpdatedAt.Local().Format("2006-01-02 15:04"), m.UpdatedBy)
		}
		return tw.Flush()
	case "delete":
		name := fs.Arg(0)
		if name == "" {
			return invalid("usage: ansflow secrets delete NAME [--pipeline P]")
		}
		if err := c.do(ctx, http.MethodDelete, base+"/"+url.PathEscape(name), "", nil, nil); err != nil {
			return err
		}
		fmt.Printf("secret %s deleted\n", name)
		return nil
	}
	return invalid("unknown secrets command %q; %s", args[0], use)
}

// readSecretValue reads a secret's value from r (standard input), without
// one trailing newline, so `echo VALUE | ansflow secrets set NAME` stores
// VALUE.
func readSecretValue(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, secret.MaxValueBytes+2))
	if err != nil {
		return nil, fmt.Errorf("read the secret's value from standard input: %w", err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if err := secret.CheckValue(b); err != nil {
		return nil, invalid("the value on standard input: %v", err)
	}
	return b, nil
}

func orAll(l []string) string {
	if len(l) == 0 {
		return "*"
	}
	return strings.Join(l, ",")
}

// secretsIdentity is "ansflow secrets identity FILE": it prints the public
// key of the runner secrets identity in FILE, making FILE (mode 0600) when
// there is none, for `pipeline --pool-secrets-key`.
func secretsIdentity(args []string) error {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return invalid("usage: ansflow secrets identity FILE")
	}
	id, created, err := secret.LoadOrCreateIdentity(args[0])
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(os.Stderr, "ansflow secrets: created the secrets identity %s\n", args[0])
	}
	fmt.Println(id.PublicKey())
	return nil
}
