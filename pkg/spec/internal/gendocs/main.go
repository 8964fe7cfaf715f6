// Command gendocs writes the files generated from the step definitions of
// pkg/spec/steps: the pipeline file's JSON Schema and the step-type
// reference. `go generate ./pkg/spec` runs it; a test in pkg/spec fails
// when the checked-in files are stale.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/pkg/spec/steps"
)

func main() {
	schema := flag.String("schema", "", "write the pipeline JSON Schema to this file")
	ref := flag.String("steps", "", "write the step-type reference (Markdown) to this file")
	flag.Parse()
	if err := run(*schema, *ref); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func run(schemaPath, refPath string) error {
	if schemaPath != "" {
		b, err := spec.JSONSchema()
		if err != nil {
			return err
		}
		if err := os.WriteFile(schemaPath, b, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", schemaPath, err)
		}
	}
	if refPath != "" {
		if err := os.WriteFile(refPath, []byte(steps.Markdown()), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", refPath, err)
		}
	}
	return nil
}
