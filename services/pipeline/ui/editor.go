package ui

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/pipeline/store"
)

// newPipelineYAML is what the editor of a new pipeline starts from. The
// script replaces it with the form's YAML as soon as the form is used.
const newPipelineYAML = `pipeline:
  name: ""
  steps: []
`

// versionRow is one stored version of a pipeline, as the editor and the
// diff page list them.
type versionRow struct {
	Version int
	// Prev is the version stored before it (0 for the first).
	Prev      int
	UpdatedAt time.Time
	UpdatedBy string
}

type editorData struct {
	layout
	// Name is the pipeline edited ("" for a new one): saving PUTs to it,
	// else POSTs a new pipeline.
	Name string
	// Version is the version the editor opened (0 for a new pipeline).
	Version int
	// YAML is the text the editor starts with, as stored (comments kept).
	YAML     string
	Versions []versionRow
}

func versionRows(recs []*apiv1.Pipeline) []versionRow {
	out := make([]versionRow, 0, len(recs))
	prev := 0
	for _, r := range recs {
		out = append(out, versionRow{Version: r.Version, Prev: prev, UpdatedAt: r.UpdatedAt, UpdatedBy: r.UpdatedBy})
		prev = r.Version
	}
	return out
}

// newPipelinePage is the editor of a pipeline that does not exist yet.
func (s *Server) newPipelinePage(w http.ResponseWriter, r *http.Request) {
	s.render(w, "editor", editorData{layout: s.frame(r, "New pipeline", "pipelines", ""), YAML: newPipelineYAML})
}

// editPipelinePage is the editor of a stored pipeline, opened on its latest
// version, with the list of its versions.
func (s *Server) editPipelinePage(w http.ResponseWriter, r *http.Request) {
	rec, err := s.st.GetPipeline(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	vs, err := s.st.PipelineVersions(r.Context(), rec.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, "editor", editorData{layout: s.frame(r, "Edit "+rec.Name, "pipelines", spec.Slug(rec.Name)),
		Name: rec.Name, Version: rec.Version, YAML: rec.YAML, Versions: versionRows(vs)})
}

// diffLine is one line of a diff: in both versions ("same"), only in the
// older one ("del") or only in the newer one ("add"). Old and New are its
// line numbers in each version (0 where it has none).
type diffLine struct {
	Kind     string
	Old, New int
	Text     string
}

type diffData struct {
	layout
	Name     string
	From, To int
	Versions []versionRow
	Lines    []diffLine
	// Added and Removed count the lines of each kind.
	Added, Removed int
	// Whole is set when the versions were too different to compare line by
	// line: Lines then removes every old line and adds every new one.
	Whole bool
}

// diffPage renders a line diff of two versions' YAML (from and to, by
// default the latest version and the one before it).
func (s *Server) diffPage(w http.ResponseWriter, r *http.Request) {
	vs, err := s.st.PipelineVersions(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(vs) == 0 {
		s.fail(w, r, fmt.Errorf("pipeline %q has no stored versions: %w", r.PathValue("name"), store.ErrNotFound))
		return
	}
	latest := vs[len(vs)-1]
	to, from := latest.Version, latest.Version
	if len(vs) > 1 {
		from = vs[len(vs)-2].Version
	}
	q := r.URL.Query()
	for _, p := range []struct {
		key string
		v   *int
	}{{"from", &from}, {"to", &to}} {
		if x := q.Get(p.key); x != "" {
			n, err := strconv.Atoi(x)
			if err != nil || n < 1 {
				http.Error(w, fmt.Sprintf("400 Bad Request: %s: want a version number, got %q", p.key, x), http.StatusBadRequest)
				return
			}
			*p.v = n
		}
	}
	find := func(v int) *apiv1.Pipeline {
		for _, rec := range vs {
			if rec.Version == v {
				return rec
			}
		}
		return nil
	}
	a, b := find(from), find(to)
	if a == nil || b == nil {
		missing := from
		if a != nil {
			missing = to
		}
		s.fail(w, r, fmt.Errorf("pipeline %q version %d: %w", latest.Name, missing, store.ErrNotFound))
		return
	}
	d := diffData{layout: s.frame(r, latest.Name+" versions", "pipelines", spec.Slug(latest.Name)),
		Name: latest.Name, From: from, To: to, Versions: versionRows(vs)}
	d.Lines, d.Whole = diffLines(splitLines(a.YAML), splitLines(b.YAML))
	for _, l := range d.Lines {
		switch l.Kind {
		case "add":
			d.Added++
		case "del":
			d.Removed++
		}
	}
	s.render(w, "diff", d)
}

func splitLines(s string) []string {
	s = strings.TrimSuffix(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// maxDiffCells bounds the table of the longest common subsequence (lines
// of one version times lines of the other, after the common start and end
// are taken off), so that two large, unrelated files cannot make a page
// request allocate without bound.
const maxDiffCells = 4 << 20

// diffLines is the line diff turning a into b: a longest common
// subsequence of lines, kept, with the rest removed or added (removals
// first where both happen at one place). When the differing middle is over
// [maxDiffCells], it is all removed and added and whole is true.
func diffLines(a, b []string) (lines []diffLine, whole bool) {
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	for i := 0; i < pre; i++ {
		lines = append(lines, diffLine{Kind: "same", Old: i + 1, New: i + 1, Text: a[i]})
	}
	am, bm := a[pre:len(a)-suf], b[pre:len(b)-suf]
	n, m := len(am), len(bm)
	if n*m > maxDiffCells {
		whole = true
		for i, t := range am {
			lines = append(lines, diffLine{Kind: "del", Old: pre + i + 1, Text: t})
		}
		for j, t := range bm {
			lines = append(lines, diffLine{Kind: "add", New: pre + j + 1, Text: t})
		}
	} else {
		// lcs[i*(m+1)+j] is the length of the longest common subsequence
		// of am[i:] and bm[j:].
		lcs := make([]int32, (n+1)*(m+1))
		for i := n - 1; i >= 0; i-- {
			for j := m - 1; j >= 0; j-- {
				if am[i] == bm[j] {
					lcs[i*(m+1)+j] = lcs[(i+1)*(m+1)+j+1] + 1
				} else {
					lcs[i*(m+1)+j] = max(lcs[(i+1)*(m+1)+j], lcs[i*(m+1)+j+1])
				}
			}
		}
		i, j := 0, 0
		for i < n || j < m {
			switch {
			case i < n && j < m && am[i] == bm[j]:
				lines = append(lines, diffLine{Kind: "same", Old: pre + i + 1, New: pre + j + 1, Text: am[i]})
				i, j = i+1, j+1
			case i < n && (j == m || lcs[(i+1)*(m+1)+j] >= lcs[i*(m+1)+j+1]):
				lines = append(lines, diffLine{Kind: "del", Old: pre + i + 1, Text: am[i]})
				i++
			default:
				lines = append(lines, diffLine{Kind: "add", New: pre + j + 1, Text: bm[j]})
				j++
			}
		}
	}
	for k := 0; k < suf; k++ {
		oi, ni := len(a)-suf+k, len(b)-suf+k
		lines = append(lines, diffLine{Kind: "same", Old: oi + 1, New: ni + 1, Text: a[oi]})
	}
	return lines, whole
}
