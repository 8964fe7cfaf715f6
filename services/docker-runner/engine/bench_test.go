package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
)

// benchTask is the engine's view of a runner.Task for benchmarks: output is
// kept in memory and the source is a fixed directory.
type benchTask struct {
	out, err bytes.Buffer
	src      string
	// registryPassword is what the runner would have opened from the
	// request's sealed registry credential.
	registryPassword string
}

func (t *benchTask) Stdout() io.Writer { return &t.out }
func (t *benchTask) Stderr() io.Writer { return &t.err }
func (t *benchTask) Mask(string)       {}
func (t *benchTask) RegistryPassword() (string, bool) {
	return t.registryPassword, t.registryPassword != ""
}
func (t *benchTask) SourceDir(context.Context) (string, error) {
	if t.src == "" {
		return "", fmt.Errorf("no source")
	}
	return t.src, nil
}

// comparison times the engine and the docker CLI doing the same thing,
// alternating which goes first. It reports both means and, as engine/cli,
// the median of the per-round ratios, which other load on the machine skews
// least.
type comparison struct {
	engine, cli []time.Duration
}

func (c *comparison) add(engine, cli time.Duration) {
	c.engine = append(c.engine, engine)
	c.cli = append(c.cli, cli)
}

func (c *comparison) report(b *testing.B) {
	var eng, cli time.Duration
	ratios := make([]float64, len(c.engine))
	for i := range c.engine {
		eng += c.engine[i]
		cli += c.cli[i]
		ratios[i] = float64(c.engine[i]) / float64(c.cli[i])
	}
	sort.Float64s(ratios)
	median := ratios[len(ratios)/2]
	if len(ratios)%2 == 0 {
		median = (ratios[len(ratios)/2-1] + ratios[len(ratios)/2]) / 2
	}
	n := float64(len(c.engine))
	b.ReportMetric(float64(eng.Milliseconds())/n, "engine-ms/op")
	b.ReportMetric(float64(cli.Milliseconds())/n, "cli-ms/op")
	b.ReportMetric(median, "engine/cli")
	fmt.Printf("%s: engine %.1f ms, docker CLI %.1f ms (means of %d rounds); engine/cli median %.3f, of means %.3f\n",
		b.Name(), float64(eng.Microseconds())/n/1e3, float64(cli.Microseconds())/n/1e3, len(c.engine), median, float64(eng)/float64(cli))
}

// rounds runs b.N rounds of the engine and the CLI, alternating which goes
// first, calling between after each round with the timer stopped.
func rounds(b *testing.B, viaEngine, viaCLI, between func()) {
	var c comparison
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if i%2 == 0 {
			viaEngine()
			t1 := time.Now()
			viaCLI()
			c.add(t1.Sub(t0), time.Since(t1))
		} else {
			viaCLI()
			t1 := time.Now()
			viaEngine()
			c.add(time.Since(t1), t1.Sub(t0))
		}
		if between != nil {
			b.StopTimer()
			between()
			b.StartTimer()
		}
	}
	b.StopTimer()
	c.report(b)
}

func dockerCLI(b *testing.B) string {
	path, err := exec.LookPath("docker")
	if err != nil {
		b.Fatalf("the docker CLI is needed to compare against: %v", err)
	}
	return path
}

// BenchmarkDockerRun compares docker_run of a trivial command through the
// engine with `docker run --rm` of the same image and argv through the CLI.
func BenchmarkDockerRun(b *testing.B) {
	cli := dockertest.Client(b)
	base := dockertest.BusyboxImage(b, cli)
	docker := dockerCLI(b)
	eng, err := New(Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	ctx := context.Background()
	viaEngine := func(i int) {
		task := &benchTask{}
		req := &event.StepRequested{RunID: "bench", StepID: "run", Attempt: i + 1, Type: TypeRun, Image: base,
			Command: []any{"echo", "hello"}}
		if _, err := eng.execute(ctx, req, task); err != nil || task.out.String() != "hello\n" {
			b.Fatalf("engine: %v, output %q", err, task.out.String())
		}
	}
	viaCLI := func() {
		out, err := exec.Command(docker, "run", "--rm", base, "echo", "hello").CombinedOutput()
		if err != nil || string(out) != "hello\n" {
			b.Fatalf("docker run: %v: %s", err, out)
		}
	}
	viaEngine(0) // warm both paths (API version negotiation, page cache)
	viaCLI()
	n := 0
	rounds(b, func() { n++; viaEngine(n) }, viaCLI, nil)
}

// BenchmarkDockerBuild compares docker_build through the engine with `docker
// build` of the same context (a Dockerfile, 200 files of 8 KiB, a COPY and a
// RUN), without cache so that both do the work every time.
func BenchmarkDockerBuild(b *testing.B) {
	cli := dockertest.Client(b)
	base := dockertest.BusyboxImage(b, cli)
	docker := dockerCLI(b)
	eng, err := New(Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	src := b.TempDir()
	os.WriteFile(filepath.Join(src, "Dockerfile"), []byte("FROM "+base+"\nCOPY . /src\nRUN du -s /src\n"), 0o644)
	chunk := []byte(strings.Repeat("ansflow\n", 1024))
	for i := 0; i < 200; i++ {
		os.MkdirAll(filepath.Join(src, "pkg", fmt.Sprint(i%10)), 0o755)
		os.WriteFile(filepath.Join(src, "pkg", fmt.Sprint(i%10), fmt.Sprintf("f%d.txt", i)), chunk, 0o644)
	}
	const engRef, cliRef = "ansflow-bench/engine:latest", "ansflow-bench/cli:latest"
	ctx := context.Background()
	viaEngine := func() {
		task := &benchTask{src: src}
		req := &event.StepRequested{RunID: "bench", StepID: "build", Attempt: 1, Type: TypeBuild, Image: engRef,
			DockerConfig: map[string]any{"no_cache": true}}
		if _, err := eng.execute(ctx, req, task); err != nil {
			b.Fatalf("engine: %v\n%s", err, task.out.String())
		}
	}
	viaCLI := func() {
		cmd := exec.Command(docker, "build", "--no-cache", "-t", cliRef, src)
		cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0") // the classic builder, as the engine uses
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("docker build: %v: %s", err, out)
		}
	}
	// each uncached build makes new images: drop them between rounds
	removeBuilt := func() {
		dockertest.RemoveImage(b, cli, engRef)
		dockertest.RemoveImage(b, cli, cliRef)
	}
	viaEngine()
	viaCLI()
	removeBuilt()
	rounds(b, viaEngine, viaCLI, removeBuilt)
}
