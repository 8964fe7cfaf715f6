package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// maxFollowedPods bounds the log streams one k8s_logs step follows at once.
const maxFollowedPods = 20

// logs executes k8s_logs: it streams the logs of the step's pods (pod,
// pod_selector or the step's resource name, see [step.selectPods]) into the
// step's stdout, one container each (container, else the pod's default).
// tail_lines limits each to its last lines, since to those newer than a
// duration ("10m", or seconds) or an RFC 3339 time, previous reads the
// previous instance of a restarted container. follow keeps streaming until
// the containers stop, or for timeout seconds when set (which then ends the
// step successfully), or until the step's own timeout. With several pods,
// lines are prefixed with "[pod/container] "; a pod whose logs cannot be
// read is reported on stderr, and the step fails only when none can be.
// Outputs: pods, lines, namespace.
func (s *step) logs(ctx context.Context) (map[string]string, error) {
	c := s.cfg.(*steps.K8sLogsConfig)
	opts := corev1.PodLogOptions{Follow: c.Follow, Previous: c.Previous, TailLines: c.TailLines}
	switch {
	case !c.Since.Time.IsZero():
		mt := metav1.NewTime(c.Since.Time)
		opts.SinceTime = &mt
	case c.Since.Ago > 0:
		secs := int64((c.Since.Ago + time.Second - 1) / time.Second)
		opts.SinceSeconds = &secs
	}
	followFor := c.Timeout
	ns := s.namespace()
	if err := s.checkNamespace(ctx, ns); err != nil {
		return nil, err
	}
	set, err := s.selectPods(ctx, ns)
	if err != nil {
		return nil, err
	}
	if opts.Follow && len(set.pods) > maxFollowedPods {
		return nil, fmt.Errorf("%w: %s: %d pods match, more than the %d log streams a step follows at once; narrow the selector",
			ErrInvalidConfig, set.how, len(set.pods), maxFollowedPods)
	}
	type source struct {
		pod, container, prefix string
	}
	var sources []source
	var podNames []string
	for i := range set.pods {
		p := &set.pods[i]
		c, err := s.containerOf(p)
		if err != nil {
			return nil, err
		}
		src := source{pod: p.Name, container: c}
		if len(set.pods) > 1 {
			src.prefix = fmt.Sprintf("[%s/%s] ", p.Name, c)
		}
		sources = append(sources, src)
		podNames = append(podNames, p.Name)
	}

	sctx := ctx
	if opts.Follow && followFor > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, followFor)
		defer cancel()
	}
	var lines atomic.Int64
	var mu sync.Mutex // serialises whole lines of concurrent streams
	stream := func(src source) error {
		o := opts
		o.Container = src.container
		rc, err := s.e.cs.CoreV1().Pods(ns).GetLogs(src.pod, &o).Stream(sctx)
		if err != nil {
			if sctx.Err() != nil && ctx.Err() == nil {
				return nil // follow time is up
			}
			return s.apiErr(err, apiReq{verb: "get", resource: "pods/log", ns: ns, name: src.pod})
		}
		defer rc.Close()
		n, err := copyLines(s.io.Stdout(), rc, src.prefix, &mu)
		lines.Add(n)
		if err != nil && sctx.Err() != nil && ctx.Err() == nil {
			return nil // follow time is up
		}
		if err != nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil {
			return fmt.Errorf("read logs of pod %s/%s container %s: %w", ns, src.pod, src.container, err)
		}
		return nil
	}

	var failed []error
	var failedMu sync.Mutex
	run := func(src source) error {
		err := stream(src)
		if err == nil || ctx.Err() != nil || len(sources) == 1 {
			return err
		}
		fmt.Fprintf(s.io.Stderr(), "%scannot read logs: %v\n", src.prefix, err)
		failedMu.Lock()
		failed = append(failed, err)
		failedMu.Unlock()
		return nil
	}
	if opts.Follow {
		var g errgroup.Group
		for _, src := range sources {
			g.Go(func() error { return run(src) })
		}
		err = g.Wait()
	} else {
		for _, src := range sources {
			if err = run(src); err != nil {
				break
			}
		}
	}
	out := map[string]string{"namespace": ns, "pods": strings.Join(podNames, ","), "lines": strconv.FormatInt(lines.Load(), 10)}
	if err == nil && len(failed) == len(sources) {
		err = fmt.Errorf("no logs could be read from %s: %w", set.how, errors.Join(failed...))
	}
	return out, err
}

// copyLines copies r to w line by line, each line (with prefix) in one
// Write under mu so that concurrent streams never interleave within a line.
// It returns the number of lines copied.
func copyLines(w io.Writer, r io.Reader, prefix string, mu *sync.Mutex) (int64, error) {
	br := bufio.NewReaderSize(r, 32<<10)
	var n int64
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			if !strings.HasSuffix(line, "\n") {
				line += "\n"
			}
			mu.Lock()
			_, werr := io.WriteString(w, prefix+line)
			mu.Unlock()
			if werr != nil {
				return n, werr
			}
			n++
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
