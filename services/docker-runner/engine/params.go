package engine

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// params reads a step's docker_config, which arrives decoded from JSON:
// strings, float64, bool, []any and map[string]any.
type params map[string]any

func (p params) invalid(key string, v any, want string) error {
	return fmt.Errorf("%w: docker_config.%s is %T, want %s", ErrInvalidStep, key, v, want)
}

// str returns a scalar as a string ("" when absent).
func (p params) str(key string) (string, error) {
	v, ok := p[key]
	if !ok || v == nil {
		return "", nil
	}
	if s, ok := scalar(v); ok {
		return s, nil
	}
	return "", p.invalid(key, v, "a string")
}

// boolean returns a bool, also accepting "true"/"false" strings.
func (p params) boolean(key string, def bool) (bool, error) {
	v, ok := p[key]
	if !ok || v == nil {
		return def, nil
	}
	switch b := v.(type) {
	case bool:
		return b, nil
	case string:
		if r, err := strconv.ParseBool(b); err == nil {
			return r, nil
		}
	}
	return false, p.invalid(key, v, "true or false")
}

// list returns a list of scalars; a single string is a one-element list.
func (p params) list(key string) ([]string, error) {
	v, ok := p[key]
	if !ok || v == nil {
		return nil, nil
	}
	switch l := v.(type) {
	case string:
		return []string{l}, nil
	case []string:
		return l, nil
	case []any:
		out := make([]string, 0, len(l))
		for _, x := range l {
			s, ok := scalar(x)
			if !ok {
				return nil, p.invalid(key, v, "a list of strings")
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, p.invalid(key, v, "a list of strings")
}

// strMap returns a map of scalars; a list of "KEY=VALUE" strings is accepted
// too, as in Compose files.
func (p params) strMap(key string) (map[string]string, error) {
	v, ok := p[key]
	if !ok || v == nil {
		return nil, nil
	}
	out := map[string]string{}
	switch m := v.(type) {
	case map[string]any:
		for k, x := range m {
			if x == nil {
				out[k] = ""
				continue
			}
			s, ok := scalar(x)
			if !ok {
				return nil, p.invalid(key+"."+k, x, "a string")
			}
			out[k] = s
		}
		return out, nil
	case map[string]string:
		for k, s := range m {
			out[k] = s
		}
		return out, nil
	case []any:
		for _, x := range m {
			s, ok := x.(string)
			k, val, found := strings.Cut(s, "=")
			if !ok || !found || k == "" {
				return nil, fmt.Errorf("%w: docker_config.%s entry %v is not KEY=VALUE", ErrInvalidStep, key, x)
			}
			out[k] = val
		}
		return out, nil
	}
	return nil, p.invalid(key, v, "a map of strings")
}

func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	}
	return "", false
}

// argv turns a step's command into an argument vector: a list is taken as
// is, a string is one shell command.
func argv(cmd any) (list []string, shell string, err error) {
	switch c := cmd.(type) {
	case nil:
		return nil, "", nil
	case string:
		return nil, c, nil
	case []string:
		return c, "", nil
	case []any:
		for _, x := range c {
			s, ok := scalar(x)
			if !ok {
				return nil, "", fmt.Errorf("%w: command element %v is %T, want a string", ErrInvalidStep, x, x)
			}
			list = append(list, s)
		}
		return list, "", nil
	}
	return nil, "", fmt.Errorf("%w: command is %T, want a string or a list of strings", ErrInvalidStep, cmd)
}

// envList merges environments, later maps winning, into sorted KEY=VALUE
// entries.
func envList(maps ...map[string]string) ([]string, error) {
	merged := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
				return nil, fmt.Errorf("%w: environment variable %q cannot be passed to a container", ErrInvalidStep, k)
			}
			merged[k] = v
		}
	}
	out := make([]string, 0, len(merged))
	for k, v := range merged {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}

// within joins rel to root and fails when the result leaves root.
func within(root, rel, what string) (string, error) {
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%w: %s %q must be relative to the run's source", ErrInvalidStep, what, rel)
	}
	p := filepath.Join(root, rel)
	r, err := filepath.Rel(root, p)
	if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%w: %s %q leaves the run's source", ErrInvalidStep, what, rel)
	}
	return p, nil
}
