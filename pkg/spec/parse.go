package spec

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	suggestpkg "github.com/ansflow/ansflow/pkg/spec/internal/suggest"
)

// MaxFileBytes bounds a pipeline file.
const MaxFileBytes = 1 << 20

// Error is one problem in a pipeline file, located by line and field path.
type Error struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Errors is every problem found in a file, in line order. It is the error
// type [Parse] returns.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// readDocument starts parsing a file: it refuses one over [MaxFileBytes]
// or that is not YAML, and returns the parser and the file's document
// node (nil for an empty file).
func readDocument(file string, data []byte) (*parser, *yaml.Node, error) {
	p := &parser{file: file, pos: map[string]int{}}
	if len(data) > MaxFileBytes {
		return nil, nil, Errors{{File: file, Msg: fmt.Sprintf("file is %d bytes, over the %d limit", len(data), MaxFileBytes)}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p.yamlErr(err)
		return nil, nil, p.errs
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return p, nil, nil
	}
	return p, root.Content[0], nil
}

// Parse reads a pipeline file, checks that every field is known, and
// validates it. A non-nil error is always [Errors] listing every problem.
func Parse(file string, data []byte) (*Pipeline, error) {
	p, doc, err := readDocument(file, data)
	if err != nil {
		return nil, err
	}
	if doc == nil {
		return nil, Errors{{File: file, Line: 1, Msg: "file is empty; want a top-level `pipeline:` mapping"}}
	}
	p.check(doc, reflect.TypeOf(File{}), "", 0)
	var f File
	if err := doc.Decode(&f); err != nil {
		p.yamlErr(err)
	} else {
		if _, ok := p.pos["pipeline"]; !ok {
			p.add(doc.Line, "pipeline", "missing; the file needs a top-level `pipeline:` mapping")
		} else {
			p.validate(&f.Pipeline)
		}
	}
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
		return nil, p.errs
	}
	return &f.Pipeline, nil
}

// maxAliases bounds YAML alias expansion (against "billion laughs").
const maxAliases = 1000

type parser struct {
	aliases int
	file    string
	pos     map[string]int
	errs    Errors
}

func (p *parser) add(line int, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// line returns the line of field path, or of its nearest recorded parent.
func (p *parser) line(path string) int {
	for path != "" {
		if l, ok := p.pos[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// fieldAt names the field at line n, so that a value the YAML decoder
// refused (a duration, a catalogue ref) is reported like every other
// error: the deepest path recorded at the line, or "" when the line holds
// several fields that are not nested (a flow mapping) or none.
func (p *parser) fieldAt(n int) string {
	best := ""
	for path, l := range p.pos {
		switch {
		case l != n:
		case best == "" || strings.HasPrefix(path, best):
			best = path
		case !strings.HasPrefix(best, path):
			return ""
		}
	}
	return best
}

var yamlLineRE = regexp.MustCompile(`line (\d+): (.*)`)

func (p *parser) yamlErr(err error) {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
			l, _ := strconv.Atoi(sm[1])
			p.add(l, p.fieldAt(l), "%s", sm[2])
			continue
		}
		p.add(0, "", "%s", m)
	}
}

var (
	refType      = reflect.TypeOf(Ref(""))
	durationType = reflect.TypeOf(Duration(0))
)

// check walks n against type t, recording each field's line and reporting
// fields the type does not have, so typos never pass silently.
func (p *parser) check(n *yaml.Node, t reflect.Type, path string, depth int) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if depth > 32 {
		p.add(n.Line, path, "nested too deeply")
		return
	}
	if n.Kind == yaml.AliasNode {
		if p.aliases++; p.aliases > maxAliases {
			if p.aliases == maxAliases+1 {
				p.add(n.Line, path, "more than %d alias expansions", maxAliases)
			}
			return
		}
		p.check(n.Alias, t, path, depth+1)
		return
	}
	if t == refType || t == durationType {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			p.add(n.Line, path, "want a mapping, got a %s", kindName(n.Kind))
			return
		}
		fields := map[string]reflect.StructField{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name != "" && name != "-" {
				fields[name] = f
			}
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			fp := join(path, k.Value)
			if seen[k.Value] {
				p.add(k.Line, fp, "duplicate field")
				continue
			}
			seen[k.Value] = true
			f, ok := fields[k.Value]
			if !ok {
				p.add(k.Line, fp, "unknown field%s", suggest(k.Value, keys(fields)))
				continue
			}
			p.pos[fp] = k.Line
			p.check(v, f.Type, fp, depth+1)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			p.add(n.Line, path, "want a list, got a %s", kindName(n.Kind))
			return
		}
		for i, e := range n.Content {
			ep := fmt.Sprintf("%s[%d]", path, i)
			p.pos[ep] = e.Line
			p.check(e, t.Elem(), ep, depth+1)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			p.add(n.Line, path, "want a mapping, got a %s", kindName(n.Kind))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p.pos[join(path, k.Value)] = k.Line
			if t.Elem().Kind() == reflect.String && n.Content[i+1].Kind != yaml.ScalarNode {
				p.add(k.Line, join(path, k.Value), "want a scalar value, got a %s", kindName(n.Content[i+1].Kind))
			}
			if t.Elem().Kind() == reflect.Interface {
				p.record(n.Content[i+1], join(path, k.Value), depth+1)
			}
		}
	case reflect.String, reflect.Int, reflect.Bool, reflect.Float64:
		if n.Kind != yaml.ScalarNode {
			p.add(n.Line, path, "want a scalar value, got a %s", kindName(n.Kind))
		}
	}
}

// record notes the line of every key and list item inside n, an untyped
// value (a step's docker_config or k8s_config), so that an error about a
// nested setting points at its own line.
func (p *parser) record(n *yaml.Node, path string, depth int) {
	if depth > 32 {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			fp := join(path, n.Content[i].Value)
			p.pos[fp] = n.Content[i].Line
			p.record(n.Content[i+1], fp, depth+1)
		}
	case yaml.SequenceNode:
		for i, e := range n.Content {
			ep := fmt.Sprintf("%s[%d]", path, i)
			p.pos[ep] = e.Line
			p.record(e, ep, depth+1)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// suggest returns " (did you mean X?)" for the closest candidate, if close.
func suggest(word string, candidates []string) string { return suggestpkg.Hint(word, candidates) }
