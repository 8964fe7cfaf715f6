package tmpl

import (
	"errors"
	"strings"
	"testing"
)

func TestRender(t *testing.T) {
	vars := Vars{"build_number": {S: "7"}, "steps.build.outputs.image": {S: "app:7"}, "name": {S: "x"}}
	cases := []struct{ in, want string }{
		{"plain", "plain"},
		{"v{{build_number}}", "v7"},
		{"{{ build_number }}-{{name}}", "7-x"},
		{"{{steps.build.outputs.image}}", "app:7"},
	}
	for _, c := range cases {
		got, err := Render(c.in, vars)
		if err != nil || got != c.want {
			t.Errorf("Render(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"{{missing}}", "a {{ b c }}", "open {{ name"} {
		if _, err := Render(in, vars); err == nil {
			t.Errorf("Render(%q) succeeded", in)
		}
	}
	if _, err := Render("{{missing}}", vars); !errors.Is(err, ErrUnknownVariable) {
		t.Errorf("unknown variable error = %v", err)
	}
}

func TestWalkRecursesThroughMapsAndLists(t *testing.T) {
	vars := Vars{"v": {S: "1"}}
	in := map[string]any{"a": "{{v}}", "list": []any{"x{{v}}", map[string]any{"deep": "{{v}}"}, 3}, "{{v}}key": true}
	out, err := Walk(in, func(s string) (string, error) { return Render(s, vars) })
	if err != nil {
		t.Fatal(err)
	}
	m := out.(map[string]any)
	if m["a"] != "1" || m["list"].([]any)[0] != "x1" || m["list"].([]any)[1].(map[string]any)["deep"] != "1" || m["list"].([]any)[2] != 3 || m["1key"] != true {
		t.Errorf("Walk = %#v", out)
	}
	_, err = Walk(map[string]any{"a": []any{"{{nope}}"}}, func(s string) (string, error) { return Render(s, vars) })
	if err == nil || !strings.Contains(err.Error(), "a: [0]") {
		t.Errorf("error should locate the value: %v", err)
	}
}

func TestRenderCommandKeepsUntrustedValuesOutOfShellSyntax(t *testing.T) {
	vars := Vars{
		"git_branch":  {S: `zzz";echo${IFS}"hello";#`, Untrusted: true},
		"git_message": {S: "$(touch /tmp/pwned)", Untrusted: true},
		"tag":         {S: "v1"},
	}
	env := map[string]string{}
	got, err := RenderCommand("echo {{git_branch}} {{git_message}} {{tag}}", vars, env)
	if err != nil {
		t.Fatal(err)
	}
	if want := `echo "${ANSFLOW_GIT_BRANCH}" "${ANSFLOW_GIT_MESSAGE}" v1`; got != want {
		t.Errorf("command = %q, want %q", got, want)
	}
	if env["ANSFLOW_GIT_BRANCH"] != vars["git_branch"].S || env["ANSFLOW_GIT_MESSAGE"] != vars["git_message"].S {
		t.Errorf("env = %v", env)
	}
}

func FuzzRender(f *testing.F) {
	f.Add("{{a}}-{{ b }}", "x")
	f.Add("{{", "y")
	f.Add("}}{{a}", "z")
	f.Fuzz(func(t *testing.T, tpl, val string) {
		vars := Vars{"a": {S: "A"}, "b": {S: val, Untrusted: true}}
		out, err := Render(tpl, vars)
		if err == nil && strings.Contains(out, "{{a}}") && !strings.Contains(val, "{{a}}") {
			t.Fatalf("reference left unresolved: %q -> %q", tpl, out)
		}
		env := map[string]string{}
		cmd, err := RenderCommand(tpl, vars, env)
		if err == nil && val != "" && strings.Contains(val, "$(") && strings.Contains(cmd, val) && !strings.Contains(tpl, val) {
			t.Fatalf("untrusted value spliced into command: %q", cmd)
		}
	})
}
