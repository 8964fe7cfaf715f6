package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

// cmdTokens is "ansflow tokens create|list|revoke".
func cmdTokens(ctx context.Context, args []string) error {
	const use = "usage: ansflow tokens create --role R [--pipelines P,...] [--expires 30d] [--name N] | list | revoke ID"
	if len(args) == 0 {
		return invalid(use)
	}
	var req apiv1.CreateTokenRequest
	var pipelines string
	c, output, fs, err := clientFlags("tokens "+args[0], args[1:], func(fs *flag.FlagSet) {
		if args[0] != "create" {
			return
		}
		fs.StringVar(&req.Role, "role", "", "viewer, operator or admin (required)")
		fs.StringVar(&pipelines, "pipelines", "", "limit the token to these pipelines (comma-separated names or globs)")
		fs.StringVar(&req.ExpiresIn, "expires", "", "lifetime, such as 30d or 12h (default: no expiry)")
		fs.StringVar(&req.Name, "name", "", "what the token is for")
	})
	if err != nil {
		return err
	}
	switch args[0] {
	case "create":
		if req.Role == "" {
			return invalid("ansflow tokens create needs --role viewer|operator|admin")
		}
		if _, err := auth.ParseRole(req.Role); err != nil {
			return invalid("--role: %v", err)
		}
		if req.ExpiresIn != "" {
			if _, err := apiv1.ParseLifetime(req.ExpiresIn); err != nil {
				return invalid("--expires: %v", err)
			}
		}
		req.Pipelines = splitList(pipelines)
		body, _ := json.Marshal(req)
		var ct apiv1.CreatedToken
		if err := c.do(ctx, http.MethodPost, "/api/v1/tokens", "application/json", bytes.NewReader(body), &ct); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, ct)
		}
		fmt.Println(ct.Secret) // alone, for $(ansflow tokens create ...)
		return nil
	case "list":
		var ts []apiv1.TokenInfo
		if err := c.do(ctx, http.MethodGet, "/api/v1/tokens", "", nil, &ts); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, ts)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tROLE\tPIPELINES\tSTATE\tEXPIRES\tCREATED BY")
		for _, t := range ts {
			ps, exp := "*", "never"
			if len(t.Pipelines) > 0 {
				ps = strings.Join(t.Pipelines, ",")
			}
			if t.ExpiresAt != nil {
				exp = t.ExpiresAt.Local().Format("2006-01-02 15:04")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, ps, t.State, exp, t.CreatedBy)
		}
		return tw.Flush()
	case "revoke":
		id := fs.Arg(0)
		if id == "" {
			return invalid("usage: ansflow tokens revoke ID")
		}
		var t apiv1.TokenInfo
		if err := c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), "", nil, &t); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, t)
		}
		fmt.Printf("token %s (%s) revoked\n", t.ID, t.Name)
		return nil
	}
	return invalid("unknown tokens command %q; %s", args[0], use)
}
