package engine

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// These tests cover the engine's pure decisions; everything that talks to
// a cluster is tested against the local control plane in the other files.

// decoded runs step.decode on a request of type typ with cfg.
func decoded(typ string, cfg map[string]any) (*step, error) {
	s := &step{e: &Engine{cfg: Config{WaitTimeout: time.Minute}}, req: &event.StepRequested{Type: typ, K8sConfig: cfg}}
	return s, s.decode()
}

// TestDecodeSettings checks that the engine reads k8s_config through the
// step types' definitions as it read its own parameters: numbers and
// booleans also as strings, blank as unset, defaults, and failures as
// ErrInvalidConfig naming the key.
func TestDecodeSettings(t *testing.T) {
	s, err := decoded(TypeScale, map[string]any{"replicas": "4", "wait": "true", "timeout": "90s"})
	if c, _ := s.cfg.(*steps.K8sScaleConfig); err != nil || c.Replicas != 4 || !c.Wait || s.timeout(c.Timeout) != 90*time.Second || c.ResourceType != "deployment" {
		t.Errorf("scale: %+v %v", s.cfg, err)
	}
	if _, err := decoded(TypeScale, map[string]any{"replicas": "x"}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), `replicas: must be an integer, got "x"`) {
		t.Errorf("bad replicas: %v", err)
	}
	if _, err := decoded(TypeScale, map[string]any{"replicas": 1.5}); err == nil {
		t.Error("1.5 accepted as a whole number")
	}
	if _, err := decoded(TypeScale, map[string]any{"replicas": ""}); err == nil || !strings.Contains(err.Error(), "invalid k8s_config: replicas: required") {
		t.Errorf("empty string counted as set: %v", err)
	}
	if _, err := decoded(TypeScale, map[string]any{"replicas": float64(1), "timeout": "-1"}); err == nil {
		t.Error("negative timeout accepted")
	}
	for in, want := range map[any]time.Duration{"90s": 90 * time.Second, float64(1.5): 1500 * time.Millisecond, float64(3): 3 * time.Second, nil: time.Minute} {
		s, err := decoded(TypeDelete, map[string]any{"timeout": in})
		if c, _ := s.cfg.(*steps.K8sDeleteConfig); err != nil || s.timeout(c.Timeout) != want || !c.Wait || c.PropagationPolicy != "Background" {
			t.Errorf("timeout %v: %+v %v, want %s", in, s.cfg, err, want)
		}
	}
	if s, err := decoded(TypeDelete, map[string]any{"propagation_policy": "orphan"}); err != nil || s.cfg.(*steps.K8sDeleteConfig).PropagationPolicy != "Orphan" {
		t.Errorf("propagation_policy: %+v %v", s.cfg, err)
	}
	if _, err := decoded(TypeDeploy, map[string]any{}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "k8s_deploy needs one of deployment_spec, manifest or manifest_file") {
		t.Errorf("deploy without what: %v", err)
	}
	if s, err := decoded(TypeLogs, map[string]any{"pod": " p ", "container": "c", "since": "10m", "tail_lines": "3"}); err != nil || s.pods != (podTarget{pod: "p", container: "c"}) ||
		s.cfg.(*steps.K8sLogsConfig).Since.Ago != 10*time.Minute || *s.cfg.(*steps.K8sLogsConfig).TailLines != 3 {
		t.Errorf("logs: %+v %+v %v", s.pods, s.cfg, err)
	}
	if _, err := decoded(TypeWait, map[string]any{"conditon": "ready"}); err == nil || !strings.Contains(err.Error(), `conditon: unknown key for k8s_wait (did you mean "condition"?)`) {
		t.Errorf("misspelt key: %v", err)
	}
}

// TestEngineUsesTheDefinitions checks that the engine executes exactly the
// Kubernetes step types pkg/spec/steps defines.
func TestEngineUsesTheDefinitions(t *testing.T) {
	if got, want := (&Engine{}).Types(), steps.Names("k8s"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("engine executes %v, definitions are %v", got, want)
	}
}

func TestDeploymentSpecDecoding(t *testing.T) {
	s, err := decoded(TypeDeploy, map[string]any{"deployment_spec": map[string]any{
		"replicas": "3", "image": "a:1", "environment": map[string]any{"N": float64(2), "B": true, "S": "x"},
		"labels": map[string]any{"version": float64(2)}, "command": "serve", "args": []any{"--port", float64(80)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	spec := s.cfg.(*steps.K8sDeployConfig).DeploymentSpec
	if *spec.Replicas != 3 || spec.Environment["N"] != "2" || spec.Environment["B"] != "true" || spec.Labels["version"] != "2" ||
		fmt.Sprint(spec.Command) != "[serve]" || fmt.Sprint(spec.Args) != "[--port 80]" {
		t.Errorf("decoded %+v", spec)
	}
	s = &step{e: &Engine{}, req: &event.StepRequested{RunID: "r"}}
	if _, _, err := s.buildDeployment(&steps.DeploymentSpec{Image: "a", Labels: map[string]string{"app": "other"}}, "ns", "web"); err == nil ||
		!strings.Contains(err.Error(), "must equal the resource name") {
		t.Errorf("app label override: %v", err)
	}
	if _, _, err := s.buildDeployment(&steps.DeploymentSpec{}, "ns", "web"); err == nil || !strings.Contains(err.Error(), "deployment_spec.image: required") {
		t.Errorf("no image: %v", err)
	}
	if _, _, err := s.buildDeployment(&steps.DeploymentSpec{Image: "a", Probes: map[string]steps.Probe{"readiness": {}}}, "ns", "web"); err == nil ||
		!strings.Contains(err.Error(), "exactly one of http_get") {
		t.Errorf("empty probe: %v", err)
	}
	dep, svc, err := s.buildDeployment(&steps.DeploymentSpec{Image: "a", Ports: []steps.PortSpec{{ContainerPort: 8080}}}, "ns", "web")
	if err != nil || svc == nil || *svc.Spec.Ports[0].Name != "tcp-8080" || *dep.Spec.Template.Spec.Containers[0].Name != "web" || dep.Spec.Replicas != nil {
		t.Errorf("build: %v %+v", err, svc)
	}
}

func TestDecodeManifests(t *testing.T) {
	docs, err := decodeManifests([]byte(`
# leading comment
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
---
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Secret, metadata: {name: b}}
- {apiVersion: v1, kind: Service, metadata: {name: c}}
`), "m")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range docs {
		got = append(got, d.obj.GetKind()+"/"+d.obj.GetName()+"@"+d.origin)
	}
	if want := "[ConfigMap/a@m document 1 Secret/b@m document 2 item 1 Service/c@m document 2 item 2]"; fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if _, err := decodeManifests([]byte("a: [unclosed"), "m"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("bad yaml: %v", err)
	}
}

func TestInTree(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range []string{"", "../x", "/etc/passwd", "a/../../x"} {
		if _, err := inTree(dir, bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// rolloutStatus follows kubectl's rules and messages.
func TestRolloutStatus(t *testing.T) {
	two := int32(2)
	dep := func(mut func(*appsv1.Deployment)) *unstructured.Unstructured {
		d := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "web", Generation: 2}, Spec: appsv1.DeploymentSpec{Replicas: &two},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2}}
		mut(d)
		m, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(d)
		return &unstructured.Unstructured{Object: m}
	}
	deadline := metav1.NewTime(time.Unix(1000, 0))
	exceeded := func(d *appsv1.Deployment) {
		d.Status.AvailableReplicas = 1
		d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: "False",
			Reason: "ProgressDeadlineExceeded", Message: `ReplicaSet "web-1" has timed out progressing.`, LastUpdateTime: deadline}}
	}
	for _, tc := range []struct {
		name  string
		obj   *unstructured.Unstructured
		stale *metav1.Time
		msg   string
		done  bool
		err   string
	}{
		{"complete", dep(func(*appsv1.Deployment) {}), nil, `deployment "web" successfully rolled out`, true, ""},
		{"not observed", dep(func(d *appsv1.Deployment) { d.Status.ObservedGeneration = 1 }), nil, "Waiting for deployment spec update to be observed...", false, ""},
		{"updating", dep(func(d *appsv1.Deployment) { d.Status.UpdatedReplicas = 1 }), nil, "1 out of 2 new replicas have been updated", false, ""},
		{"old pending", dep(func(d *appsv1.Deployment) { d.Status.Replicas = 3 }), nil, "1 old replicas are pending termination", false, ""},
		{"unavailable", dep(func(d *appsv1.Deployment) { d.Status.AvailableReplicas = 1 }), nil, "1 of 2 updated replicas are available", false, ""},
		{"deadline", dep(exceeded), nil, "", false, `rollout of deployment /web failed: ProgressDeadlineExceeded: deployment "web" exceeded its progress deadline: ReplicaSet "web-1" has timed out progressing.`},
		{"stale deadline", dep(exceeded), &deadline, "1 of 2 updated replicas are available", false, ""},
	} {
		msg, done, err := rolloutStatus(tc.obj, tc.stale)
		if !strings.Contains(msg, tc.msg) || done != tc.done || (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("%s: %q %v %v", tc.name, msg, done, err)
		}
		if err != nil && !errors.Is(err, ErrRolloutFailed) {
			t.Errorf("%s: %v is not ErrRolloutFailed", tc.name, err)
		}
	}
	timedOut := &RolloutError{Reason: reasonTimeout}
	if !errors.Is(timedOut, ErrWaitTimeout) || !errors.Is(timedOut, ErrRolloutFailed) {
		t.Error("a timed-out rollout matches neither ErrWaitTimeout nor ErrRolloutFailed")
	}
}

func TestCommand(t *testing.T) {
	s := &step{req: &event.StepRequested{RunID: "r", StepID: "s", Attempt: 2, Command: "echo $X", Env: map[string]string{"B": "2", "A": "1 1"}}}
	argv, err := s.command()
	if err != nil || fmt.Sprintf("%q", argv) != `["env" "ANSFLOW_ATTEMPT=r.s.2" "A=1 1" "B=2" "sh" "-c" "echo $X"]` {
		t.Errorf("argv %q %v", argv, err)
	}
	s = &step{req: &event.StepRequested{RunID: "r", StepID: "s", Attempt: 1}, cfg: &steps.K8sExecConfig{Command: []string{"ls", "-l"}}}
	if argv, err := s.command(); err != nil || fmt.Sprint(argv) != "[env ANSFLOW_ATTEMPT=r.s.1 ls -l]" {
		t.Errorf("config command: %q %v", argv, err)
	}
	s = &step{req: &event.StepRequested{Command: "x", Env: map[string]string{"BAD NAME": "1"}}}
	if _, err := s.command(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("bad env name: %v", err)
	}
	s = &step{req: &event.StepRequested{}}
	if _, err := s.command(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("no command: %v", err)
	}
	s = &step{req: &event.StepRequested{Env: map[string]string{"TOKEN": "s3cret"}}}
	if got := s.redactEnv("cmd wait: env TOKEN=s3cret sh -c x: exit status 1"); strings.Contains(got, "s3cret") {
		t.Errorf("not redacted: %s", got)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		ok   bool
	}{
		{utilexec.CodeExitError{Err: errors.New("command terminated with exit code 7"), Code: 7}, 7, true},
		{fmt.Errorf("stream: %w", utilexec.CodeExitError{Err: errors.New("x"), Code: 2}), 2, true},
		{errors.New("Internal error occurred: error executing command in container: cmd wait: sh -c exit 3: exit status 3"), 3, true},
		{errors.New("connection refused"), 0, false},
	} {
		code, ok := exitCode(tc.err)
		if code != tc.code || ok != tc.ok {
			t.Errorf("exitCode(%v) = %d %v", tc.err, code, ok)
		}
	}
}

func TestResolveBuiltins(t *testing.T) {
	e := &Engine{}
	for _, name := range []string{"deployment", "Deployment", "deployments", "deploy", "deployments.apps"} {
		k, err := e.resolve(name, "")
		if err != nil || k != kindDeployment {
			t.Errorf("resolve(%q) = %v %v", name, k, err)
		}
	}
	if k, err := e.resolve("sts", "apps/v1"); err != nil || k != kindStatefulSet {
		t.Errorf("sts: %v %v", k, err)
	}
	if _, err := e.resolve("", ""); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("empty: %v", err)
	}
}
