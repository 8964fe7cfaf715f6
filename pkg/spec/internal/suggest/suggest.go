// Package suggest proposes the closest known word for a misspelt one, for
// the "did you mean" hints of pipeline validation.
package suggest

import "fmt"

// Hint returns ` (did you mean "X"?)` for the candidate closest to word by
// edit distance, or "" when none is within three edits.
func Hint(word string, candidates []string) string {
	if len(word) > 64 {
		return ""
	}
	best, bestD := "", 4
	for _, c := range candidates {
		if d := distance(word, c); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
