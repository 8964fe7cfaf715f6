// Package engine executes AnsFlow's Kubernetes step types against one
// cluster through client-go: k8s_deploy (server-side apply of a Deployment
// and Service built from the seed's deployment_spec, or of raw manifests of
// any kind), k8s_scale (the scale subresource), k8s_delete (any kind, with a
// propagation policy, waiting until gone), k8s_wait (rollout complete exactly
// as `kubectl rollout status` decides it, pod ready, job complete, deleted,
// or any Type=Status condition), k8s_exec (remote command with separate
// stdout, stderr and exit code) and k8s_logs (tail, since, follow).
//
// Every wait is driven by the watch API (list, then watch from the list's
// resource version, relisting when the watch expires); nothing polls.
//
// An [Engine] serves exactly one cluster (one rest.Config); a runner process
// that serves several clusters creates one engine per cluster. The engine
// holds the cluster's credentials; step requests only name the cluster.
//
// A cluster's [Access] (set by the runner's operator) limits the namespaces
// its steps use and the kinds they apply, scale and delete; a refused step
// fails with an [*AccessError] before any request changes the cluster.
//
// Errors carry their meaning: a missing namespace wraps
// [ErrNamespaceNotFound], an RBAC denial is a [*ForbiddenError] naming the
// verb and resource, an empty pod selection wraps [ErrNoPods], a failed
// rollout is a [*RolloutError] (errors.Is [ErrRolloutFailed]), a wait that
// ran out of time wraps [ErrWaitTimeout], a bad k8s_config wraps
// [ErrInvalidConfig], and a command that exited non-zero is a
// [*runner.ExitError] carrying its exit code.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/runner"
	"github.com/ansflow/ansflow/pkg/spec/steps"
	"github.com/ansflow/ansflow/pkg/tracing"
)

// Step types executed by the engine.
const (
	TypeDeploy = "k8s_deploy"
	TypeScale  = "k8s_scale"
	TypeDelete = "k8s_delete"
	TypeWait   = "k8s_wait"
	TypeExec   = "k8s_exec"
	TypeLogs   = "k8s_logs"
)

// DefaultFieldManager is the server-side apply field manager used when
// neither [Config.FieldManager] nor the step's k8s_config.field_manager
// names one.
const DefaultFieldManager = "ansflow"

// DefaultWaitTimeout bounds a wait whose step sets no k8s_config.timeout.
const DefaultWaitTimeout = 5 * time.Minute

// Config configures an [Engine]. The zero value loads the kubeconfig the way
// kubectl does ($KUBECONFIG, then ~/.kube/config, then the in-cluster service
// account) and uses its current context.
type Config struct {
	// Kubeconfig is the kubeconfig file to load; empty means $KUBECONFIG
	// (a colon-separated list), then ~/.kube/config, then in-cluster.
	Kubeconfig string
	// Context is the kubeconfig context to use; empty means the current
	// context.
	Context string
	// FieldManager names the server-side apply field manager (default
	// [DefaultFieldManager]). A step may override it with
	// k8s_config.field_manager.
	FieldManager string
	// Cluster names the served cluster in messages (default: the context's
	// name, or "in-cluster").
	Cluster string
	// RESTConfig, when set, is used as is instead of loading a kubeconfig
	// (embedding, tests, impersonation). Kubeconfig and Context are then
	// ignored.
	RESTConfig *rest.Config
	// DefaultNamespace is used by steps that name no namespace (default:
	// the context's namespace, else "default").
	DefaultNamespace string
	// WaitTimeout bounds waits whose step sets no timeout (default
	// [DefaultWaitTimeout]).
	WaitTimeout time.Duration
	// Access limits the namespaces and kinds steps may touch (default: the
	// default namespace and [DefaultKinds]).
	Access Access
	// ServiceAccountDir is the directory of the pod's service account
	// (token, ca.crt, namespace) used when no kubeconfig is found (default
	// [DefaultServiceAccountDir]); see [InClusterConfig].
	ServiceAccountDir string
}

// Validate fills c's defaults; it fails on values that cannot work.
func (c *Config) Validate() error {
	if c.FieldManager == "" {
		c.FieldManager = DefaultFieldManager
	}
	if c.WaitTimeout < 0 {
		return fmt.Errorf("wait timeout %s is negative", c.WaitTimeout)
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if len(c.Access.Kinds) == 0 {
		c.Access.Kinds = append([]string(nil), DefaultKinds...)
	}
	return c.Access.validate()
}

// Engine executes Kubernetes steps against one cluster. It is safe for
// concurrent use: the runner calls Execute for different attempts at once.
// Create it with [New].
type Engine struct {
	cfg    Config
	rest   *rest.Config
	cs     kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.ResettableRESTMapper // discovery-backed, lazily filled, cached
	expand meta.RESTMapper           // mapper plus short names (deploy, sts, ...)
	log    *zap.Logger
}

// New loads the cluster's client configuration and returns an engine. It
// does not contact the cluster; use [Engine.Ping] to check that it answers.
// log may be nil.
func New(cfg Config, log *zap.Logger) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	rc := cfg.RESTConfig
	if rc != nil {
		rc = rest.CopyConfig(rc)
		if cfg.DefaultNamespace == "" {
			cfg.DefaultNamespace = "default"
		}
		if cfg.Cluster == "" {
			cfg.Cluster = rc.Host
		}
	} else if cfg.Kubeconfig == "" && cfg.Context == "" && !kubeconfigFound() && inClusterEnv() {
		// No kubeconfig anywhere, inside a pod: its service account.
		var ns string
		var err error
		rc, ns, err = InClusterConfig(cfg.ServiceAccountDir)
		if err != nil {
			return nil, err
		}
		if cfg.DefaultNamespace == "" {
			cfg.DefaultNamespace = ns
		}
		if cfg.Cluster == "" {
			cfg.Cluster = "in-cluster"
		}
	} else {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		if cfg.Kubeconfig != "" {
			rules.ExplicitPath = cfg.Kubeconfig
		}
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: cfg.Context})
		var err error
		rc, err = cc.ClientConfig()
		if err != nil {
			where := "the default kubeconfig ($KUBECONFIG or ~/.kube/config) or the in-cluster service account"
			if cfg.Kubeconfig != "" {
				where = fmt.Sprintf("kubeconfig %s", cfg.Kubeconfig)
			}
			if cfg.Context != "" {
				where += fmt.Sprintf(", context %q", cfg.Context)
			}
			return nil, fmt.Errorf("load cluster credentials from %s: %w", where, err)
		}
		if cfg.DefaultNamespace == "" {
			ns, _, err := cc.Namespace()
			if err != nil || ns == "" {
				ns = "default"
			}
			cfg.DefaultNamespace = ns
		}
		if cfg.Cluster == "" {
			cfg.Cluster = cfg.Context
			if raw, err := cc.RawConfig(); err == nil && cfg.Cluster == "" {
				cfg.Cluster = raw.CurrentContext
			}
			if cfg.Cluster == "" {
				cfg.Cluster = "in-cluster"
			}
		}
	}
	if len(cfg.Access.Namespaces) == 0 {
		cfg.Access.Namespaces = []string{cfg.DefaultNamespace}
	}
	// client-go's defaults (5 QPS, burst 10) throttle a runner executing
	// several steps at once; the apiserver's own flow control protects it.
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 100, 200
	}
	if rc.UserAgent == "" {
		rc.UserAgent = "ansflow-k8s-runner"
	}
	if tracing.Enabled() {
		// Each Kubernetes API call is a client span of the step's trace.
		rc.Wrap(tracing.Transport)
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: http client: %w", cfg.Cluster, err)
	}
	return newWithHTTPClient(cfg, rc, hc, log)
}

func newWithHTTPClient(cfg Config, rc *rest.Config, hc *http.Client, log *zap.Logger) (*Engine, error) {
	cs, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: clientset: %w", cfg.Cluster, err)
	}
	dyn, err := dynamic.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: dynamic client: %w", cfg.Cluster, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: discovery client: %w", cfg.Cluster, err)
	}
	cached := memory.NewMemCacheClient(dc)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	e := &Engine{cfg: cfg, rest: rc, cs: cs, dyn: dyn, mapper: mapper, log: log.With(zap.String("cluster", cfg.Cluster))}
	e.expand = restmapper.NewShortcutExpander(mapper, cached, func(msg string) { e.log.Debug("discovery", zap.String("warning", msg)) })
	return e, nil
}

// withToken returns an engine for one step that authenticates with a bearer
// token (the cluster entry's token_secret) instead of the runner's own
// credentials: same API server and CA, no client certificate, exec plugin
// or basic auth of the runner's. API discovery stays shared: it is the
// same cluster.
func (e *Engine) withToken(token string) (*Engine, error) {
	rc := rest.AnonymousClientConfig(e.rest)
	rc.BearerToken = token
	rc.QPS, rc.Burst, rc.UserAgent = e.rest.QPS, e.rest.Burst, e.rest.UserAgent
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: http client for the entry's token: %w", e.cfg.Cluster, err)
	}
	cs, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: clientset for the entry's token: %w", e.cfg.Cluster, err)
	}
	dyn, err := dynamic.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: dynamic client for the entry's token: %w", e.cfg.Cluster, err)
	}
	c := *e
	c.rest, c.cs, c.dyn = rc, cs, dyn
	return &c, nil
}

// Access returns the namespaces and kinds the engine's steps may touch, with
// defaults filled in.
func (e *Engine) Access() Access { return e.cfg.Access }

// Host is the API server's URL.
func (e *Engine) Host() string { return e.rest.Host }

// Cluster is the name of the served cluster as used in messages.
func (e *Engine) Cluster() string { return e.cfg.Cluster }

// Ping asks the cluster for its version, proving that the credentials
// reach it.
func (e *Engine) Ping(ctx context.Context) (string, error) {
	body, err := e.cs.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		return "", fmt.Errorf("cluster %q (%s) does not answer: %w", e.cfg.Cluster, e.rest.Host, err)
	}
	var v version.Info
	if err := json.Unmarshal(body, &v); err != nil {
		return "", fmt.Errorf("cluster %q (%s): version: %w", e.cfg.Cluster, e.rest.Host, err)
	}
	return v.GitVersion, nil
}

// Types lists the step types the engine executes.
func (e *Engine) Types() []string {
	return []string{TypeDeploy, TypeScale, TypeDelete, TypeWait, TypeExec, TypeLogs}
}

// Execute runs one attempt of a Kubernetes step. It returns when the step is
// done or ctx ends; waits, log follows and exec streams stop with ctx. The
// step's namespace and resource name come from req (the orchestrator has
// already applied inheritance from earlier steps); its parameters come from
// req.K8sConfig, decoded through the step type's definition in
// pkg/spec/steps.
func (e *Engine) Execute(ctx context.Context, req *event.StepRequested, task *runner.Task) (map[string]string, error) {
	return e.execute(ctx, req, task)
}

// stepIO is what a step needs of a [runner.Task]; benchmarks and internal
// tests provide their own.
type stepIO interface {
	Stdout() io.Writer
	Stderr() io.Writer
	Mask(secret string)
	SourceDir(ctx context.Context) (string, error)
	ClusterToken() (token string, ok bool)
}

// step is one attempt being executed.
type step struct {
	e   *Engine
	req *event.StepRequested
	io  stepIO
	// cfg is req.K8sConfig decoded into the step type's definition:
	// *steps.K8sDeployConfig, *steps.K8sScaleConfig, and so on.
	cfg any
	// manager is the field manager the step asks for ("": the engine's).
	manager string
	// pods says which pods and container a k8s_exec or k8s_logs step
	// addresses.
	pods podTarget
	log  *zap.Logger
}

// podTarget is the pod, pod_selector and container of a step's settings.
type podTarget struct {
	pod, selector, container string
}

// decode decodes req.K8sConfig into s.cfg through the definition of the
// step's type, so that the engine reads no setting validation does not
// know. A value that does not fit fails with [ErrInvalidConfig].
func (s *step) decode() error {
	cfg, err := steps.DecodeType(s.req.Type, s.req.K8sConfig)
	if err != nil {
		var fe *steps.FieldError
		switch {
		case errors.As(err, &fe) && fe.Path == "":
			return fmt.Errorf("%w: %s %s", ErrInvalidConfig, s.req.Type, fe.Msg)
		case errors.As(err, &fe):
			return invalid(fe.Path, "%s", fe.Msg)
		}
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	s.cfg = cfg
	switch c := cfg.(type) {
	case *steps.K8sDeployConfig:
		s.manager = c.FieldManager
	case *steps.K8sScaleConfig:
		s.manager = c.FieldManager
	case *steps.K8sExecConfig:
		s.pods = podTarget{pod: c.Pod, selector: c.PodSelector, container: c.Container}
	case *steps.K8sLogsConfig:
		s.pods = podTarget{pod: c.Pod, selector: c.PodSelector, container: c.Container}
	}
	return nil
}

// timeout is d, or the engine's wait timeout when d is unset.
func (s *step) timeout(d time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return s.e.cfg.WaitTimeout
}

func (e *Engine) execute(ctx context.Context, req *event.StepRequested, t stepIO) (map[string]string, error) {
	if token, ok := t.ClusterToken(); ok {
		var err error
		if e, err = e.withToken(token); err != nil {
			return nil, fmt.Errorf("%s: %w", req.Type, err)
		}
	}
	s := &step{e: e, req: req, io: t,
		log: e.log.With(zap.String("run_id", req.RunID), zap.String("step_id", req.StepID), zap.Int("attempt", req.Attempt))}
	var run func(context.Context) (map[string]string, error)
	switch req.Type {
	case TypeDeploy:
		run = s.deploy
	case TypeScale:
		run = s.scale
	case TypeDelete:
		run = s.delete
	case TypeWait:
		run = s.wait
	case TypeExec:
		run = s.exec
	case TypeLogs:
		run = s.logs
	default:
		return nil, fmt.Errorf("k8s engine does not execute step type %q", req.Type)
	}
	if err := e.allowNamespace(s.namespace()); err != nil {
		return nil, fmt.Errorf("%s: %w", req.Type, err)
	}
	if err := s.decode(); err != nil {
		return nil, err
	}
	start := time.Now()
	out, err := run(ctx)
	if err != nil {
		// A cancelled or timed-out step reports why, not the API error the
		// cancellation provoked.
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%v)", cause, err)
		}
	}
	s.log.Debug("k8s step done", zap.String("type", req.Type), zap.Duration("took", time.Since(start)), zap.Error(err))
	return out, err
}

// namespace is the step's namespace: the request's, else the engine's
// default.
func (s *step) namespace() string {
	if ns := strings.TrimSpace(s.req.Namespace); ns != "" {
		return ns
	}
	return s.e.cfg.DefaultNamespace
}

// fieldManager is the step's server-side apply field manager.
func (s *step) fieldManager() string {
	if s.manager != "" {
		return s.manager
	}
	return s.e.cfg.FieldManager
}

// printf writes a progress line to the step's stdout.
func (s *step) printf(format string, args ...any) {
	fmt.Fprintf(s.io.Stdout(), format+"\n", args...)
}
