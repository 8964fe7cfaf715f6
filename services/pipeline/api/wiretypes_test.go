package api

import (
	"reflect"
	"strings"
	"testing"
)

// TestRoutesAnswerWireTypes: every request and response type the API's
// routes are documented with is one of the wire types of package apiv1,
// the pipeline file format (spec, spec/steps) or a value type those use;
// none is a type of the service itself (its store, orchestrator or
// webhook packages), so a storage change cannot change the API and
// clients need not import the service.
func TestRoutesAnswerWireTypes(t *testing.T) {
	const module = "github.com/ansflow/ansflow/"
	allowed := map[string]bool{
		module + "pkg/apiv1":      true,
		module + "pkg/spec":       true,
		module + "pkg/spec/steps": true,
		module + "pkg/auth":       true, // auth.Role, a string
		module + "pkg/secret":     true, // secret.Meta and Filters, metadata only
		module + "pkg/runner":     true, // runner.RunnerInfo, a runner's announcement
	}
	seen := map[reflect.Type]bool{}
	var walk func(route string, t reflect.Type, path string) []string
	walk = func(route string, typ reflect.Type, path string) []string {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Array || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if seen[typ] {
			return nil
		}
		seen[typ] = true
		var bad []string
		if pkg := typ.PkgPath(); strings.HasPrefix(pkg, module) && !allowed[pkg] {
			bad = append(bad, route+": "+path+" is "+typ.String()+" (package "+pkg+")")
		}
		if typ.Kind() == reflect.Struct {
			for i := range typ.NumField() {
				f := typ.Field(i)
				if f.IsExported() {
					bad = append(bad, walk(route, f.Type, path+"."+f.Name)...)
				}
			}
		}
		return bad
	}
	checked := 0
	for route, doc := range routeDocs {
		for _, v := range []any{doc.Request, doc.Response} {
			if v == nil {
				continue
			}
			checked++
			for _, b := range walk(route, reflect.TypeOf(v), reflect.TypeOf(v).String()) {
				t.Error(b)
			}
		}
	}
	if checked < 30 {
		t.Fatalf("only %d request and response types documented; the route table changed shape", checked)
	}
}
