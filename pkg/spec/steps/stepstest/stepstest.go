// Package stepstest holds test helpers that keep the step-type reference
// (package steps) true to the engines.
package stepstest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// Sentinels returns the texts of the package-level sentinel errors
// (`var ErrX = errors.New("...")`) declared by the non-test Go files of
// the package in dir.
func Sentinels(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var out []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				for _, v := range spec.(*ast.ValueSpec).Values {
					if text, ok := errorsNew(v); ok {
						out = append(out, text)
					}
				}
			}
		}
	}
	return out, nil
}

// errorsNew reports the text of an errors.New("text") call.
func errorsNew(e ast.Expr) (string, bool) {
	call, ok := e.(*ast.CallExpr)
	if !ok || len(call.Args) != 1 {
		return "", false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "New" {
		return "", false
	}
	if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "errors" {
		return "", false
	}
	lit, ok := call.Args[0].(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	text, err := strconv.Unquote(lit.Value)
	return text, err == nil
}

// CheckSentinels fails t for every sentinel error of the package in dir
// (see [Sentinels]) that the step-type reference does not list among the
// failures of kind's steps, except those in internal: errors no step
// reports (a runner's own start-up, say).
func CheckSentinels(t testing.TB, dir, kind string, internal ...string) {
	t.Helper()
	texts, err := Sentinels(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(texts) == 0 {
		t.Fatalf("no sentinel errors found in %s", dir)
	}
	documented := steps.KindMessages(kind)
	for _, text := range texts {
		if !slices.Contains(documented, text) && !slices.Contains(internal, text) {
			t.Errorf("sentinel error %q of %s is not among the failures of %s steps in pkg/spec/steps (failures.go), so docs/steps.md does not list it", text, dir, kind)
		}
	}
}
