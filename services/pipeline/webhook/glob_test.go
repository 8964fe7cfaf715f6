package webhook

import "testing"

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		pat, s string
		want   bool
	}{
		{"main", "main", true}, {"main", "mainx", false}, {"release/*", "release/1.0", true}, {"release/*", "release/1/x", false},
		{"src/**", "src/a/b.go", true}, {"src/**", "docs/a", false}, {"**/*.go", "a/b/c.go", true}, {"**/*.go", "c.go", true},
		{"v?.*", "v1.2", true}, {"a.b", "axb", false},
	} {
		if got := Glob(c.pat, c.s); got != c.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", c.pat, c.s, got, c.want)
		}
	}
}
