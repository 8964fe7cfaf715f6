package metrics

import (
	"fmt"
	"strings"
)

// Reference is the metrics reference of docs/operations.md: one table row
// per family of [Families], generated so the docs cannot drift from the
// code.
func Reference() string {
	var b strings.Builder
	b.WriteString("| Metric | Type | Labels | Exposed by | Meaning |\n|---|---|---|---|---|\n")
	for _, f := range Families {
		labels := "—"
		if len(f.Labels) > 0 {
			labels = "`" + strings.Join(f.Labels, "`, `") + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", f.Name, f.Type, labels, f.Service, f.Help)
	}
	return b.String()
}

// Exposed lists every series name the families expose: a histogram's
// _bucket, _sum and _count as well as its own name (which PromQL cannot
// select, but an alert test may look up), a counter's and a gauge's name.
func Exposed() map[string]bool {
	out := map[string]bool{}
	for _, f := range Families {
		out[f.Name] = true
		if f.Type == Histogram {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[f.Name+s] = true
			}
		}
	}
	return out
}
