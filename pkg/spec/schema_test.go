package spec

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

// TestSchemaAgreesWithTheParser checks docs/pipeline.schema.json against
// every pipeline file in the repository: what the parser accepts, the schema
// accepts, and a file with an unknown field is refused by both.
func TestSchemaAgreesWithTheParser(t *testing.T) {
	raw, err := os.ReadFile("../../docs/pipeline.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("pipeline.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("pipeline.schema.json")
	if err != nil {
		t.Fatalf("schema does not compile: %v", err)
	}
	toJSON := func(b []byte) any {
		var v any
		if err := yaml.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		j, _ := json.Marshal(v)
		out, _ := jsonschema.UnmarshalJSON(bytes.NewReader(j))
		return out
	}
	var files []string
	for _, g := range []string{"testdata/*.yaml", "../../services/pipeline/testdata/scenarios/*.yaml", "../../cmd/ansflow/testdata/*.yaml", "../../examples/*/*.yaml"} {
		m, _ := filepath.Glob(g)
		files = append(files, m...)
	}
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".expected.yaml") {
			continue
		}
		b, _ := os.ReadFile(f)
		if _, err := Parse(f, b); err != nil {
			continue
		}
		n++
		if err := sch.Validate(toJSON(b)); err != nil {
			t.Errorf("%s: parser accepts it, schema refuses it: %v", f, err)
		}
	}
	if n < 3 {
		t.Fatalf("only %d pipeline files checked", n)
	}
	bad := []byte("pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n      comand: ls\n")
	if err := sch.Validate(toJSON(bad)); err == nil {
		t.Error("schema accepts an unknown field")
	}
}
