// Package steps is the one typed definition of every step type's settings:
// the keys a step may set in its docker_config or k8s_config, each with its
// type, default, allowed values, required-ness and help text.
//
// The definitions are Go structs ([DockerRunConfig], [K8sScaleConfig], …)
// whose tags are read by reflection once, at start-up. Everything else is
// derived from them: pipeline validation ([Check], called by pkg/spec), the
// engines' decoding of a request's settings into the same struct
// ([Decode]), the JSON Schema of docs/pipeline.schema.json ([ConfigSchema])
// and the field list the API serves to editors ([Types]). A key that is not
// in a struct is rejected by all of them.
package steps

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Field types, the values of [Field.Type].
const (
	TypeString   = "string"   // a scalar, taken as text
	TypeInteger  = "integer"  // a whole number, or a string holding one
	TypeBoolean  = "boolean"  // true or false, or a string holding one
	TypeDuration = "duration" // a positive number of seconds, or "90s", "5m"
	TypeEnum     = "enum"     // one of [Field.Enum], matched ignoring case
	TypeList     = "list"     // a list of [Field.Items]; a single string is a list of one
	TypeMap      = "map"      // a mapping of names to [Field.Items]
	TypeObject   = "object"   // a mapping of the keys [Field.Fields]
	TypeCommand  = "command"  // a string (shell command) or a list of strings (argv)
	TypeYAML     = "yaml"     // YAML text, a mapping or a list, kept as written
	TypeSince    = "since"    // an RFC 3339 time, or a duration back from now
)

// Field describes one key of a step's settings. It is what an editor needs
// to build a form: Fields for an object, Items for a list or a map.
type Field struct {
	// Key is the setting's name in the mapping that holds it ("" for the
	// Items of a list or map).
	Key string `json:"key,omitempty"`
	// Type is one of the Type constants.
	Type string `json:"type"`
	// Help is one sentence describing the setting.
	Help string `json:"help,omitempty"`
	// Required is set when the key must be given.
	Required bool `json:"required,omitempty"`
	// Default is the value an unset key takes (string, bool or int64),
	// nil when there is none or it depends on other settings (see Help).
	Default any `json:"default,omitempty"`
	// Enum lists the allowed values of an enum.
	Enum []string `json:"enum,omitempty"`
	// Min and Max bound an integer.
	Min *int64 `json:"min,omitempty"`
	Max *int64 `json:"max,omitempty"`
	// OneOf names a group of keys of the same mapping of which exactly one
	// must be set.
	OneOf string `json:"one_of,omitempty"`
	// Items describes the elements of a list or the values of a map.
	Items *Field `json:"items,omitempty"`
	// Fields describes the keys of an object.
	Fields []Field `json:"fields,omitempty"`
}

// StepType is one step type and the settings it takes.
type StepType struct {
	// Name is the step's type, such as docker_run.
	Name string `json:"name"`
	// Kind is the runner kind executing it: docker or k8s.
	Kind string `json:"kind"`
	// ConfigKey is the step key holding its settings: docker_config or
	// k8s_config.
	ConfigKey string `json:"config_key"`
	// Help says what the step does.
	Help string `json:"help"`
	// Example is one step of the type as YAML, as a pipeline's steps list
	// holds it.
	Example string `json:"example"`
	// Fields are the keys of ConfigKey.
	Fields []Field `json:"fields"`
	// Failures are what a step of the type can report once it runs.
	Failures []Failure `json:"failures"`
}

// definition pairs a step type with its config struct.
type definition struct {
	name, kind, help string
	config           reflect.Type
}

var definitions = []definition{
	{"docker_build", "docker", "Builds docker_image:docker_tag from the run's source with the Docker Engine's builder; outputs image and image_id.", reflect.TypeFor[DockerBuildConfig]()},
	{"docker_run", "docker", "Runs a container of the step's image (or the last built one) and records its exit code; stdout and stderr are kept apart.", reflect.TypeFor[DockerRunConfig]()},
	{"docker_push", "docker", "Tags the step's image into a registry and pushes it with the runner's credentials; outputs image and digest.", reflect.TypeFor[DockerPushConfig]()},
	{"docker_pull", "docker", "Pulls the step's image, from its registry when one is named; outputs image, image_id and digest.", reflect.TypeFor[DockerPullConfig]()},
	{"k8s_deploy", "k8s", "Applies a Deployment (deployment_spec) or manifests with server-side apply and waits for the rollout when asked.", reflect.TypeFor[K8sDeployConfig]()},
	{"k8s_scale", "k8s", "Sets the replicas of the step's resource through its scale subresource; outputs replicas and previous_replicas.", reflect.TypeFor[K8sScaleConfig]()},
	{"k8s_delete", "k8s", "Deletes the step's resource, or every object matching label_selector; deleting what does not exist succeeds.", reflect.TypeFor[K8sDeleteConfig]()},
	{"k8s_wait", "k8s", "Waits for a condition of the step's resource or of the pods matching pod_selector.", reflect.TypeFor[K8sWaitConfig]()},
	{"k8s_exec", "k8s", "Runs the step's command in a container of a running pod; a non-zero exit fails the step.", reflect.TypeFor[K8sExecConfig]()},
	{"k8s_logs", "k8s", "Copies the logs of the selected pods' containers into the step's output; outputs pods and lines.", reflect.TypeFor[K8sLogsConfig]()},
}

// node is a [Field] with what decoding needs: where the value goes.
type node struct {
	Field
	typ    reflect.Type // the Go type, pointers removed
	ptr    bool         // the Go field is a pointer
	index  int          // index of the Go field in its struct
	items  *node
	fields []*node
	def    *reflect.Value // the parsed default
}

// registry is every step type, built from definitions at start-up.
var registry = map[string]*entry{}

type entry struct {
	StepType
	root *node
}

var byConfig = map[reflect.Type]*entry{}

func init() {
	for _, d := range definitions {
		root := build(Field{Key: d.name}, d.config, -1)
		e := &entry{StepType: StepType{Name: d.name, Kind: d.kind, ConfigKey: d.kind + "_config", Help: d.help, Example: examples[d.name]}, root: root}
		registry[d.name] = e
		byConfig[d.config] = e
	}
	for _, e := range registry {
		e.Failures = Failures(e.Name)
	}
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	sinceType    = reflect.TypeFor[Since]()
)

// build derives the node of Go type t (tags already read into f). It panics
// on a tag it cannot read: the definitions are code, checked by the tests.
func build(f Field, t reflect.Type, index int) *node {
	n := &node{Field: f, index: index}
	if t.Kind() == reflect.Pointer {
		n.ptr, t = true, t.Elem()
	}
	n.typ = t
	switch {
	case t == durationType:
		n.Type = TypeDuration
	case t == sinceType:
		n.Type = TypeSince
	case t.Kind() == reflect.Interface:
		if n.Type != TypeCommand && n.Type != TypeYAML {
			panic(fmt.Sprintf("steps: %s: an untyped field needs type:\"command\" or type:\"yaml\"", f.Key))
		}
	case t.Kind() == reflect.String && len(f.Enum) > 0:
		n.Type = TypeEnum
	case t.Kind() == reflect.String:
		n.Type = TypeString
	case t.Kind() == reflect.Bool:
		n.Type = TypeBoolean
	case t.Kind() == reflect.Int64:
		n.Type = TypeInteger
	case t.Kind() == reflect.Slice:
		n.Type = TypeList
		n.items = build(Field{}, t.Elem(), -1)
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		n.Type = TypeMap
		n.items = build(Field{}, t.Elem(), -1)
	case t.Kind() == reflect.Struct:
		n.Type = TypeObject
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			key := strings.Split(sf.Tag.Get("json"), ",")[0]
			if key == "" || key == "-" {
				panic(fmt.Sprintf("steps: %s.%s has no json key", t.Name(), sf.Name))
			}
			cf := Field{Key: key, Help: sf.Tag.Get("help"), Type: sf.Tag.Get("type"), OneOf: sf.Tag.Get("oneof"),
				Required: sf.Tag.Get("step") == "required"}
			if e := sf.Tag.Get("enum"); e != "" {
				cf.Enum = strings.Split(e, ",")
			}
			cf.Min, cf.Max = intTag(sf, "min"), intTag(sf, "max")
			c := build(cf, sf.Type, i)
			if d, ok := sf.Tag.Lookup("default"); ok {
				v := reflect.New(c.typ).Elem()
				dec := &decoder{}
				dec.value(c, d, v, key)
				if len(dec.errs) > 0 {
					panic(fmt.Sprintf("steps: %s.%s: default %q: %v", t.Name(), sf.Name, d, dec.errs[0]))
				}
				c.def = &v
				c.Default = v.Interface()
			}
			n.fields = append(n.fields, c)
		}
	default:
		panic(fmt.Sprintf("steps: %s: unsupported Go type %s", f.Key, t))
	}
	return n
}

func intTag(sf reflect.StructField, tag string) *int64 {
	s, ok := sf.Tag.Lookup(tag)
	if !ok {
		return nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("steps: %s: %s:%q: %v", sf.Name, tag, s, err))
	}
	return &v
}

// export copies n's description, recursively.
func export(n *node) Field {
	f := n.Field
	f.Enum = append([]string(nil), n.Enum...)
	if n.items != nil {
		it := export(n.items)
		f.Items = &it
	}
	for _, c := range n.fields {
		f.Fields = append(f.Fields, export(c))
	}
	return f
}

// Types returns every step type with its fields, in the order of
// [DockerTypes] then [K8sTypes]. The result is a fresh copy the caller may
// keep or change; it marshals to JSON as the API serves it.
func Types() []StepType {
	out := make([]StepType, 0, len(definitions))
	for _, d := range definitions {
		t, _ := Lookup(d.name)
		out = append(out, t)
	}
	return out
}

// Lookup returns the definition of stepType and whether there is one.
func Lookup(stepType string) (StepType, bool) {
	e, ok := registry[stepType]
	if !ok {
		return StepType{}, false
	}
	t := e.StepType
	t.Failures = append([]Failure(nil), e.Failures...)
	t.Fields = nil
	for _, f := range e.root.fields {
		t.Fields = append(t.Fields, export(f))
	}
	return t, true
}

// Names returns the step types of kind ("docker" or "k8s"), or every one
// for "", in definition order.
func Names(kind string) []string {
	var out []string
	for _, d := range definitions {
		if kind == "" || d.kind == kind {
			out = append(out, d.name)
		}
	}
	return out
}
