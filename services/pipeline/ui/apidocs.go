package ui

import (
	"net/http"
	"sort"
	"strings"
)

// apiOperation is one route of the REST API as the API page lists it.
type apiOperation struct {
	Method, Path, Summary, Role, Scope string
}

type apiDocsData struct {
	layout
	Operations []apiOperation
}

// apiDocsPage lists the REST API's routes from its OpenAPI document, with
// the role and scope each needs and a link to the document itself.
func (s *Server) apiDocsPage(w http.ResponseWriter, r *http.Request) {
	d := apiDocsData{layout: s.frame(r, "REST API", "api", "")}
	if s.APIDoc != nil {
		paths, _ := s.APIDoc()["paths"].(map[string]map[string]any)
		for path, ops := range paths {
			for method, op := range ops {
				m, _ := op.(map[string]any)
				o := apiOperation{Method: strings.ToUpper(method), Path: path}
				o.Summary, _ = m["summary"].(string)
				o.Role, _ = m["x-ansflow-role"].(string)
				o.Scope, _ = m["x-ansflow-scope"].(string)
				d.Operations = append(d.Operations, o)
			}
		}
	}
	sort.Slice(d.Operations, func(i, j int) bool {
		a, b := d.Operations[i], d.Operations[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Method < b.Method
	})
	s.render(w, "apidocs", d)
}
