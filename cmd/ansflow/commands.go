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
	"github.com/ansflow/ansflow/pkg/spec"
)

func cmdValidate(_ context.Context, args []string) error {
	if len(args) != 1 {
		return invalid("usage: ansflow validate FILE")
	}
	text, err := os.ReadFile(args[0])
	if err != nil {
		return invalid("%v", err)
	}
	p, err := spec.Parse(args[0], text)
	if err != nil {
		return &usageError{err}
	}
	fmt.Printf("%s: pipeline %q is valid (%d steps)\n", args[0], p.Name, len(p.Steps))
	return nil
}

// clientFlags parses --server, --token, --data-dir and --output for a
// client subcommand.
func clientFlags(name string, args []string, extra func(*flag.FlagSet)) (*client, string, *flag.FlagSet, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	server := fs.String("server", serverDefault(), "AnsFlow server URL")
	output := fs.String("output", "text", "text or json")
	tf := addTokenFlags(fs, true)
	if extra != nil {
		extra(fs)
	}
	pos, rest := splitFirstArg(args)
	if err := fs.Parse(rest); err != nil {
		return nil, "", nil, &usageError{err}
	}
	if pos != "" {
		fs = withPositional(fs, pos)
	}
	local := isLocalDefault(*server)
	if *server == "" {
		*server = localServer
	}
	token, err := tf.resolve(local)
	if err != nil {
		return nil, "", nil, err
	}
	hc, err := tf.httpClient(token)
	if err != nil {
		return nil, "", nil, err
	}
	c := newClient(*server, token)
	c.http = hc
	return c, *output, fs, nil
}

// withPositional re-parses so that fs.Arg(0) is the positional argument.
func withPositional(fs *flag.FlagSet, pos string) *flag.FlagSet {
	args := append([]string{pos}, fs.Args()...)
	nfs := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	_ = nfs.Parse(append([]string{"--"}, args...))
	return nfs
}

func cmdPipelines(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return invalid("usage: ansflow pipelines apply|list|get|export|delete|versions ...")
	}
	c, output, fs, err := clientFlags("pipelines "+args[0], args[1:], nil)
	if err != nil {
		return err
	}
	name := fs.Arg(0)
	need := func() error {
		if name == "" {
			return invalid("ansflow pipelines %s needs a pipeline name or file", args[0])
		}
		return nil
	}
	switch args[0] {
	case "apply":
		if err := need(); err != nil {
			return err
		}
		text, err := os.ReadFile(name)
		if err != nil {
			return invalid("%v", err)
		}
		rec, err := c.applyPipeline(ctx, name, text)
		if err != nil {
			return err
		}
		fmt.Printf("pipeline %q version %d\n", rec.Name, rec.Version)
	case "list":
		var ps []*apiv1.Pipeline
		if err := c.do(ctx, http.MethodGet, "/api/v1/pipelines", "", nil, &ps); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, ps)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVERSION\tSTEPS\tUPDATED")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", p.Name, p.Version, len(p.Spec.Steps), p.UpdatedAt.Format("2006-01-02 15:04:05"))
		}
		return tw.Flush()
	case "get", "versions":
		if err := need(); err != nil {
			return err
		}
		path := "/api/v1/pipelines/" + url.PathEscape(name)
		if args[0] == "versions" {
			path += "/versions"
		}
		var v any
		if err := c.do(ctx, http.MethodGet, path, "", nil, &v); err != nil {
			return err
		}
		return printJSON(os.Stdout, v)
	case "export":
		if err := need(); err != nil {
			return err
		}
		var b []byte
		if err := c.do(ctx, http.MethodGet, "/api/v1/pipelines/"+url.PathEscape(name)+"/export", "", nil, &b); err != nil {
			return err
		}
		_, err := os.Stdout.Write(b)
		return err
	case "delete":
		if err := need(); err != nil {
			return err
		}
		return c.do(ctx, http.MethodDelete, "/api/v1/pipelines/"+url.PathEscape(name), "", nil, nil)
	default:
		return invalid("unknown pipelines command %q", args[0])
	}
	return nil
}

func cmdRuns(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return invalid("usage: ansflow runs list|get|cancel|approve|rerun|logs ...")
	}
	var pipeline, status string
	var rerunAll bool
	c, output, fs, err := clientFlags("runs "+args[0], args[1:], func(fs *flag.FlagSet) {
		fs.StringVar(&pipeline, "pipeline", "", "only runs of this pipeline")
		fs.StringVar(&status, "status", "", "only runs with this status")
		fs.BoolVar(&rerunAll, "all", false, "rerun: run every step again (default: keep the steps that succeeded, run the rest from the failed ones on)")
	})
	if err != nil {
		return err
	}
	id := fs.Arg(0)
	if args[0] != "list" && id == "" {
		return invalid("ansflow runs %s needs a run id", args[0])
	}
	switch args[0] {
	case "list":
		q := url.Values{}
		if pipeline != "" {
			q.Set("pipeline", pipeline)
		}
		if status != "" {
			q.Set("status", status)
		}
		var runs []*apiv1.Run
		if err := c.do(ctx, http.MethodGet, "/api/v1/runs?"+q.Encode(), "", nil, &runs); err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, runs)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPIPELINE\tBUILD\tSTATUS\tCREATED")
		for _, r := range runs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.ID, r.Pipeline, r.BuildNumber, r.Status, r.CreatedAt.Format("2006-01-02 15:04:05"))
		}
		return tw.Flush()
	case "get":
		run, err := c.getRun(ctx, id)
		if err != nil {
			return err
		}
		if output == "json" {
			return printJSON(os.Stdout, run)
		}
		printSummary(os.Stdout, run)
	case "cancel":
		var run apiv1.Run
		if err := c.do(ctx, http.MethodPost, "/api/v1/runs/"+url.PathEscape(id)+"/cancel", "", nil, &run); err != nil {
			return err
		}
		fmt.Printf("run %s: cancel requested\n", id)
	case "approve":
		var run apiv1.Run
		if err := c.do(ctx, http.MethodPost, "/api/v1/runs/"+url.PathEscape(id)+"/approve", "", nil, &run); err != nil {
			return err
		}
		fmt.Printf("run %s: approved by %s\n", id, run.Approval.ApprovedBy)
	case "rerun":
		var run apiv1.Run
		b, _ := json.Marshal(apiv1.RerunBody{All: rerunAll})
		if err := c.do(ctx, http.MethodPost, "/api/v1/runs/"+url.PathEscape(id)+"/rerun", "application/json", bytes.NewReader(b), &run); err != nil {
			return err
		}
		return finish(ctx, c, run.ID, os.Stdout, output)
	case "logs":
		p := &printer{w: os.Stdout, color: isTerminal(os.Stdout)}
		return c.follow(ctx, id, p.line)
	default:
		return invalid("unknown runs command %q", args[0])
	}
	return nil
}

func cmdRunners(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "list" {
		return invalid("usage: ansflow runners list [--output json]")
	}
	c, output, _, err := clientFlags("runners list", args[1:], nil)
	if err != nil {
		return err
	}
	var runners []apiv1.RunnerStatus
	if err := c.do(ctx, http.MethodGet, "/api/v1/runners", "", nil, &runners); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(os.Stdout, runners)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tPOOLS\tSLOTS\tSTATE\tVERSION\tLAST SEEN")
	for _, r := range runners {
		state := "online"
		switch {
		case r.Stopped:
			state = "stopped"
		case !r.Online:
			state = "offline"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", r.ID, r.Kind, strings.Join(r.Pools, ","), r.Busy, r.Slots, state,
			r.Version, r.LastSeen.Local().Format("2006-01-02 15:04:05"))
	}
	return tw.Flush()
}

func cmdTrigger(ctx context.Context, args []string) error {
	vars := varsFlag{}
	var repo, branch, tag, commit string
	var wait bool
	c, output, fs, err := clientFlags("trigger", args, func(fs *flag.FlagSet) {
		fs.Var(vars, "var", "set a declared variable (name=value, repeatable)")
		fs.StringVar(&repo, "repo", "", "Git repository the run clones (default: the pipeline's repository)")
		fs.StringVar(&branch, "branch", "", "git branch; the run is pinned to the commit it points at")
		fs.StringVar(&tag, "tag", "", "git tag; the run is pinned to its commit")
		fs.StringVar(&commit, "commit", "", "git commit (full SHA)")
		fs.BoolVar(&wait, "wait", true, "follow the run to its end")
	})
	if err != nil {
		return err
	}
	if fs.Arg(0) == "" {
		return invalid("usage: ansflow trigger PIPELINE [--repo URL] [--branch B | --tag T] [--commit C] [--var k=v]")
	}
	run, err := c.trigger(ctx, fs.Arg(0), apiv1.TriggerBody{Vars: vars, RepoURL: repo, Branch: branch, Tag: tag, Commit: commit})
	if err != nil {
		return err
	}
	if !wait {
		fmt.Println(run.ID)
		return nil
	}
	return finish(ctx, c, run.ID, os.Stdout, output)
}

func cmdCatalog(kind string) func(context.Context, []string) error {
	return func(ctx context.Context, args []string) error {
		if len(args) == 0 {
			return invalid("usage: ansflow %s list|add|delete", kind)
		}
		var id, name, u, kctx, user, pwSecret, tokenSecret string
		c, _, fs, err := clientFlags(kind+" "+args[0], args[1:], func(fs *flag.FlagSet) {
			fs.StringVar(&id, "id", "", "id")
			fs.StringVar(&name, "name", "", "name")
			fs.StringVar(&u, "url", "", "registry URL (registries)")
			fs.StringVar(&user, "username", "", "registry username, with --password-secret (registries)")
			fs.StringVar(&pwSecret, "password-secret", "", "secret holding the registry password, sent only to --url's host (registries)")
			fs.StringVar(&kctx, "context", "", "kubeconfig context (clusters)")
			fs.StringVar(&tokenSecret, "token-secret", "", "secret holding a bearer token the cluster's steps authenticate with (clusters)")
		})
		if err != nil {
			return err
		}
		path := "/api/v1/" + kind
		switch args[0] {
		case "list":
			var v any
			if err := c.do(ctx, http.MethodGet, path, "", nil, &v); err != nil {
				return err
			}
			return printJSON(os.Stdout, v)
		case "add":
			var body any = apiv1.Registry{ID: id, Name: name, URL: u, Username: user, PasswordSecret: pwSecret}
			if kind == "clusters" {
				body = apiv1.Cluster{ID: id, Name: name, Context: kctx, TokenSecret: tokenSecret}
			}
			b, _ := json.Marshal(body)
			return c.do(ctx, http.MethodPost, path, "application/json", bytes.NewReader(b), nil)
		case "delete":
			if fs.Arg(0) == "" {
				return invalid("ansflow %s delete ID", kind)
			}
			return c.do(ctx, http.MethodDelete, path+"/"+url.PathEscape(fs.Arg(0)), "", nil, nil)
		}
		return invalid("unknown %s command %q", kind, args[0])
	}
}
