package steps

import "time"

// The config structs below are the single source of every step type's
// settings. Struct tags say, per field:
//
//   - json: the key in docker_config or k8s_config;
//   - step:"required": the key must be set;
//   - default: the value an unset key takes, written as YAML would (the
//     decoder applies it, so engines never repeat it);
//   - enum: the comma-separated values allowed (matched ignoring case and
//     normalised to the spelling given here);
//   - min, max: bounds of an integer;
//   - oneof: a group name; exactly one field of the group must be set;
//   - type: "command" or "yaml" for an untyped (any) field;
//   - help: one sentence for the reference and the form editor.
//
// A field whose default depends on another field or on the runner has no
// default tag: it is a pointer (or a zero value) and its help text says
// what the engine does when it is unset.

// DockerBuildConfig is docker_build's docker_config.
type DockerBuildConfig struct {
	Dockerfile string            `json:"dockerfile" help:"Path of the Dockerfile, relative to the run's source; default: Dockerfile in the context."`
	Context    string            `json:"context" default:"." help:"Directory of the run's source sent to the builder as the build context."`
	BuildArgs  map[string]string `json:"build_args" help:"Build-time variables (ARG) by name."`
	Target     string            `json:"target" help:"Stage of a multi-stage Dockerfile to build."`
	Labels     map[string]string `json:"labels" help:"Labels set on the built image."`
	NoCache    bool              `json:"no_cache" default:"false" help:"Build without the builder's layer cache."`
	CacheFrom  []string          `json:"cache_from" help:"Images whose layers the build may reuse."`
	Platform   string            `json:"platform" help:"Target platform such as linux/amd64."`
	Pull       bool              `json:"pull" default:"false" help:"Always pull newer versions of the base images."`
	Network    string            `json:"network" help:"Network of the build's RUN instructions (default: the Docker Engine's); host needs the runner's policy."`
}

// DockerRunConfig is docker_run's docker_config.
type DockerRunConfig struct {
	Command     any               `json:"command" type:"command" help:"Command when the step has no command of its own: a string runs in /bin/sh -c, a list is the argument vector."`
	Entrypoint  []string          `json:"entrypoint" help:"Entrypoint replacing the image's; a string command is then passed to it as /bin/sh -c COMMAND."`
	Environment map[string]string `json:"environment" help:"Environment variables of the container (a map, or a list of KEY=VALUE)."`
	Workdir     string            `json:"workdir" help:"Absolute working directory in the container (default: the image's, or the source mount with mount_source)."`
	User        string            `json:"user" help:"User (and group) the command runs as, such as 1000:1000."`
	Volumes     []string          `json:"volumes" help:"Volumes as SOURCE:TARGET[:OPTIONS]; SOURCE is a named volume, a path of the run's source (./...) or a host path the runner's policy allows."`
	Network     string            `json:"network" help:"Network of the container (default: the runner's); host needs the runner's policy."`
	Remove      bool              `json:"remove" default:"true" help:"Remove the container when it exits."`
	MountSource bool              `json:"mount_source" default:"false" help:"Mount the run's source at the working directory."`
	Privileged  bool              `json:"privileged" default:"false" help:"Run the container privileged; refused unless the runner's policy allows it."`
}

// DockerPushConfig is docker_push's docker_config.
type DockerPushConfig struct {
	RegistryURL string `json:"registry_url" help:"Registry to push to when the step names no docker_registry (a catalogue entry's URL wins)."`
	Repository  string `json:"repository" help:"Repository path in the registry replacing the image's own."`
}

// DockerPullConfig is docker_pull's docker_config.
type DockerPullConfig struct {
	RegistryURL string `json:"registry_url" help:"Registry to pull from when the step names no docker_registry (a catalogue entry's URL wins)."`
	Repository  string `json:"repository" help:"Repository path in the registry replacing the image's own."`
	Platform    string `json:"platform" help:"Platform of the image to pull, such as linux/arm64."`
}

// K8sDeployConfig is k8s_deploy's k8s_config: exactly one of
// deployment_spec, manifest and manifest_file says what to apply.
type K8sDeployConfig struct {
	DeploymentSpec    *DeploymentSpec `json:"deployment_spec" oneof:"what" help:"A Deployment (and, with ports, a Service) named by the step's k8s_resource_name."`
	Manifest          any             `json:"manifest" type:"yaml" oneof:"what" help:"Kubernetes objects to apply: YAML text, or objects (a mapping or a list) written in the pipeline."`
	ManifestFile      string          `json:"manifest_file" oneof:"what" help:"File or directory of manifests in the run's source."`
	RollbackOnFailure bool            `json:"rollback_on_failure" default:"false" help:"Roll a failed rollout back to the previous revision (needs wait)."`
	Wait              *bool           `json:"wait" help:"Wait for the rollout to finish; default: the value of rollback_on_failure."`
	Timeout           time.Duration   `json:"timeout" help:"Bound of the wait (default: the runner's wait timeout)."`
	FieldManager      string          `json:"field_manager" help:"Server-side apply field manager (default: the runner's)."`
}

// DeploymentSpec is k8s_deploy's deployment_spec: the original report's
// keys (replicas, image, ports, environment) plus resources, labels, probes
// and a few workload settings.
type DeploymentSpec struct {
	Replicas                *int64            `json:"replicas" min:"0" help:"Replicas of the Deployment; unset leaves the count to the cluster (1 on creation)."`
	Image                   string            `json:"image" help:"Image of the container; default: the step's docker_image."`
	Ports                   []PortSpec        `json:"ports" help:"Ports the container listens on; a Service of the resource's name exposes them."`
	Environment             map[string]string `json:"environment" help:"Environment variables of the container."`
	Resources               *ResourcesSpec    `json:"resources" help:"Compute resource requests and limits."`
	Labels                  map[string]string `json:"labels" help:"Labels added to the Deployment, its pods and the Service; app always equals the resource name."`
	Probes                  map[string]Probe  `json:"probes" help:"Probes by kind: readiness, liveness or startup."`
	Container               string            `json:"container" help:"Name of the container (default: the resource name)."`
	Command                 []string          `json:"command" help:"Entrypoint replacing the image's."`
	Args                    []string          `json:"args" help:"Arguments replacing the image's."`
	ImagePullPolicy         string            `json:"image_pull_policy" enum:"Always,IfNotPresent,Never" help:"When the kubelet pulls the image."`
	ProgressDeadlineSeconds *int64            `json:"progress_deadline_seconds" min:"1" help:"Seconds after which a stuck rollout is reported as ProgressDeadlineExceeded (Kubernetes' default: 600)."`
	ServiceType             string            `json:"service_type" enum:"ClusterIP,NodePort,LoadBalancer" help:"Type of the Service (default ClusterIP); needs ports."`
}

// PortSpec is one entry of deployment_spec.ports.
type PortSpec struct {
	ContainerPort int64  `json:"container_port" step:"required" min:"1" max:"65535" help:"Port the container listens on."`
	Protocol      string `json:"protocol" enum:"TCP,UDP,SCTP" help:"Protocol (default TCP)."`
	ServicePort   int64  `json:"service_port" min:"1" max:"65535" help:"Port of the Service (default: the container port)."`
	Name          string `json:"name" help:"Name of the port (default: protocol-port, such as tcp-8080)."`
}

// ResourcesSpec is deployment_spec.resources.
type ResourcesSpec struct {
	Requests map[string]string `json:"requests" help:"Resources the container is guaranteed, such as cpu: 100m, memory: 128Mi."`
	Limits   map[string]string `json:"limits" help:"Resources the container may use at most."`
}

// Probe is one entry of deployment_spec.probes; exactly one of http_get,
// tcp_socket, exec and grpc is set.
type Probe struct {
	HTTPGet             *HTTPGetProbe `json:"http_get" oneof:"check" help:"An HTTP GET that must answer 200-399."`
	TCPSocket           *PortProbe    `json:"tcp_socket" oneof:"check" help:"A TCP connection that must open."`
	Exec                *ExecProbe    `json:"exec" oneof:"check" help:"A command in the container that must exit 0."`
	GRPC                *GRPCProbe    `json:"grpc" oneof:"check" help:"A gRPC health check that must report SERVING."`
	InitialDelaySeconds *int64        `json:"initial_delay_seconds" min:"0" help:"Seconds after the container starts before the first probe."`
	PeriodSeconds       *int64        `json:"period_seconds" min:"0" help:"Seconds between probes."`
	TimeoutSeconds      *int64        `json:"timeout_seconds" min:"0" help:"Seconds a probe may take."`
	SuccessThreshold    *int64        `json:"success_threshold" min:"0" help:"Consecutive successes that count as passing."`
	FailureThreshold    *int64        `json:"failure_threshold" min:"0" help:"Consecutive failures that count as failing."`
}

// HTTPGetProbe is a probe's http_get.
type HTTPGetProbe struct {
	Path   string `json:"path" help:"Path requested (default /)."`
	Port   string `json:"port" step:"required" help:"Port number or name."`
	Scheme string `json:"scheme" enum:"HTTP,HTTPS" help:"Scheme (default HTTP)."`
}

// PortProbe is a probe's tcp_socket.
type PortProbe struct {
	Port string `json:"port" step:"required" help:"Port number or name."`
}

// ExecProbe is a probe's exec.
type ExecProbe struct {
	Command []string `json:"command" step:"required" help:"Argument vector run in the container."`
}

// GRPCProbe is a probe's grpc.
type GRPCProbe struct {
	Port int64 `json:"port" step:"required" min:"1" max:"65535" help:"Port of the gRPC server."`
}

// K8sScaleConfig is k8s_scale's k8s_config.
type K8sScaleConfig struct {
	Replicas     int64         `json:"replicas" step:"required" min:"0" max:"2147483647" help:"Replicas to scale the resource to."`
	ResourceType string        `json:"resource_type" default:"deployment" help:"Kind to scale: deployment, statefulset, replicaset or any kind with a scale subresource."`
	Wait         bool          `json:"wait" default:"false" help:"Wait until exactly that many replicas are ready."`
	Timeout      time.Duration `json:"timeout" help:"Bound of the wait (default: the runner's wait timeout)."`
	FieldManager string        `json:"field_manager" help:"Server-side apply field manager (default: the runner's)."`
}

// K8sDeleteConfig is k8s_delete's k8s_config.
type K8sDeleteConfig struct {
	ResourceType      string        `json:"resource_type" default:"deployment" help:"Kind to delete, any kind the cluster serves."`
	APIVersion        string        `json:"api_version" help:"API group and version when the kind is ambiguous, such as apps/v1."`
	PropagationPolicy string        `json:"propagation_policy" enum:"Background,Foreground,Orphan" default:"Background" help:"What happens to the objects the deleted one owns."`
	Wait              bool          `json:"wait" default:"true" help:"Wait until the objects are gone."`
	Timeout           time.Duration `json:"timeout" help:"Bound of the wait (default: the runner's wait timeout)."`
	LabelSelector     string        `json:"label_selector" help:"Delete every object of the kind matching this selector instead of the named one."`
}

// K8sWaitConfig is k8s_wait's k8s_config.
type K8sWaitConfig struct {
	ResourceType      string        `json:"resource_type" help:"Kind to watch; default: pod with pod_selector, else deployment."`
	APIVersion        string        `json:"api_version" help:"API group and version when the kind is ambiguous."`
	Condition         string        `json:"condition" help:"What to wait for: available, ready, complete, deleted, or Type=Status on any kind (default: the kind's own)."`
	Timeout           time.Duration `json:"timeout" help:"Bound of the wait (default: the runner's wait timeout)."`
	PodSelector       string        `json:"pod_selector" help:"Wait for the pods matching this label selector instead of the named resource."`
	RollbackOnFailure bool          `json:"rollback_on_failure" default:"false" help:"Roll a Deployment whose rollout fails back to its previous revision."`
}

// K8sExecConfig is k8s_exec's k8s_config.
type K8sExecConfig struct {
	Pod         string        `json:"pod" help:"Pod to run the command in."`
	PodSelector string        `json:"pod_selector" help:"Label selector choosing the pod (the first running one)."`
	Container   string        `json:"container" help:"Container of the pod (default: the pod's default container, else its first)."`
	Command     any           `json:"command" type:"command" help:"Command when the step has no command of its own: a string runs in sh -c, a list is the argument vector."`
	Timeout     time.Duration `json:"timeout" help:"Bound of the command (default: the step's own timeout)."`
}

// K8sLogsConfig is k8s_logs's k8s_config.
type K8sLogsConfig struct {
	Pod         string        `json:"pod" help:"Pod whose logs are read."`
	PodSelector string        `json:"pod_selector" help:"Label selector choosing the pods."`
	Container   string        `json:"container" help:"Container of each pod (default: the pod's default container, else its first)."`
	TailLines   *int64        `json:"tail_lines" min:"0" help:"Read only the last lines of each container's log."`
	Since       Since         `json:"since" help:"Read only lines newer than a duration (10m, or seconds) or an RFC 3339 time."`
	Follow      bool          `json:"follow" default:"false" help:"Keep streaming until the containers stop, or for timeout."`
	Timeout     time.Duration `json:"timeout" help:"With follow, stream this long and then succeed."`
	Previous    bool          `json:"previous" default:"false" help:"Read the previous instance of a restarted container."`
}

// Since is a point in time given either as an RFC 3339 time or as a
// duration back from now; the zero value means unset.
type Since struct {
	// Time is set when an RFC 3339 time was given.
	Time time.Time
	// Ago is set when a duration was given.
	Ago time.Duration
}

// IsZero reports whether s is unset.
func (s Since) IsZero() bool { return s.Time.IsZero() && s.Ago == 0 }
