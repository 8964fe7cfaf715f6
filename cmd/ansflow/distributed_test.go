package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess starts a binary and stops it (SIGTERM, then SIGKILL) when the test
// ends; its output goes to a log file shown on failure.
func startProcess(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	return startProcessEnv(t, nil, name, args...)
}

// startProcessEnv is [startProcess] with env added to the test's
// environment.
func startProcessEnv(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s %v log:\n%s", filepath.Base(name), args, b)
		}
	})
	return cmd
}

// waitReady polls base's /readyz until it answers 200 with every line of
// want, or fails the test after 30 s with the last answer.
func waitReady(t *testing.T, name, base string, want ...string) {
	t.Helper()
	waitFor(t, 30*time.Second, name+" to be ready", func() (bool, string) {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ok := resp.StatusCode == http.StatusOK
		for _, w := range want {
			ok = ok && strings.Contains(string(b), w)
		}
		return ok, fmt.Sprintf("%d %q", resp.StatusCode, b)
	})
}

// TestDistributedMode runs every service as its own process against a NATS
// server of its own: the pipeline service, two docker runners sharing the
// default pool, and the audit service. Steps spread over both runners; a
// runner killed mid-step loses its attempt to the other, and the retry
// succeeds; the audit service records the run.
func TestDistributedMode(t *testing.T) {
	cli := dockertest.Client(t)
	image := dockertest.BusyboxImage(t, cli)
	bin := t.TempDir()
	for _, b := range []struct{ name, pkg string }{
		{"ansflow", "."}, {"pipeline", "../../services/pipeline"}, {"docker-runner", "../../services/docker-runner"}, {"audit", "../../services/audit"},
	} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, b.name), b.pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	natsAddr, apiAddr, auditAddr := freePort(t), freePort(t), freePort(t)
	natsURL := "nats://" + natsAddr
	upDir := t.TempDir()
	startProcess(t, filepath.Join(bin, "ansflow"), "up", "--no-pipeline", "--no-runners", "--no-audit", "--nats", natsAddr, "--data-dir", upDir)
	waitTCP(t, natsAddr)
	// The embedded server's port is no open door: a client without the
	// data directory's token is refused.
	if nc, err := nats.Connect(natsURL, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("ansflow up's NATS port took a client without its token")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("a client without the token: %v, want an authorization violation", err)
	}
	natsToken := filepath.Join(upDir, natsTokenFile)
	adminFile, admin := adminTokenFileFor(t)
	ops := map[string]string{"pipeline": freePort(t), "runner-a": freePort(t), "runner-b": freePort(t), "audit": freePort(t)}
	startProcess(t, filepath.Join(bin, "pipeline"), "--nats", natsURL, "--nats-token-file", natsToken, "--http", apiAddr, "--ops-addr", ops["pipeline"], "--lease-check", "2s", "--admin-token-file", adminFile)
	runners := map[string]*exec.Cmd{}
	for _, id := range []string{"runner-a", "runner-b"} {
		runners[id] = startProcess(t, filepath.Join(bin, "docker-runner"), "--nats", natsURL, "--nats-token-file", natsToken, "--ops-addr", ops[id], "--pools", "default", "--id", id, "--concurrency", "2",
			"--lease", "2s", "--work-dir", t.TempDir())
	}
	startProcess(t, filepath.Join(bin, "audit"), "--nats", natsURL, "--nats-token-file", natsToken, "--ops-addr", ops["audit"], "--data-dir", t.TempDir(), "--http", auditAddr)
	waitTCP(t, apiAddr)
	waitTCP(t, auditAddr)
	// Every service reports ready on its ops listener with its own checks.
	for name, want := range map[string][]string{
		"pipeline": {"[+]nats ok", "[+]jetstream ok"},
		"runner-a": {"[+]nats ok", "[+]jetstream ok", "[+]docker-engine ok"},
		"runner-b": {"[+]nats ok", "[+]jetstream ok", "[+]docker-engine ok"},
		"audit":    {"[+]nats ok", "[+]jetstream ok", "[+]store ok"},
	} {
		waitReady(t, name, "http://"+ops[name], want...)
	}

	c := newClient("http://"+apiAddr, admin)
	ctx := context.Background()
	var sb strings.Builder
	fmt.Fprintf(&sb, "pipeline:\n  name: spread\n  steps:\n")
	for i := 0; i < 4; i++ {
		fmt.Fprintf(&sb, "    - {name: p%d, type: docker_run, order: 1, docker_image: %q, command: \"sleep 1; echo p%d\"}\n", i, image, i)
	}
	fmt.Fprintf(&sb, "    - {name: slow, type: docker_run, order: 2, docker_image: %q, command: \"sleep 6; echo survived\"}\n", image)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.applyPipeline(ctx, "spread.yaml", []byte(sb.String()))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	run, err := c.trigger(ctx, "spread", apiv1.TriggerBody{})
	if err != nil {
		t.Fatal(err)
	}
	// kill whichever runner takes the slow step, mid-step
	var killed string
	for killed == "" {
		r, err := c.getRun(ctx, run.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s := r.Steps[4]; s.Status == "running" && s.Runner != "" {
			killed = s.Runner
			time.Sleep(500 * time.Millisecond)
			runners[killed].Process.Signal(syscall.SIGKILL)
		}
		if r.Terminal() {
			t.Fatalf("run ended before the kill: %s", r.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var r *apiv1.Run
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if r, err = c.getRun(ctx, run.ID); err != nil {
			t.Fatal(err)
		}
		if r.Terminal() || time.Now().After(deadline) {
			break
		}
	}
	if r.Status != "succeeded" {
		t.Fatalf("run %s: %s", r.Status, r.Error)
	}
	used := map[string]bool{}
	for _, s := range r.Steps[:4] {
		used[s.Runner] = true
	}
	if len(used) != 2 {
		t.Errorf("parallel steps ran on %v, want both runners", used)
	}
	slow := r.Steps[4]
	// Taken over, not retried: the step has no retry policy, and the lost
	// attempt does not count against it.
	if slow.Attempts != 2 || slow.LostAttempts != 1 || slow.Runner == killed || slow.Logs.Stdout != "survived\n" ||
		len(slow.History) != 1 || slow.History[0].Reason != "runner_lost" || slow.History[0].Runner != killed {
		t.Errorf("slow step: attempts %d (lost %d), runner %s (killed %s), stdout %q, history %+v",
			slow.Attempts, slow.LostAttempts, slow.Runner, killed, slow.Logs.Stdout, slow.History)
	}
	// the audit service recorded the run, every attempt included
	var page struct {
		Records []struct {
			Type string `json:"type"`
		} `json:"records"`
	}
	// with a viewer token made by the CLI, which the audit service reads
	// from the pipeline service's tokens bucket
	out, err := exec.Command(filepath.Join(bin, "ansflow"), "tokens", "create", "--role", "viewer", "--name", "auditor",
		"--server", "http://"+apiAddr, "--token", admin).Output()
	if err != nil {
		t.Fatalf("ansflow tokens create: %v", err)
	}
	viewer := strings.TrimSpace(string(out))
	ac := newClient("http://"+auditAddr, viewer)
	if err := newClient("http://"+auditAddr, "").do(ctx, http.MethodGet, "/api/v1/audit", "", nil, nil); !isStatus(err, http.StatusUnauthorized) {
		t.Fatalf("audit API without a token: %v, want 401", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		page.Records = nil
		if err := ac.do(ctx, http.MethodGet, "/api/v1/audit?run="+run.ID+"&limit=500", "", nil, &page); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, rec := range page.Records {
			if rec.Type == "io.ansflow.step.requested.v1" {
				n++
			}
		}
		if n == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit holds %d step.requested records of the run, want 6 (5 steps, one taken over)", n)
		}
	}
}

// adminTokenFileFor writes a new admin token to a file for a standalone
// pipeline service's --admin-token-file and returns the file and token.
func adminTokenFileFor(t testing.TB) (string, string) {
	t.Helper()
	tok, err := auth.NewTokenSecret()
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f, tok
}

// isStatus reports whether err is an API answer with status code.
func isStatus(err error, code int) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == code
}

func waitTCP(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
