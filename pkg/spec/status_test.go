package spec

import (
	"strings"
	"testing"
)

func TestCommitStatusSettings(t *testing.T) {
	const head = "pipeline:\n  name: x\n  steps:\n    - name: a\n      type: docker_run\n"
	p, err := Parse("f.yaml", []byte(head+"  status:\n    steps: false\n    token_secret: gh_token\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Status; st == nil || st.Steps == nil || *st.Steps || st.TokenSecret != "gh_token" || st.Disabled {
		t.Errorf("status %+v", p.Status)
	}
	for yaml, want := range map[string]string{
		"  status:\n    token_secret: \"a b\"\n": `f.yaml:7: pipeline.status.token_secret: "a b": want a secret name`,
		"  status:\n    step: true\n":            `f.yaml:7: pipeline.status.step: unknown field`,
	} {
		if _, err := Parse("f.yaml", []byte(head+yaml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", yaml, err, want)
		}
	}
}
