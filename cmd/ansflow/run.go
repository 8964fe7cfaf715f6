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
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/logging"
	"github.com/ansflow/ansflow/pkg/secret"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/pkg/spec"
	dockerpolicy "github.com/ansflow/ansflow/services/docker-runner/policy"
)

// varsFlag collects repeated --var k=v.
type varsFlag map[string]string

func (v varsFlag) String() string { return "" }
func (v varsFlag) Set(s string) error {
	k, val, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--var %q: want name=value", s)
	}
	v[k] = val
	return nil
}

func serverDefault() string {
	if s := os.Getenv("ANSFLOW_SERVER"); s != "" {
		return s
	}
	return ""
}

func cmdRun(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	vars := varsFlag{}
	fs.Var(vars, "var", "set a declared pipeline variable (name=value, repeatable)")
	branch := fs.String("branch", "", "git branch of the run (default: the file's repository's branch)")
	commit := fs.String("commit", "", "git commit of the run (default: the file's repository's HEAD)")
	dataDir := fs.String("data-dir", "", "embedded data directory (default: a fresh temporary one)")
	server := fs.String("server", serverDefault(), "run on this AnsFlow server instead of an embedded one")
	output := fs.String("output", "text", "text or json (the final run as one JSON object on stdout)")
	config := fs.String("config", os.Getenv("ANSFLOW_CONFIG"), "registries and clusters file (embedded mode)")
	level := fs.String("log-level", "warn", "log level of the embedded services")
	policyFlags := dockerpolicy.RegisterFlags(fs, os.LookupEnv)
	kubeContext := fs.String("kube-context", os.Getenv("ANSFLOW_KUBE_CONTEXT"), "kubeconfig context of the steps without k8s_cluster (default: the current context of an explicitly set $KUBECONFIG, else none)")
	secretEnvs := secretEnvFlag{}
	fs.Var(&secretEnvs, "secret", "embedded mode: give the run's steps the secret NAME from the environment variable NAME, or NAME=VAR from VAR (repeatable)")
	tf := addTokenFlags(fs, false)
	file, rest := splitFirstArg(args)
	if err := fs.Parse(rest); err != nil {
		return &usageError{err}
	}
	if file == "" && fs.NArg() > 0 {
		file = fs.Arg(0)
	}
	if file == "" {
		return invalid("usage: ansflow run FILE [--var k=v]... [--branch B] [--commit C] [--server URL] [--output json]")
	}
	if *output != "text" && *output != "json" {
		return invalid("--output %q: want text or json", *output)
	}
	text, err := os.ReadFile(file)
	if err != nil {
		return invalid("%v", err)
	}
	p, err := spec.Parse(file, text)
	if err != nil {
		return &usageError{err}
	}
	dir := filepath.Dir(file)
	if *branch == "" {
		*branch = gitOut(dir, "rev-parse", "--abbrev-ref", "HEAD")
	}
	if *commit == "" {
		*commit = gitOut(dir, "rev-parse", "HEAD")
	}

	if len(secretEnvs) > 0 && *server != "" {
		return invalid("--secret works in embedded mode only; on a server, use `ansflow secrets set NAME --pipeline %s`", p.Name)
	}
	base := *server
	if base != "" {
		var embeddedOnly []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "policy", "allow-host-path", "allow-docker-socket", "allow-privileged", "allow-host-network", "kube-context":
				embeddedOnly = append(embeddedOnly, "--"+f.Name)
			}
		})
		if len(embeddedOnly) > 0 {
			return invalid("%s: only for the embedded runners; a server's runners have their own policy and clusters", strings.Join(embeddedOnly, ", "))
		}
	}
	token, err := tf.resolve(base != "" && isLocalDefault(base))
	if err != nil {
		return err
	}
	if base == "" {
		log, err := logging.New(*level, false)
		if err != nil {
			return &usageError{err}
		}
		stopTracing, err := startTracing(log)
		if err != nil {
			return &usageError{err}
		}
		defer stopTracing()
		if *dataDir == "" {
			tmp, err := os.MkdirTemp("", "ansflow-run-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			*dataDir = tmp
		}
		pol, err := policyFlags.Policy()
		if err != nil {
			return &usageError{err}
		}
		st, err := startStack(ctx, stackConfig{DataDir: *dataDir, NATSAddr: "off", ConfigFile: *config, DockerPolicy: pol,
			DockerRunner: true, K8sRunner: true, Audit: true, Pipeline: true, Concurrency: 4, KubeContext: *kubeContext},
			log.With(zap.String("mode", "embedded")))
		if err != nil {
			return err
		}
		defer st.stop()
		if err := announceClusters(os.Stderr, p, st); err != nil {
			return err
		}
		base, token = st.URL, st.Token // in-process: one user, no token to give
	}
	c := newClient(base, token)
	if c.http, err = tf.httpClient(token); err != nil {
		return err
	}
	var archive bytes.Buffer
	if err := source.Pack(dir, &archive); err != nil {
		return err
	}
	obj, err := c.uploadSource(ctx, archive.Bytes())
	if err != nil {
		return err
	}
	if _, err := c.applyPipeline(ctx, file, text); err != nil {
		return err
	}
	for _, se := range secretEnvs {
		body, err := json.Marshal(apiv1.SetSecretRequest{Value: os.Getenv(se.env)})
		if err == nil {
			err = c.do(ctx, http.MethodPut, "/api/v1/pipelines/"+url.PathEscape(p.Name)+"/secrets/"+url.PathEscape(se.name), "application/json", bytes.NewReader(body), nil)
		}
		clear(body)
		if err != nil {
			return fmt.Errorf("--secret %s (from $%s): %w", se.name, se.env, err)
		}
	}
	run, err := c.trigger(ctx, p.Name, apiv1.TriggerBody{Vars: vars, Branch: *branch, Commit: *commit, SourceObject: obj})
	if err != nil {
		return err
	}
	progress := io.Writer(os.Stdout)
	if *output == "json" {
		progress = os.Stderr
	}
	return finish(ctx, c, run.ID, progress, *output)
}

// finish follows a run to its end, prints it, and maps its status to the
// exit code.
func finish(ctx context.Context, c *client, id string, progress io.Writer, output string) error {
	fmt.Fprintf(progress, "run %s started\n", id)
	p := &printer{w: progress, color: isTerminal(progress)}
	if err := c.follow(ctx, id, p.line); err != nil {
		return err
	}
	var run *apiv1.Run
	for {
		var err error
		if run, err = c.getRun(ctx, id); err != nil {
			return err
		}
		if run.Terminal() || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if output == "json" {
		if err := printJSON(os.Stdout, run); err != nil {
			return err
		}
	} else {
		printSummary(progress, run)
	}
	if run.Status != "succeeded" {
		return errRunFailed
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// splitFirstArg lets FILE come before the flags.
func splitFirstArg(args []string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	return "", args
}

func gitOut(dir string, args ...string) string {
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("NO_COLOR") == ""
}

// printer renders live run lines; stderr lines are marked (red on a
// terminal).
type printer struct {
	w     io.Writer
	color bool
}

func (p *printer) paint(code, s string) string {
	if !p.color {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (p *printer) line(l apiv1.LogLine) {
	switch l.Kind {
	case "log":
		for _, ln := range strings.SplitAfter(l.Text, "\n") {
			if ln == "" {
				continue
			}
			ln = strings.TrimSuffix(ln, "\n")
			if l.Stream == "stderr" {
				fmt.Fprintf(p.w, "%s %s %s\n", p.paint("36", "["+l.Step+"]"), p.paint("31", "stderr|"), ln)
			} else {
				fmt.Fprintf(p.w, "%s %s %s\n", p.paint("36", "["+l.Step+"]"), "stdout|", ln)
			}
		}
	case "step":
		mark := map[string]string{"running": p.paint("33", "▶"), "succeeded": p.paint("32", "✔"), "failed": p.paint("31", "✖"), "cancelled": p.paint("31", "■")}[l.Status]
		msg := fmt.Sprintf("%s %s %s (attempt %d)", mark, l.Step, l.Status, l.Attempt)
		if l.Error != "" {
			msg += ": " + l.Error
		}
		fmt.Fprintln(p.w, msg)
	}
}

func printSummary(w io.Writer, r *apiv1.Run) {
	fmt.Fprintf(w, "\nrun %s of %q (build %d): %s", r.ID, r.Pipeline, r.BuildNumber, strings.ToUpper(r.Status))
	if r.Error != "" {
		fmt.Fprintf(w, " — %s", r.Error)
	}
	if r.Waiting != "" {
		fmt.Fprintf(w, " — waiting: %s", r.Waiting)
		if r.AwaitingApproval() {
			fmt.Fprintf(w, " (%s; ansflow runs approve %s)", r.Approval.Reason, r.ID)
		}
	}
	fmt.Fprintln(w)
	for _, s := range r.Steps {
		d := ""
		if s.StartedAt != nil && s.FinishedAt != nil {
			d = s.FinishedAt.Sub(*s.StartedAt).Round(time.Millisecond).String()
		}
		why := s.Error
		if s.Status == "skipped" || (s.Status == "cancelled" && why == "") {
			why = s.SkipReason
		}
		if s.Status == "queued" && s.Waiting != "" {
			why = s.Waiting
		}
		if s.LostAttempts > 0 {
			why = strings.TrimSpace(fmt.Sprintf("%s (%d attempts lost with their runner)", why, s.LostAttempts))
		}
		fmt.Fprintf(w, "  %-10s %-28s %-13s attempts=%d %8s  %s\n", s.Status, s.Name, s.Type, s.Attempts, d, why)
	}
}

// announceClusters says which cluster and context each Kubernetes step of p
// will use, and fails before the run when a step's cluster has no context.
func announceClusters(w io.Writer, p *spec.Pipeline, st *stack) error {
	for _, s := range p.Steps {
		if s.Kind() != event.KindK8s {
			continue
		}
		name, se, ok := st.StepCluster(string(s.K8sCluster))
		switch {
		case !ok:
			fmt.Fprintf(w, "ansflow run: step %q (%s): cluster %q is not in --config\n", s.Name, s.Type, name)
		case se.Unserved != nil:
			return fmt.Errorf("step %q (%s): %w", s.Name, s.Type, se.Unserved)
		default:
			fmt.Fprintf(w, "ansflow run: step %q (%s) uses cluster %q: %s\n", s.Name, s.Type, name, se.Desc)
		}
	}
	return nil
}

// secretEnvFlag collects --secret NAME or NAME=VAR: a secret of the run's
// pipeline taken from an environment variable.
type secretEnvFlag []struct{ name, env string }

func (f *secretEnvFlag) String() string { return "" }

func (f *secretEnvFlag) Set(v string) error {
	name, env, ok := strings.Cut(v, "=")
	if !ok {
		env = name
	}
	if err := secret.CheckName(name); err != nil {
		return err
	}
	if _, set := os.LookupEnv(env); !set {
		return fmt.Errorf("secret %s: environment variable %s is not set", name, env)
	}
	*f = append(*f, struct{ name, env string }{name, env})
	return nil
}
