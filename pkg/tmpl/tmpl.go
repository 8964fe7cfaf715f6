// Package tmpl resolves AnsFlow's {{variable}} templates in strings, and
// recursively in maps and lists.
//
// A reference is "{{ name }}" where name is a variable such as build_number,
// a declared pipeline variable, or a step output steps.<step>.outputs.<key>.
// An unknown name is an error, never an empty string. Values that came from
// outside (webhook payloads) are marked untrusted; [RenderCommand] keeps them
// out of shell syntax by passing them as environment variables.
package tmpl

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Value is a variable's value and whether it came from an untrusted source.
type Value struct {
	S         string
	Untrusted bool
}

// Vars maps variable names to values.
type Vars map[string]Value

var refRE = regexp.MustCompile(`\{\{\s*([^{}]*?)\s*\}\}`)
var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$`)

// ErrUnknownVariable is wrapped by errors for references to undefined names.
var ErrUnknownVariable = errors.New("unknown variable")

// ErrBadReference is wrapped by errors for malformed references.
var ErrBadReference = errors.New("malformed reference")

// Refs returns the names referenced in s, in order, or an error for a
// malformed one such as "{{ a b }}" or an unclosed "{{".
func Refs(s string) ([]string, error) {
	var names []string
	for _, m := range refRE.FindAllStringSubmatch(s, -1) {
		if !nameRE.MatchString(m[1]) {
			return nil, fmt.Errorf("%w %q", ErrBadReference, m[0])
		}
		names = append(names, m[1])
	}
	rest := refRE.ReplaceAllString(s, "")
	if i := strings.Index(rest, "{{"); i >= 0 {
		return nil, fmt.Errorf("%w: unclosed %q", ErrBadReference, abbreviate(rest[i:]))
	}
	return names, nil
}

func abbreviate(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

// Render replaces every reference in s by its value.
func Render(s string, vars Vars) (string, error) {
	return render(s, vars, func(_ string, v Value) string { return v.S })
}

// RenderCommand renders a shell command. A trusted value is spliced in; an
// untrusted one is replaced by a double-quoted reference to an environment
// variable ("${ANSFLOW_GIT_BRANCH}") that env receives, so the shell sees it
// as data and never as syntax.
func RenderCommand(s string, vars Vars, env map[string]string) (string, error) {
	return render(s, vars, func(name string, v Value) string {
		if !v.Untrusted {
			return v.S
		}
		key := EnvName(name)
		env[key] = v.S
		return `"${` + key + `}"`
	})
}

// render replaces each reference by subst of its value; an unknown name is
// an error.
func render(s string, vars Vars, subst func(name string, v Value) string) (string, error) {
	if !strings.Contains(s, "{{") {
		return s, nil
	}
	if _, err := Refs(s); err != nil {
		return "", err
	}
	var firstErr error
	out := refRE.ReplaceAllStringFunc(s, func(m string) string {
		name := strings.TrimSpace(m[2 : len(m)-2])
		v, ok := vars[name]
		if !ok {
			if firstErr == nil {
				firstErr = fmt.Errorf("%w %q", ErrUnknownVariable, name)
			}
			return m
		}
		return subst(name, v)
	})
	return out, firstErr
}

// EnvName is the environment variable an untrusted value travels in.
func EnvName(name string) string {
	b := []byte("ANSFLOW_" + strings.ToUpper(name))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// Walk applies fn to every string in v, descending into maps and lists, and
// returns the rebuilt value. Map keys are rendered too.
func Walk(v any, fn func(string) (string, error)) (any, error) {
	switch t := v.(type) {
	case string:
		return fn(t)
	case map[string]any:
		out := make(map[string]any, len(t))
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			nk, err := fn(k)
			if err != nil {
				return nil, fmt.Errorf("key %q: %w", k, err)
			}
			nv, err := Walk(t[k], fn)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[nk] = nv
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			nv, err := Walk(e, fn)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i] = nv
		}
		return out, nil
	case []string:
		out := make([]string, len(t))
		for i, e := range t {
			s, err := fn(e)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i] = s
		}
		return out, nil
	default:
		return v, nil
	}
}

// Strings calls fn on every string in v (as [Walk] visits them) without
// rebuilding it.
func Strings(v any, fn func(string)) {
	_, _ = Walk(v, func(s string) (string, error) { fn(s); return s, nil })
}
