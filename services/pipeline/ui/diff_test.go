package ui

import (
	"strings"
	"testing"
)

// render writes a diff as one line per diffLine: " " kept, "-" removed,
// "+" added, then the text.
func render(lines []diffLine) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(map[string]string{"same": " ", "del": "-", "add": "+"}[l.Kind] + l.Text + "\n")
	}
	return b.String()
}

func TestDiffLines(t *testing.T) {
	for _, c := range []struct{ name, a, b, want string }{
		{"equal", "a\nb\n", "a\nb\n", " a\n b\n"},
		{"empty to text", "", "a\n", "+a\n"},
		{"text to empty", "a\n", "", "-a\n"},
		{"change in the middle", "a\nb\nc\n", "a\nx\nc\n", " a\n-b\n+x\n c\n"},
		{"insert and delete", "a\nb\nc\nd\n", "b\nc\ne\nd\n", "-a\n b\n c\n+e\n d\n"},
		{"moved line", "a\nb\nc\n", "c\na\nb\n", "+c\n a\n b\n-c\n"},
		{"CRLF is LF", "a\r\nb\r\n", "a\nb\n", " a\n b\n"},
	} {
		lines, whole := diffLines(splitLines(c.a), splitLines(c.b))
		if got := render(lines); got != c.want || whole {
			t.Errorf("%s: got\n%s(whole %v), want\n%s", c.name, got, whole, c.want)
		}
	}
	// Line numbers count in each version.
	lines, _ := diffLines(splitLines("a\nb\nc\n"), splitLines("a\nx\ny\nc\n"))
	last := lines[len(lines)-1]
	if last.Old != 3 || last.New != 4 {
		t.Errorf("line c is %d/%d, want 3/4", last.Old, last.New)
	}
	// Two large unrelated files are not compared cell by cell.
	var a, b []string
	for i := 0; i < 3000; i++ {
		a = append(a, "a"+strings.Repeat("x", i%7)+string(rune('0'+i%10)))
		b = append(b, "b"+string(rune('0'+i%10)))
	}
	lines, whole := diffLines(a, b)
	if !whole || len(lines) != 6000 {
		t.Errorf("large unrelated diff: whole %v, %d lines, want whole and 6000", whole, len(lines))
	}
}
