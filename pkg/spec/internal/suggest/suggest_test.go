package suggest

import "testing"

func TestHint(t *testing.T) {
	for _, tc := range []struct{ word, want string }{
		{"replicaz", ` (did you mean "replicas"?)`},
		{"conditon", ` (did you mean "condition"?)`},
		{"zzzzzzzz", ""},
	} {
		if got := Hint(tc.word, []string{"replicas", "condition", "wait"}); got != tc.want {
			t.Errorf("Hint(%q) = %q, want %q", tc.word, got, tc.want)
		}
	}
}
