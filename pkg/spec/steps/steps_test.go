package steps

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestTypesServeEditors checks what the API serves: every step type, its
// config key, and fields with types, defaults, enums and help.
func TestTypesServeEditors(t *testing.T) {
	types := Types()
	if got := len(types); got != 10 {
		t.Fatalf("%d step types, want 10", got)
	}
	b, err := json.Marshal(types)
	if err != nil {
		t.Fatal(err)
	}
	var back []StepType
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	scale, _ := Lookup("k8s_scale")
	if scale.ConfigKey != "k8s_config" || scale.Kind != "k8s" || scale.Fields[0].Key != "replicas" || !scale.Fields[0].Required ||
		scale.Fields[0].Type != TypeInteger || *scale.Fields[0].Max != 1<<31-1 {
		t.Errorf("k8s_scale: %+v", scale)
	}
	var walk func(st string, fs []Field)
	walk = func(st string, fs []Field) {
		for _, f := range fs {
			if f.Help == "" {
				t.Errorf("%s.%s has no help text", st, f.Key)
			}
			if f.Type == TypeEnum && len(f.Enum) == 0 {
				t.Errorf("%s.%s: enum without values", st, f.Key)
			}
			walk(st+"."+f.Key, f.Fields)
			if f.Items != nil {
				walk(st+"."+f.Key+"[]", f.Items.Fields)
			}
		}
	}
	for _, st := range types {
		if st.Help == "" || (st.ConfigKey != "docker_config" && st.ConfigKey != "k8s_config") {
			t.Errorf("%s: %+v", st.Name, st)
		}
		walk(st.Name, st.Fields)
	}
	// the copy is the caller's
	types[0].Fields[0].Key = "changed"
	if Types()[0].Fields[0].Key == "changed" {
		t.Error("Types returns shared state")
	}
}

func TestDecodeAppliesDefaults(t *testing.T) {
	run, err := Decode[DockerRunConfig](nil)
	if err != nil || !run.Remove || run.Privileged || run.Command != nil {
		t.Errorf("docker_run defaults: %+v %v", run, err)
	}
	del, err := Decode[K8sDeleteConfig](map[string]any{"wait": "false", "timeout": float64(30)})
	if err != nil || del.Wait || del.ResourceType != "deployment" || del.PropagationPolicy != "Background" || del.Timeout != 30*time.Second {
		t.Errorf("k8s_delete: %+v %v", del, err)
	}
	run, err = Decode[DockerRunConfig](map[string]any{"environment": []any{"A=1", "B=x=y"}, "entrypoint": "tini", "command": []any{"ls", float64(1)}})
	if err != nil || !reflect.DeepEqual(run.Environment, map[string]string{"A": "1", "B": "x=y"}) ||
		!reflect.DeepEqual(run.Entrypoint, []string{"tini"}) || !reflect.DeepEqual(run.Command, []string{"ls", "1"}) {
		t.Errorf("docker_run: %+v %v", run, err)
	}
	logs, err := Decode[K8sLogsConfig](map[string]any{"since": "2026-01-02T03:04:05Z"})
	if err != nil || logs.Since.Time.Year() != 2026 || logs.Since.Ago != 0 {
		t.Errorf("since: %+v %v", logs.Since, err)
	}
	_, err = Decode[K8sScaleConfig](map[string]any{"replicas": "{{n}}"})
	if fe, ok := err.(*FieldError); !ok || fe.Path != "replicas" || !strings.Contains(fe.Msg, `must be an integer, got "{{n}}"`) {
		t.Errorf("an engine gets resolved values: a template is an error there: %v", err)
	}
	if errs := Check("k8s_scale", map[string]any{"replicas": "{{n}}"}); len(errs) != 0 {
		t.Errorf("validation defers templates: %v", errs)
	}
}

func TestDecodeRejectsForeignTypes(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Decode of a type that is no step config did not panic")
		}
	}()
	Decode[struct{ X int }](nil)
}

// TestFailuresNameKnownTypes: every failure of the reference applies to a
// step type or runner kind that exists, every step type lists some, and
// every type's settings examples are real errors of [Check].
func TestFailuresNameKnownTypes(t *testing.T) {
	for _, f := range failures {
		for _, ty := range f.types {
			if _, ok := registry[ty]; !ok && ty != "*" && ty != "docker" && ty != "k8s" {
				t.Errorf("failure %q names %q, neither a step type nor a runner kind", f.Message, ty)
			}
		}
	}
	for _, ty := range Types() {
		if len(ty.Failures) < 4 {
			t.Errorf("%s lists %d failures", ty.Name, len(ty.Failures))
		}
		errs := SettingsErrors(ty.Name)
		if len(errs) == 0 || !strings.Contains(errs[len(errs)-1], "unknown key") {
			t.Errorf("%s: settings errors %q, want at least the unknown key", ty.Name, errs)
		}
	}
}
