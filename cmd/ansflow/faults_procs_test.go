package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// faultProc is one service process of the fault suite: started, SIGKILLed
// and started again with the same arguments, its output appended to one log
// file across restarts. It is stopped when the test ends.
type faultProc struct {
	t    testing.TB
	name string
	bin  string
	args []string
	log  string
	// env is added to the process's environment.
	env []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
}

func newFaultProc(t testing.TB, logDir, name, bin string, args ...string) *faultProc {
	p := &faultProc{t: t, name: name, bin: bin, args: args, log: filepath.Join(logDir, name+".log")}
	t.Cleanup(p.stop)
	return p
}

// start starts the process; it must not be running.
func (p *faultProc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	p.starts++
	fmt.Fprintf(f, "=== faults: start %d of %s at %s\n", p.starts, p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	if p.env != nil {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// pid is the running process's id (0 when it is not running).
func (p *faultProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// kill SIGKILLs the process and returns once it is gone, with the moment the
// signal was sent.
func (p *faultProc) kill() time.Time {
	p.t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	at := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		p.t.Fatalf("SIGKILL %s: %v", p.name, err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s still running 30s after SIGKILL", p.name)
	}
	return at
}

func (p *faultProc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process (SIGTERM, then SIGKILL after 5s) and, when the test
// failed, shows the end of its log.
func (p *faultProc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd != nil {
		select {
		case <-done:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
	}
	if p.t.Failed() {
		p.t.Logf("--- last lines of %s (%s):\n%s", p.name, p.log, tailFile(p.log, 60))
	}
	if dir := os.Getenv("ANSFLOW_FAULTS_LOGS"); dir != "" {
		if b, err := os.ReadFile(p.log); err == nil && os.MkdirAll(dir, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(dir, p.name+".log"), b, 0o644)
		}
	}
}

func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// natsNode is one nats-server process of the cluster.
type natsNode struct {
	name                   string
	client, route, monitor string // host:port
	storeDir               string
	proc                   *faultProc
}

func (n *natsNode) url() string { return "nats://" + n.client }

// startNATSCluster starts three clustered nats-server processes with
// JetStream on loopback, each with its own store directory, and returns once
// the cluster has a JetStream meta leader.
func startNATSCluster(t testing.TB, bin, logDir string) []*natsNode {
	t.Helper()
	nodes := make([]*natsNode, 3)
	for i := range nodes {
		nodes[i] = &natsNode{name: fmt.Sprintf("n%d", i+1), client: freePort(t), route: freePort(t), monitor: freePort(t),
			storeDir: t.TempDir()}
	}
	for i, n := range nodes {
		var routes []string
		for j, o := range nodes {
			if j != i {
				routes = append(routes, "nats://"+o.route)
			}
		}
		host, port := splitAddr(n.client)
		_, mport := splitAddr(n.monitor)
		n.proc = newFaultProc(t, logDir, "nats-"+n.name, bin,
			"-js", "-sd", n.storeDir, "-n", n.name, "-a", host, "-p", port, "-m", mport,
			"--cluster_name", "ansflow-faults", "--cluster", "nats://"+n.route, "--routes", strings.Join(routes, ","))
		n.proc.start()
	}
	waitFor(t, 60*time.Second, "a JetStream meta leader in the NATS cluster", func() (bool, string) {
		leaders := map[string]bool{}
		for _, n := range nodes {
			var jsz struct {
				Meta *struct {
					Leader string `json:"leader"`
					Size   int    `json:"cluster_size"`
				} `json:"meta_cluster"`
			}
			if err := getJSON("http://"+n.monitor+"/jsz", &jsz); err != nil {
				return false, err.Error()
			}
			if jsz.Meta == nil || jsz.Meta.Leader == "" || jsz.Meta.Size != 3 {
				return false, fmt.Sprintf("%s sees no meta leader of 3 yet", n.name)
			}
			leaders[jsz.Meta.Leader] = true
		}
		return len(leaders) == 1, fmt.Sprintf("nodes disagree on the meta leader: %v", leaders)
	})
	return nodes
}

// healthy reports whether the node's /healthz answers ok: it is up and its
// JetStream assets are current.
func (n *natsNode) healthy() bool {
	resp, err := http.Get("http://" + n.monitor + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func splitAddr(addr string) (host, port string) {
	i := strings.LastIndex(addr, ":")
	return addr[:i], addr[i+1:]
}

func getJSON(url string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// waitFor polls cond every 100ms until it holds, failing the test after d
// with cond's last explanation.
func waitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if why, ok := pollUntil(d, cond); !ok {
		t.Fatalf("waited %s for %s: %s", d, what, why)
	}
}

// pollUntil polls cond every 100ms for up to d; it reports whether cond
// held, and otherwise cond's last explanation.
func pollUntil(d time.Duration, cond func() (bool, string)) (string, bool) {
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return "", true
		}
		if time.Now().After(deadline) {
			return why, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buildFaultBinaries builds the services and nats-server (from the module
// the workspace already requires) into one directory.
func buildFaultBinaries(t testing.TB) string {
	t.Helper()
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+string(filepath.Separator),
		"./services/pipeline", "./services/docker-runner", "./services/audit", "github.com/nats-io/nats-server/v2")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the fault suite's binaries: %v\n%s", err, out)
	}
	for _, b := range []string{"pipeline", "docker-runner", "audit", "nats-server"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("build: %v", err)
		}
	}
	return bin
}
