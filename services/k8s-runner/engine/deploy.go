package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// Labels and annotations the engine puts on what it deploys.
const (
	appLabel           = "app"
	managedByLabel     = "app.kubernetes.io/managed-by"
	managedByValue     = "ansflow"
	runIDAnnotation    = "ansflow.io/run-id"
	pipelineAnnotation = "ansflow.io/pipeline"
)

// deployOptions are k8s_deploy's settings besides what to apply.
type deployOptions struct {
	wait     bool
	rollback bool
	timeout  time.Duration
	manager  string
}

// deploy executes k8s_deploy: exactly one of deployment_spec, manifest and
// manifest_file says what to apply.
// Which one is set the decoder has checked (steps.K8sDeployConfig).
func (s *step) deploy(ctx context.Context) (map[string]string, error) {
	c := s.cfg.(*steps.K8sDeployConfig)
	// Rolling back needs the rollout's outcome, so it implies waiting.
	opts := deployOptions{rollback: c.RollbackOnFailure, wait: c.RollbackOnFailure,
		timeout: s.timeout(c.Timeout), manager: s.fieldManager()}
	if c.Wait != nil {
		opts.wait = *c.Wait
	}
	if opts.rollback && !opts.wait {
		return nil, invalid("wait", "rollback_on_failure needs wait: true (the rollout's outcome decides the rollback)")
	}
	if c.DeploymentSpec != nil {
		return s.deploySpec(ctx, c.DeploymentSpec, opts)
	}
	return s.deployManifests(ctx, opts)
}

// deploySpec applies the Deployment (and Service) that deployment_spec
// describes, named by the step's resource name.
func (s *step) deploySpec(ctx context.Context, spec *steps.DeploymentSpec, opts deployOptions) (map[string]string, error) {
	ns, name := s.namespace(), strings.TrimSpace(s.req.ResourceName)
	if name == "" {
		return nil, fmt.Errorf("%w: k8s_deploy with deployment_spec needs k8s_resource_name (on this step or an earlier k8s step)", ErrInvalidConfig)
	}
	dep, svc, err := s.buildDeployment(spec, ns, name)
	if err != nil {
		return nil, err
	}
	if err := s.e.allowKind(kindDeployment); err != nil {
		return nil, fmt.Errorf("k8s_deploy: %w", err)
	}
	if svc != nil {
		if err := s.e.allowKind(kindService); err != nil {
			return nil, fmt.Errorf("k8s_deploy: %w", err)
		}
	}
	if err := s.checkNamespace(ctx, ns); err != nil {
		return nil, err
	}
	apps := s.e.cs.AppsV1().Deployments(ns)
	before, err := apps.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		before = nil
	case err != nil:
		return nil, s.apiErr(err, apiReq{verb: "get", resource: "deployments.apps", ns: ns, name: name})
	}
	applied, err := apps.Apply(ctx, dep, metav1.ApplyOptions{FieldManager: opts.manager, Force: true})
	if err != nil {
		return nil, s.apiErr(err, apiReq{verb: "patch", resource: "deployments.apps", ns: ns, name: name})
	}
	s.printf("deployment.apps/%s applied in namespace %s (generation %d)", name, ns, applied.Generation)
	out := map[string]string{"namespace": ns, "name": name, "kind": "Deployment"}
	if svc != nil {
		if _, err := s.e.cs.CoreV1().Services(ns).Apply(ctx, svc, metav1.ApplyOptions{FieldManager: opts.manager, Force: true}); err != nil {
			return out, s.apiErr(err, apiReq{verb: "patch", resource: "services", ns: ns, name: name})
		}
		s.printf("service/%s applied in namespace %s", name, ns)
		out["service"] = name
	}
	rev, err := s.settle(ctx, ns, name, before, opts)
	if rev > 0 {
		out["revision"] = strconv.FormatInt(rev, 10)
	}
	return out, err
}

// settle follows an applied Deployment: it waits until the controller has
// observed it (which sets its revision) or, with opts.wait, until it has
// rolled out; a failed rollout is rolled back with opts.rollback to the
// revision that was current before (before is the Deployment as it was, nil
// when it did not exist). It returns the Deployment's revision.
func (s *step) settle(ctx context.Context, ns, name string, before *appsv1.Deployment, opts deployOptions) (int64, error) {
	var stale *metav1.Time
	var prevRev int64
	if before != nil {
		stale, prevRev = staleDeadline(before), deploymentRevision(before)
	}
	if !opts.wait {
		sel := selection{kind: kindDeployment, ns: ns, name: name}
		wctx, cancel := waitCtx(ctx, opts.timeout, sel.String()+" to be observed by the deployment controller")
		defer cancel()
		var rev int64
		err := s.observe(wctx, sel, func(objs []*unstructured.Unstructured) (bool, error) {
			if len(objs) == 0 {
				return false, fmt.Errorf("%s: %w", sel, ErrNotFound)
			}
			gen, _, _ := unstructured.NestedInt64(objs[0].Object, "status", "observedGeneration")
			rev = deploymentRevision(objs[0])
			// A paused Deployment gets no new revision until resumed.
			paused, _, _ := unstructured.NestedBool(objs[0].Object, "spec", "paused")
			return gen >= objs[0].GetGeneration() && (rev > 0 || paused), nil
		})
		return rev, err
	}
	final, err := s.waitRollout(ctx, kindDeployment, ns, name, opts.timeout, stale)
	var rev int64
	if final != nil {
		rev = deploymentRevision(final)
	}
	var re *RolloutError
	if err == nil || !opts.rollback || !errors.As(err, &re) || ctx.Err() != nil {
		return rev, err
	}
	switch {
	case prevRev == 0:
		re.RollbackErr = errors.New("the deployment did not exist before this step, so there is no previous revision")
	case prevRev == rev:
		re.RollbackErr = fmt.Errorf("this step did not change the pod template (still revision %d), so there is nothing to roll back", rev)
	default:
		s.printf("rollout failed (%s); rolling back to revision %d", re.Reason, prevRev)
		re.RolledBackTo, re.RollbackErr = s.rollback(ctx, ns, name, prevRev, opts.timeout)
		if re.RollbackErr != nil {
			re.RolledBackTo = 0
		}
	}
	return rev, re
}

// buildDeployment turns deployment_spec into apply configurations of the
// Deployment and, when ports are given, of its Service.
func (s *step) buildDeployment(spec *steps.DeploymentSpec, ns, name string) (*appsv1ac.DeploymentApplyConfiguration, *corev1ac.ServiceApplyConfiguration, error) {
	image := strings.TrimSpace(spec.Image)
	if image == "" {
		image = strings.TrimSpace(s.req.Image)
	}
	if image == "" {
		return nil, nil, invalid("deployment_spec.image", "required (or a docker_image from an earlier build, pull or push step)")
	}
	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = string(v)
	}
	if v, ok := labels[appLabel]; ok && v != name {
		return nil, nil, invalid("deployment_spec.labels.app", "%q must equal the resource name %q (it is the Deployment's selector)", v, name)
	}
	labels[appLabel] = name
	podLabels := map[string]string{}
	for k, v := range labels {
		podLabels[k] = v
	}
	labels[managedByLabel] = managedByValue
	annotations := map[string]string{runIDAnnotation: s.req.RunID}
	if s.req.Pipeline != "" {
		annotations[pipelineAnnotation] = s.req.Pipeline
	}

	cname := strings.TrimSpace(spec.Container)
	if cname == "" {
		cname = name
	}
	c := corev1ac.Container().WithName(cname).WithImage(image)
	if len(spec.Command) > 0 {
		c.WithCommand(spec.Command...)
	}
	if len(spec.Args) > 0 {
		c.WithArgs(spec.Args...)
	}
	if spec.ImagePullPolicy != "" {
		switch p := corev1.PullPolicy(spec.ImagePullPolicy); p {
		case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
			c.WithImagePullPolicy(p)
		default:
			return nil, nil, invalid("deployment_spec.image_pull_policy", "%q: want Always, IfNotPresent or Never", spec.ImagePullPolicy)
		}
	}
	envNames := make([]string, 0, len(spec.Environment))
	for k := range spec.Environment {
		envNames = append(envNames, k)
	}
	sort.Strings(envNames)
	for _, k := range envNames {
		c.WithEnv(corev1ac.EnvVar().WithName(k).WithValue(string(spec.Environment[k])))
	}
	var svcPorts []*corev1ac.ServicePortApplyConfiguration
	for i, p := range spec.Ports {
		key := fmt.Sprintf("deployment_spec.ports[%d]", i)
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return nil, nil, invalid(key+".container_port", "want a port number between 1 and 65535, got %d", p.ContainerPort)
		}
		proto := corev1.Protocol(strings.ToUpper(strings.TrimSpace(p.Protocol)))
		switch proto {
		case "":
			proto = corev1.ProtocolTCP
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			return nil, nil, invalid(key+".protocol", "%q: want TCP, UDP or SCTP", p.Protocol)
		}
		sp := p.ServicePort
		if sp == 0 {
			sp = p.ContainerPort
		}
		if sp < 1 || sp > 65535 {
			return nil, nil, invalid(key+".service_port", "want a port number between 1 and 65535, got %d", sp)
		}
		pname := strings.TrimSpace(p.Name)
		if pname == "" {
			pname = fmt.Sprintf("%s-%d", strings.ToLower(string(proto)), p.ContainerPort)
		}
		cp := corev1ac.ContainerPort().WithContainerPort(int32(p.ContainerPort)).WithProtocol(proto)
		if p.Name != "" {
			cp.WithName(pname)
		}
		c.WithPorts(cp)
		svcPorts = append(svcPorts, corev1ac.ServicePort().WithName(pname).WithPort(int32(sp)).
			WithTargetPort(intstr.FromInt32(int32(p.ContainerPort))).WithProtocol(proto))
	}
	if r := spec.Resources; r != nil {
		req, err := resourceList("deployment_spec.resources.requests", r.Requests)
		if err != nil {
			return nil, nil, err
		}
		lim, err := resourceList("deployment_spec.resources.limits", r.Limits)
		if err != nil {
			return nil, nil, err
		}
		rr := corev1ac.ResourceRequirements()
		if len(req) > 0 {
			rr.WithRequests(req)
		}
		if len(lim) > 0 {
			rr.WithLimits(lim)
		}
		c.WithResources(rr)
	}
	for kind, ps := range spec.Probes {
		probe, err := buildProbe("deployment_spec.probes."+kind, ps)
		if err != nil {
			return nil, nil, err
		}
		switch kind {
		case "readiness":
			c.WithReadinessProbe(probe)
		case "liveness":
			c.WithLivenessProbe(probe)
		case "startup":
			c.WithStartupProbe(probe)
		default:
			return nil, nil, invalid("deployment_spec.probes."+kind, "unknown probe: want readiness, liveness or startup")
		}
	}

	dspec := appsv1ac.DeploymentSpec().
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{appLabel: name})).
		WithTemplate(corev1ac.PodTemplateSpec().WithLabels(podLabels).WithSpec(corev1ac.PodSpec().WithContainers(c)))
	if spec.Replicas != nil {
		if *spec.Replicas < 0 {
			return nil, nil, invalid("deployment_spec.replicas", "must not be negative")
		}
		dspec.WithReplicas(int32(*spec.Replicas))
	}
	if spec.ProgressDeadlineSeconds != nil {
		if *spec.ProgressDeadlineSeconds < 1 {
			return nil, nil, invalid("deployment_spec.progress_deadline_seconds", "must be positive")
		}
		dspec.WithProgressDeadlineSeconds(int32(*spec.ProgressDeadlineSeconds))
	}
	dep := appsv1ac.Deployment(name, ns).WithLabels(labels).WithAnnotations(annotations).WithSpec(dspec)

	if len(svcPorts) == 0 {
		if spec.ServiceType != "" {
			return nil, nil, invalid("deployment_spec.service_type", "a Service is only created when ports are given")
		}
		return dep, nil, nil
	}
	sspec := corev1ac.ServiceSpec().WithSelector(map[string]string{appLabel: name}).WithPorts(svcPorts...)
	if spec.ServiceType != "" {
		switch t := corev1.ServiceType(spec.ServiceType); t {
		case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
			sspec.WithType(t)
		default:
			return nil, nil, invalid("deployment_spec.service_type", "%q: want ClusterIP, NodePort or LoadBalancer", spec.ServiceType)
		}
	}
	svc := corev1ac.Service(name, ns).WithLabels(labels).WithAnnotations(annotations).WithSpec(sspec)
	return dep, svc, nil
}

func resourceList(key string, in map[string]string) (corev1.ResourceList, error) {
	out := corev1.ResourceList{}
	for k, v := range in {
		q, err := resource.ParseQuantity(string(v))
		if err != nil {
			return nil, invalid(key+"."+k, "%q is not a quantity (e.g. 100m, 128Mi): %v", v, err)
		}
		out[corev1.ResourceName(k)] = q
	}
	return out, nil
}

func portValue(key string, v string) (intstr.IntOrString, error) {
	s := strings.TrimSpace(v)
	if s == "" {
		return intstr.IntOrString{}, invalid(key, "required")
	}
	if n, err := strconv.Atoi(s); err == nil {
		return intstr.FromInt32(int32(n)), nil
	}
	return intstr.FromString(s), nil
}

func buildProbe(key string, ps steps.Probe) (*corev1ac.ProbeApplyConfiguration, error) {
	p := corev1ac.Probe()
	handlers := 0
	if h := ps.HTTPGet; h != nil {
		handlers++
		port, err := portValue(key+".http_get.port", h.Port)
		if err != nil {
			return nil, err
		}
		a := corev1ac.HTTPGetAction().WithPort(port)
		if h.Path != "" {
			a.WithPath(h.Path)
		}
		if h.Scheme != "" {
			a.WithScheme(corev1.URIScheme(strings.ToUpper(h.Scheme)))
		}
		p.WithHTTPGet(a)
	}
	if t := ps.TCPSocket; t != nil {
		handlers++
		port, err := portValue(key+".tcp_socket.port", t.Port)
		if err != nil {
			return nil, err
		}
		p.WithTCPSocket(corev1ac.TCPSocketAction().WithPort(port))
	}
	if e := ps.Exec; e != nil {
		handlers++
		if len(e.Command) == 0 {
			return nil, invalid(key+".exec.command", "required")
		}
		p.WithExec(corev1ac.ExecAction().WithCommand(e.Command...))
	}
	if g := ps.GRPC; g != nil {
		handlers++
		p.WithGRPC(corev1ac.GRPCAction().WithPort(int32(g.Port)))
	}
	if handlers != 1 {
		return nil, invalid(key, "want exactly one of http_get, tcp_socket, exec or grpc")
	}
	if v := ps.InitialDelaySeconds; v != nil {
		p.WithInitialDelaySeconds(int32(*v))
	}
	if v := ps.PeriodSeconds; v != nil {
		p.WithPeriodSeconds(int32(*v))
	}
	if v := ps.TimeoutSeconds; v != nil {
		p.WithTimeoutSeconds(int32(*v))
	}
	if v := ps.SuccessThreshold; v != nil {
		p.WithSuccessThreshold(int32(*v))
	}
	if v := ps.FailureThreshold; v != nil {
		p.WithFailureThreshold(int32(*v))
	}
	return p, nil
}
