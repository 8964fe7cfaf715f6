package ui

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/spec"
)

// TestEditorKeyOrders checks that the key orders editor.js writes YAML in
// are the fields of pkg/spec's types, all of them and in their order, so a
// field added to the spec is not silently written out of place (or a
// renamed one kept).
func TestEditorKeyOrders(t *testing.T) {
	src, err := staticFS.ReadFile("static/editor.js")
	if err != nil {
		t.Fatal(err)
	}
	for list, typ := range map[string]reflect.Type{
		"pipelineKeys":    reflect.TypeFor[spec.Pipeline](),
		"stepKeys":        reflect.TypeFor[spec.Step](),
		"retryKeys":       reflect.TypeFor[spec.RetryPolicy](),
		"conditionKeys":   reflect.TypeFor[spec.Condition](),
		"triggerKeys":     reflect.TypeFor[spec.Trigger](),
		"pullRequestKeys": reflect.TypeFor[spec.PullRequestRules](),
		"secretRefKeys":   reflect.TypeFor[spec.SecretRef](),
	} {
		m := regexp.MustCompile(`const ` + list + ` = \[([^\]]*)\]`).FindSubmatch(src)
		if m == nil {
			t.Errorf("editor.js has no %s", list)
			continue
		}
		var got []string
		for _, q := range regexp.MustCompile(`"([a-z0-9_]+)"`).FindAllSubmatch(m[1], -1) {
			got = append(got, string(q[1]))
		}
		var want []string
		for i := 0; i < typ.NumField(); i++ {
			want = append(want, strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0])
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("editor.js %s = %v, want %v (the fields of %s)", list, got, want, typ)
		}
	}
}

// TestEditorSpecLists checks that the lists editor.js offers in its
// selects are pkg/spec's: the step types that may receive secrets and a
// pull request trigger's actions.
func TestEditorSpecLists(t *testing.T) {
	src, err := staticFS.ReadFile("static/editor.js")
	if err != nil {
		t.Fatal(err)
	}
	quoted := func(s string) []string {
		var out []string
		for _, q := range regexp.MustCompile(`"([a-z0-9_]+)"`).FindAllStringSubmatch(s, -1) {
			out = append(out, q[1])
		}
		return out
	}
	for re, want := range map[string][]string{
		`const secretTypes = \[([^\]]*)\]`:                         spec.SecretTypes,
		`key: "actions", type: "list", items: \{[^}]*\[([^\]]*)\]`: spec.PullRequestActions,
	} {
		m := regexp.MustCompile(re).FindSubmatch(src)
		if m == nil {
			t.Errorf("editor.js has no match of %s", re)
			continue
		}
		if got := quoted(string(m[1])); !reflect.DeepEqual(got, want) {
			t.Errorf("editor.js lists %v, want %v (%s)", got, want, re)
		}
	}
}
