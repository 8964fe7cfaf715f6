package ui

import (
	"fmt"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// graph is a run's step graph laid out for an SVG: one column per depth
// (a step is one column right of the deepest step it waits for), steps of
// a column stacked, and an edge from each step to the steps that wait for
// it directly (edges implied by others are left out).
type graph struct {
	Width, Height int
	Nodes         []node
	Edges         []edge
}

type node struct {
	ID, Name, Status, Label string
	X, Y, W, H              int
	// TextX and TextY place the name; LabelY the second line.
	TextX, TextY, LabelY int
}

type edge struct {
	From, To string
	Path     string
}

// Layout sizes of the step graph, in SVG user units.
const (
	nodeW, nodeH = 168, 40
	colGap       = 56
	rowGap       = 14
	pad          = 8
)

// layoutGraph lays out run's steps; a run without its spec has no graph.
func layoutGraph(run *store.Run, now time.Time) graph {
	var g graph
	p := run.Spec
	if p == nil || len(p.Steps) == 0 {
		return g
	}
	deps := p.Deps()
	depth := make([]int, len(p.Steps))
	var depthOf func(i int, seen map[int]bool) int
	depthOf = func(i int, seen map[int]bool) int {
		if seen[i] { // validation refuses cycles; never loop on a bad spec
			return 0
		}
		seen[i] = true
		d := 0
		for _, j := range deps[i] {
			d = max(d, depthOf(j, seen)+1)
		}
		delete(seen, i)
		return d
	}
	rows := map[int]int{}
	cols := 0
	for i := range p.Steps {
		depth[i] = depthOf(i, map[int]bool{})
		cols = max(cols, depth[i]+1)
	}
	state := map[string]*apiv1.StepState{}
	for _, st := range run.Steps {
		state[st.ID] = st
	}
	pos := make([]node, len(p.Steps))
	maxRows := 0
	for i, st := range p.Steps {
		r := rows[depth[i]]
		rows[depth[i]]++
		maxRows = max(maxRows, r+1)
		n := node{ID: st.ID(), Name: st.Name, Status: "pending", X: pad + depth[i]*(nodeW+colGap), Y: pad + r*(nodeH+rowGap), W: nodeW, H: nodeH}
		if s := state[st.ID()]; s != nil {
			n.Status = s.Status
			n.Label = stepLabel(s, now)
		}
		n.TextX, n.TextY, n.LabelY = n.X+10, n.Y+17, n.Y+32
		if len(n.Name) > 22 {
			n.Name = n.Name[:21] + "…"
		}
		pos[i] = n
	}
	g.Nodes = pos
	for i := range p.Steps {
		for _, j := range directDeps(deps, i) {
			a, b := pos[j], pos[i]
			x1, y1 := a.X+a.W, a.Y+a.H/2
			x2, y2 := b.X, b.Y+b.H/2
			mid := (x1 + x2) / 2
			g.Edges = append(g.Edges, edge{From: a.ID, To: b.ID, Path: fmt.Sprintf("M%d %d C%d %d %d %d %d %d", x1, y1, mid, y1, mid, y2, x2, y2)})
		}
	}
	g.Width = pad*2 + cols*nodeW + (cols-1)*colGap
	g.Height = pad*2 + maxRows*nodeH + (maxRows-1)*rowGap
	return g
}

// directDeps are the steps i waits for that no other step it waits for
// already waits for (the transitive reduction of its dependencies).
func directDeps(deps [][]int, i int) []int {
	implied := map[int]bool{}
	for _, j := range deps[i] {
		for _, k := range spec.Upstream(deps, j) {
			implied[k] = true
		}
	}
	var out []int
	for _, j := range deps[i] {
		if !implied[j] {
			out = append(out, j)
		}
	}
	return out
}

// stepLabel is a node's second line: status, duration and attempts.
func stepLabel(s *apiv1.StepState, now time.Time) string {
	parts := []string{s.Status}
	if s.StartedAt != nil {
		end := now
		if s.FinishedAt != nil {
			end = *s.FinishedAt
		}
		parts = append(parts, formatDuration(end.Sub(*s.StartedAt)))
	}
	if s.Attempts > 1 {
		parts = append(parts, fmt.Sprintf("attempt %d", s.Attempts))
	}
	return strings.Join(parts, " · ")
}

// sparkline is a small SVG polyline of values, oldest first.
type sparkline struct {
	Width, Height int
	Points        string
	Dots          []sparkDot
	// Max is the largest value, for the title.
	Max float64
}

type sparkPoint struct {
	Value  float64
	Failed bool
	RunID  string
}

type sparkDot struct {
	X, Y   float64
	Failed bool
	RunID  string
}

// newSparkline scales points into a width × height box.
func newSparkline(points []sparkPoint, width, height int) sparkline {
	s := sparkline{Width: width, Height: height}
	if len(points) == 0 {
		return s
	}
	for _, p := range points {
		s.Max = max(s.Max, p.Value)
	}
	step := 0.0
	if len(points) > 1 {
		step = float64(width-4) / float64(len(points)-1)
	}
	var b strings.Builder
	for i, p := range points {
		x := 2 + float64(i)*step
		y := float64(height) - 2
		if s.Max > 0 {
			y = 2 + (1-p.Value/s.Max)*float64(height-4)
		}
		fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
		s.Dots = append(s.Dots, sparkDot{X: x, Y: y, Failed: p.Failed, RunID: p.RunID})
	}
	s.Points = strings.TrimSpace(b.String())
	return s
}

// formatDuration prints d rounded to what a reader needs: 850ms, 12.3s,
// 4m05s, 2h03m.
func formatDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// formatAgo prints how long ago something was.
func formatAgo(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

// shortID is the first 8 characters of an id or commit.
func shortID(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}
