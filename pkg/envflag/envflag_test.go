package envflag

import (
	"testing"
	"time"
)

func TestDefaultsAndErrors(t *testing.T) {
	vars := map[string]string{"S": "x", "N": "7", "D": "2s", "B": "true", "BAD": "seven", "EMPTY": ""}
	e := New(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
	if e.String("S", "d") != "x" || e.String("EMPTY", "d") != "d" || e.String("UNSET", "d") != "d" {
		t.Error("String")
	}
	if e.Int("N", 1) != 7 || e.Duration("D", 0) != 2*time.Second || !e.Bool("B", false) {
		t.Error("typed values")
	}
	if e.Err() != nil {
		t.Fatal(e.Err())
	}
	if e.Int("BAD", 3) != 3 || e.Err() == nil || e.Err().Error() != `BAD="seven" is not a number` {
		t.Errorf("bad value: %v", e.Err())
	}
}
