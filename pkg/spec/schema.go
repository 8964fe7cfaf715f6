package spec

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

//go:generate go run ./internal/gendocs -schema ../../docs/pipeline.schema.json -steps ../../docs/steps.md

// schemaBase is the hand-written part of the pipeline file's JSON Schema:
// everything but the step types' settings, which [JSONSchema] adds from
// their definitions.
//
//go:embed schema_base.json
var schemaBase []byte

// JSONSchema returns the JSON Schema of a pipeline file, as checked in at
// docs/pipeline.schema.json: schema_base.json with, for each step type, the
// schema of its docker_config or k8s_config derived from pkg/spec/steps.
func JSONSchema() ([]byte, error) {
	var s map[string]any
	if err := json.Unmarshal(schemaBase, &s); err != nil {
		return nil, fmt.Errorf("schema_base.json: %w", err)
	}
	defs, _ := s["$defs"].(map[string]any)
	step, _ := defs["step"].(map[string]any)
	props, _ := step["properties"].(map[string]any)
	if props == nil {
		return nil, fmt.Errorf("schema_base.json: no $defs.step.properties")
	}
	var names []any
	var all []any
	for _, t := range steps.Types() {
		names = append(names, t.Name)
		ref := t.Name + "_config"
		defs[ref] = steps.ConfigSchema(t.Name)
		other := "k8s_config"
		if t.ConfigKey == "k8s_config" {
			other = "docker_config"
		}
		then := map[string]any{"properties": map[string]any{
			t.ConfigKey: map[string]any{"$ref": "#/$defs/" + ref},
			other:       map[string]any{"type": "object", "maxProperties": 0},
		}}
		if steps.NeedsConfig(t.Name) {
			then["required"] = []any{t.ConfigKey}
		}
		all = append(all, map[string]any{
			"if":   map[string]any{"properties": map[string]any{"type": map[string]any{"const": t.Name}}, "required": []any{"type"}},
			"then": then,
		})
	}
	props["type"] = map[string]any{"enum": names}
	step["allOf"] = all
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return nil, fmt.Errorf("encode the schema: %w", err)
	}
	return b.Bytes(), nil
}
