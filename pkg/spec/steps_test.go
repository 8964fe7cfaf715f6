package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// TestGeneratedFilesAreCurrent fails when docs/pipeline.schema.json or
// docs/steps.md differ from what the step definitions generate.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	schema, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string][]byte{
		"../../docs/pipeline.schema.json": schema,
		"../../docs/steps.md":             []byte(steps.Markdown()),
	} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `go generate ./pkg/spec`", file)
		}
	}
}

// compileSchema compiles the generated pipeline schema.
func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	raw, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("pipeline.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("pipeline.schema.json")
	if err != nil {
		t.Fatalf("schema does not compile: %v", err)
	}
	return sch
}

// sample is a value of a field's type, and what an engine decodes it to.
type sample struct {
	value any
	want  any
}

// good returns a valid value of f.
func good(f steps.Field) sample {
	switch f.Type {
	case steps.TypeString:
		return sample{"some value", "some value"}
	case steps.TypeInteger:
		n := int64(7)
		if f.Max != nil && *f.Max < n {
			n = *f.Max
		}
		if f.Min != nil && *f.Min > n {
			n = *f.Min
		}
		return sample{n, n}
	case steps.TypeBoolean:
		b := f.Default != true
		return sample{b, b}
	case steps.TypeDuration:
		return sample{"90s", 90 * time.Second}
	case steps.TypeEnum:
		v := f.Enum[len(f.Enum)-1]
		return sample{strings.ToLower(v), v}
	case steps.TypeList:
		if f.Items.Type == steps.TypeObject {
			o := minimal(f.Items.Fields, "")
			return sample{[]any{o}, nil}
		}
		return sample{[]any{"a", "b"}, []string{"a", "b"}}
	case steps.TypeMap:
		if f.Items.Type == steps.TypeObject {
			return sample{map[string]any{"readiness": minimal(f.Items.Fields, "")}, nil}
		}
		return sample{map[string]any{"K": "v"}, map[string]string{"K": "v"}}
	case steps.TypeCommand:
		return sample{[]any{"echo", "hi"}, []string{"echo", "hi"}}
	case steps.TypeYAML:
		return sample{"kind: List\napiVersion: v1\nitems: []\n", "kind: List\napiVersion: v1\nitems: []\n"}
	case steps.TypeSince:
		return sample{"10m", steps.Since{Ago: 10 * time.Minute}}
	case steps.TypeObject:
		return sample{minimal(f.Fields, ""), nil}
	}
	panic("no sample for type " + f.Type)
}

// bad returns values of the wrong type (or out of bounds) for f.
func bad(f steps.Field) []any {
	switch f.Type {
	case steps.TypeString:
		return []any{map[string]any{"a": 1}, []any{"a"}}
	case steps.TypeInteger:
		out := []any{"five", 1.5, map[string]any{"a": 1}}
		if f.Min != nil {
			out = append(out, *f.Min-1)
		}
		if f.Max != nil {
			out = append(out, *f.Max+1)
		}
		return out
	case steps.TypeBoolean:
		return []any{"maybe", 3, []any{true}}
	case steps.TypeDuration:
		return []any{"soon", -5, map[string]any{"s": 1}}
	case steps.TypeEnum:
		return []any{"nonsense", 3}
	case steps.TypeList:
		return []any{map[string]any{"a": "b"}, 5}
	case steps.TypeMap:
		return []any{5, "text"}
	case steps.TypeCommand:
		return []any{map[string]any{"a": "b"}, 5}
	case steps.TypeYAML:
		return []any{5, true}
	case steps.TypeSince:
		return []any{"yesterday", -3}
	case steps.TypeObject:
		return []any{"text", []any{"a"}}
	}
	panic("no sample for type " + f.Type)
}

// minimal returns the smallest valid mapping of fields: its required keys
// and one key of each one-of group, except the group of except, which the
// caller sets.
func minimal(fields []steps.Field, except string) map[string]any {
	out := map[string]any{}
	done := map[string]bool{}
	for _, f := range fields {
		if f.Key == except {
			if f.OneOf != "" {
				done[f.OneOf] = true
			}
			continue
		}
		if f.Required {
			out[f.Key] = good(f).value
		}
	}
	for _, f := range fields {
		if f.OneOf != "" && !done[f.OneOf] && f.Key != except {
			done[f.OneOf] = true
			out[f.Key] = good(f).value
		}
	}
	return out
}

// fieldCase is one field somewhere in a step type's settings.
type fieldCase struct {
	path  []any // from the config mapping: keys and list indexes
	field steps.Field
	// wrap puts a value of the field into a whole config mapping.
	wrap func(v any) map[string]any
}

func (c fieldCase) name() string {
	var b strings.Builder
	for i, p := range c.path {
		switch p := p.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", p)
		case string:
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(p)
		}
	}
	return b.String()
}

// cases lists every field of fields, nested ones included.
func cases(fields []steps.Field, path []any, wrap func(map[string]any) map[string]any) []fieldCase {
	var out []fieldCase
	for _, f := range fields {
		p := append(append([]any{}, path...), f.Key)
		w := func(v any) map[string]any {
			m := minimal(fields, f.Key)
			m[f.Key] = v
			return wrap(m)
		}
		out = append(out, fieldCase{path: p, field: f, wrap: w})
		switch {
		case f.Type == steps.TypeObject:
			out = append(out, cases(f.Fields, p, func(m map[string]any) map[string]any { return w(m) })...)
		case f.Type == steps.TypeList && f.Items.Type == steps.TypeObject:
			out = append(out, cases(f.Items.Fields, append(p, 0), func(m map[string]any) map[string]any { return w([]any{m}) })...)
		case f.Type == steps.TypeMap && f.Items.Type == steps.TypeObject:
			out = append(out, cases(f.Items.Fields, append(p, "readiness"), func(m map[string]any) map[string]any { return w(map[string]any{"readiness": m}) })...)
		}
	}
	return out
}

// pipelineFile is a one-step pipeline of type typ with cfg.
func pipelineFile(t *testing.T, typ, configKey string, cfg map[string]any) []byte {
	t.Helper()
	step := map[string]any{"name": "s", "type": typ, configKey: cfg}
	if typ == "docker_build" {
		step["docker_image"] = "img"
	}
	b, err := yaml.Marshal(map[string]any{"pipeline": map[string]any{
		"name": "p", "variables": map[string]any{"v": "1"}, "steps": []any{step}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// lineOf returns the line of the key (or item) at path in the YAML doc.
func lineOf(t *testing.T, doc []byte, path []any) int {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil {
		t.Fatal(err)
	}
	n, line := root.Content[0], 0
	for _, p := range path {
		switch p := p.(type) {
		case string:
			found := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == p {
					line, n, found = n.Content[i].Line, n.Content[i+1], true
					break
				}
			}
			if !found {
				t.Fatalf("no %q in %s", p, doc)
			}
		case int:
			n = n.Content[p]
			line = n.Line
		}
	}
	return line
}

// asJSON turns YAML-decoded data into what the schema validator and the
// engines (which receive JSON events) see.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// engineConfig is cfg as an engine receives it: JSON-decoded.
func engineConfig(t *testing.T, cfg map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// decodedAt returns the value at path in the decoded config struct v.
func decodedAt(t *testing.T, v reflect.Value, path []any) reflect.Value {
	t.Helper()
	for _, p := range path {
		for v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}
			}
			v = v.Elem()
		}
		switch p := p.(type) {
		case int:
			v = v.Index(p)
		case string:
			if v.Kind() == reflect.Map {
				v = v.MapIndex(reflect.ValueOf(p))
				continue
			}
			found := false
			for i := 0; i < v.NumField(); i++ {
				if strings.Split(v.Type().Field(i).Tag.Get("json"), ",")[0] == p {
					v, found = v.Field(i), true
					break
				}
			}
			if !found {
				t.Fatalf("decoded struct %s has no key %q", v.Type(), p)
			}
		}
	}
	for v.Kind() == reflect.Pointer && !v.IsNil() {
		v = v.Elem()
	}
	return v
}

// TestStepFieldsAgree proves that the validator, the JSON Schema and the
// engines' decoder agree on every field of every step type: a valid value
// passes validation and the schema and decodes to the typed struct the
// engines use, with that value; a template passes both; a wrongly typed
// value is refused by the validator at its file:line and field, by the
// schema and by the engines' decoder.
func TestStepFieldsAgree(t *testing.T) {
	sch := compileSchema(t)
	n := 0
	for _, st := range steps.Types() {
		root := func(m map[string]any) map[string]any { return m }
		for _, c := range cases(st.Fields, nil, root) {
			t.Run(st.Name+"/"+c.name(), func(t *testing.T) {
				n++
				g := good(c.field)
				cfg := c.wrap(g.value)
				doc := pipelineFile(t, st.Name, st.ConfigKey, cfg)
				if _, err := Parse("p.yaml", doc); err != nil {
					t.Fatalf("valid value refused by the validator: %v\n%s", err, doc)
				}
				var data any
				yaml.Unmarshal(doc, &data)
				if err := sch.Validate(asJSON(t, data)); err != nil {
					t.Fatalf("valid value refused by the schema: %v\n%s", err, doc)
				}
				out, err := steps.DecodeType(st.Name, engineConfig(t, cfg))
				if err != nil {
					t.Fatalf("valid value refused by the engines' decoder: %v", err)
				}
				if g.want != nil {
					got := decodedAt(t, reflect.ValueOf(out), c.path)
					if !got.IsValid() || !reflect.DeepEqual(got.Interface(), g.want) {
						t.Errorf("decoded %v, want %#v", got, g.want)
					}
				}

				if scalar := map[string]bool{steps.TypeInteger: true, steps.TypeBoolean: true, steps.TypeDuration: true,
					steps.TypeEnum: true, steps.TypeString: true, steps.TypeSince: true}; scalar[c.field.Type] {
					doc := pipelineFile(t, st.Name, st.ConfigKey, c.wrap("{{v}}"))
					if _, err := Parse("p.yaml", doc); err != nil {
						t.Errorf("template refused by the validator: %v", err)
					}
					var data any
					yaml.Unmarshal(doc, &data)
					if err := sch.Validate(asJSON(t, data)); err != nil {
						t.Errorf("template refused by the schema: %v", err)
					}
				}

				field := "pipeline.steps[0]." + st.ConfigKey + "." + c.name()
				for _, b := range bad(c.field) {
					cfg := c.wrap(b)
					doc := pipelineFile(t, st.Name, st.ConfigKey, cfg)
					_, err := Parse("p.yaml", doc)
					var es Errors
					if !errors.As(err, &es) {
						t.Errorf("%#v accepted by the validator", b)
						continue
					}
					want := lineOf(t, doc, append([]any{"pipeline", "steps", 0, st.ConfigKey}, c.path...))
					found := false
					for _, e := range es {
						if e.Field == field && e.Line == want && e.File == "p.yaml" {
							found = true
						}
					}
					if !found {
						t.Errorf("%#v: want an error at p.yaml:%d: %s, got %v", b, want, field, err)
					}
					var data any
					yaml.Unmarshal(doc, &data)
					if err := sch.Validate(asJSON(t, data)); err == nil {
						t.Errorf("%#v accepted by the schema", b)
					}
					if _, err := steps.DecodeType(st.Name, engineConfig(t, cfg)); err == nil {
						t.Errorf("%#v accepted by the engines' decoder", b)
					}
				}
			})
		}
	}
	if n < 60 {
		t.Errorf("only %d fields checked", n)
	}
}

// TestSchemaHasEveryField checks that each step type's schema has exactly
// the keys of its definition, at every level, and that an unknown key is
// refused by the schema, the validator and the decoder alike.
func TestSchemaHasEveryField(t *testing.T) {
	var schema map[string]any
	raw, _ := JSONSchema()
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	defs := schema["$defs"].(map[string]any)
	var compare func(name string, fields []steps.Field, s map[string]any)
	compare = func(name string, fields []steps.Field, s map[string]any) {
		props, _ := s["properties"].(map[string]any)
		var want, got []string
		for _, f := range fields {
			want = append(want, f.Key)
		}
		for k := range props {
			got = append(got, k)
		}
		sort.Strings(want)
		sort.Strings(got)
		if !reflect.DeepEqual(want, got) || s["additionalProperties"] != false {
			t.Errorf("%s: schema keys %v (additionalProperties %v), definition keys %v", name, got, s["additionalProperties"], want)
		}
		for _, f := range fields {
			fs, _ := props[f.Key].(map[string]any)
			var obj map[string]any
			alts, _ := fs["anyOf"].([]any)
			for _, a := range append(alts, any(fs)) {
				m, _ := a.(map[string]any)
				switch {
				case f.Type == steps.TypeObject && m["properties"] != nil:
					obj = m
				case f.Type == steps.TypeList && f.Items.Type == steps.TypeObject && m["items"] != nil:
					obj, _ = m["items"].(map[string]any)
				case f.Type == steps.TypeMap && f.Items.Type == steps.TypeObject && m["additionalProperties"] != nil:
					obj, _ = m["additionalProperties"].(map[string]any)
				}
			}
			switch {
			case f.Type == steps.TypeObject:
				compare(name+"."+f.Key, f.Fields, obj)
			case f.Items != nil && f.Items.Type == steps.TypeObject:
				compare(name+"."+f.Key+"[]", f.Items.Fields, obj)
			}
		}
	}
	sch := compileSchema(t)
	for _, st := range steps.Types() {
		def, _ := defs[st.Name+"_config"].(map[string]any)
		compare(st.Name, st.Fields, def)

		cfg := minimal(st.Fields, "")
		cfg["no_such_key"] = "x"
		doc := pipelineFile(t, st.Name, st.ConfigKey, cfg)
		if _, err := Parse("p.yaml", doc); err == nil || !strings.Contains(err.Error(), st.ConfigKey+".no_such_key: unknown key for "+st.Name) {
			t.Errorf("%s: unknown key: %v", st.Name, err)
		}
		var data any
		yaml.Unmarshal(doc, &data)
		if sch.Validate(asJSON(t, data)) == nil {
			t.Errorf("%s: the schema accepts an unknown key", st.Name)
		}
		if _, err := steps.DecodeType(st.Name, engineConfig(t, cfg)); err == nil {
			t.Errorf("%s: the decoder accepts an unknown key", st.Name)
		}
	}
}

// TestExamplesValidate: every step type has an example in docs/steps.md
// and the step-types API, and each passes the validator and the JSON
// schema as a pipeline's only step.
func TestExamplesValidate(t *testing.T) {
	schema := compileSchema(t)
	for _, st := range steps.Types() {
		if st.Example == "" {
			t.Errorf("%s has no example", st.Name)
			continue
		}
		var b strings.Builder
		b.WriteString("pipeline:\n  name: example\n  steps:\n")
		for _, line := range strings.Split(st.Example, "\n") {
			b.WriteString("    " + line + "\n")
		}
		p, err := Parse(st.Name+".yaml", []byte(b.String()))
		if err != nil {
			t.Errorf("%s's example: %v", st.Name, err)
			continue
		}
		if len(p.Steps) != 1 || p.Steps[0].Type != st.Name {
			t.Errorf("%s's example is not one %s step: %+v", st.Name, st.Name, p.Steps)
		}
		var doc any
		if err := yaml.Unmarshal([]byte(b.String()), &doc); err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(doc)
		inst, _ := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err := schema.Validate(inst); err != nil {
			t.Errorf("%s's example fails the JSON schema: %v", st.Name, err)
		}
	}
}
