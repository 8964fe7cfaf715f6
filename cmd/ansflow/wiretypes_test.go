package main

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestTheCLITalksInWireTypes: the CLI's client commands use the REST
// API's types (package apiv1), never the pipeline service's storage or
// handler packages. Only the files that assemble the embedded stack
// (`ansflow up`, `ansflow run`) may import the service, to start it.
func TestTheCLITalksInWireTypes(t *testing.T) {
	forbidden := []string{
		"github.com/ansflow/ansflow/services/pipeline/store",
		"github.com/ansflow/ansflow/services/pipeline/api",
	}
	assembles := map[string]bool{"stack.go": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if path == bad && !assembles[name] {
					t.Errorf("%s imports %s: a client command uses the API's wire types (pkg/apiv1)", fset.Position(imp.Pos()), path)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked %d files; run from the cmd/ansflow folder", checked)
	}
}
