package steps

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ansflow/ansflow/pkg/spec/internal/suggest"
)

// FieldError is one setting that does not fit its definition.
type FieldError struct {
	// Path locates the value inside the config mapping, such as
	// "replicas" or "deployment_spec.ports[0].container_port"; it is ""
	// for a problem of the mapping as a whole.
	Path string
	// Msg says what is wrong, such as `must be an integer, got "five"`.
	Msg string
}

// Error returns "path: message".
func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Check validates cfg, the config mapping of a step of type stepType as
// written in a pipeline file (decoded from YAML): every key is known and
// every value has its field's type, required keys are set and exactly one
// key of each one-of group is. A string holding a template reference
// ("{{...}}") stands for any scalar, as it is resolved only when the step
// runs. It returns every problem, ordered by key, and nil for an unknown
// step type (which the caller reports).
func Check(stepType string, cfg map[string]any) []*FieldError {
	e, ok := registry[stepType]
	if !ok {
		return nil
	}
	d := &decoder{templates: true}
	d.object(e.root, cfg, reflect.New(e.root.typ).Elem(), "")
	return d.errs
}

// Decode decodes cfg, a step request's docker_config or k8s_config after
// template resolution (decoded from JSON), into T, which must be one of the
// config structs of this package, applying the defaults of unset keys. The
// error is the first problem found, a [*FieldError]; a T that is not a
// step type's config struct is a programming error and panics.
func Decode[T any](cfg map[string]any) (*T, error) {
	t := reflect.TypeFor[T]()
	e, ok := byConfig[t]
	if !ok {
		panic(fmt.Sprintf("steps.Decode: %s is not a step type's config", t))
	}
	out := new(T)
	d := &decoder{}
	d.object(e.root, cfg, reflect.ValueOf(out).Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.errs[0]
	}
	return out, nil
}

// DecodeType is [Decode] for a step type named at run time: it returns a
// pointer to stepType's config struct, such as *[K8sScaleConfig].
func DecodeType(stepType string, cfg map[string]any) (any, error) {
	e, ok := registry[stepType]
	if !ok {
		return nil, fmt.Errorf("unknown step type %q", stepType)
	}
	out := reflect.New(e.root.typ)
	d := &decoder{}
	d.object(e.root, cfg, out.Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.errs[0]
	}
	return out.Interface(), nil
}

// decoder walks a value decoded from YAML or JSON (strings, numbers, bools,
// []any, map[string]any) alongside a node, filling a Go value.
type decoder struct {
	// templates accepts "{{...}}" strings for any scalar.
	templates bool
	errs      []*FieldError
}

func (d *decoder) fail(path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// unset reports whether v counts as not given: absent, null or blank.
func unset(v any) bool {
	if v == nil {
		return true
	}
	s, ok := v.(string)
	return ok && strings.TrimSpace(s) == ""
}

func (d *decoder) template(v any) bool {
	s, ok := v.(string)
	return d.templates && ok && strings.Contains(s, "{{")
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// value decodes v, which is set, into rv, a value of n.typ.
func (d *decoder) value(n *node, v any, rv reflect.Value, path string) {
	switch n.Type {
	case TypeString:
		s, ok := Scalar(v)
		if !ok {
			d.fail(path, "must be a string, got %s", describe(v))
			return
		}
		if n.index >= 0 {
			s = strings.TrimSpace(s)
		}
		rv.SetString(s)
	case TypeEnum:
		s, ok := Scalar(v)
		if !ok {
			d.fail(path, "must be one of %s, got %s", or(n.Enum), describe(v))
			return
		}
		if d.template(v) {
			return
		}
		for _, e := range n.Enum {
			if strings.EqualFold(strings.TrimSpace(s), e) {
				rv.SetString(e)
				return
			}
		}
		d.fail(path, "must be one of %s, got %q", or(n.Enum), s)
	case TypeBoolean:
		switch b := v.(type) {
		case bool:
			rv.SetBool(b)
			return
		case string:
			if d.template(v) {
				return
			}
			if r, err := strconv.ParseBool(strings.TrimSpace(b)); err == nil {
				rv.SetBool(r)
				return
			}
		}
		d.fail(path, "must be true or false, got %s", describe(v))
	case TypeInteger:
		if d.template(v) {
			return
		}
		i, ok := toInt(v)
		if !ok {
			d.fail(path, "must be an integer, got %s", describe(v))
			return
		}
		switch {
		case n.Min != nil && n.Max != nil && (i < *n.Min || i > *n.Max):
			d.fail(path, "must be between %d and %d, got %d", *n.Min, *n.Max, i)
		case n.Min != nil && i < *n.Min:
			d.fail(path, "must be at least %d, got %d", *n.Min, i)
		case n.Max != nil && i > *n.Max:
			d.fail(path, "must be at most %d, got %d", *n.Max, i)
		default:
			rv.SetInt(i)
		}
	case TypeDuration:
		if d.template(v) {
			return
		}
		t, ok := toDuration(v)
		switch {
		case !ok:
			d.fail(path, "must be a duration such as 90s or 5m, or a number of seconds, got %s", describe(v))
		case t <= 0:
			d.fail(path, "must be positive, got %s", describe(v))
		default:
			rv.SetInt(int64(t))
		}
	case TypeSince:
		if d.template(v) {
			return
		}
		if s, ok := v.(string); ok {
			if t, err := time.Parse(time.RFC3339, strings.TrimSpace(s)); err == nil {
				rv.Set(reflect.ValueOf(Since{Time: t}))
				return
			}
		}
		if t, ok := toDuration(v); ok && t > 0 {
			rv.Set(reflect.ValueOf(Since{Ago: t}))
			return
		}
		d.fail(path, "must be a duration such as 10m, a number of seconds or an RFC 3339 time, got %s", describe(v))
	case TypeCommand:
		switch c := v.(type) {
		case string:
			rv.Set(reflect.ValueOf(c))
			return
		case []string:
			rv.Set(reflect.ValueOf(append([]string(nil), c...)))
			return
		case []any:
			list := make([]string, 0, len(c))
			for i, x := range c {
				s, ok := Scalar(x)
				if !ok {
					d.fail(fmt.Sprintf("%s[%d]", path, i), "must be a string, got %s", describe(x))
					return
				}
				list = append(list, s)
			}
			rv.Set(reflect.ValueOf(list))
			return
		}
		d.fail(path, "must be a string (a shell command) or a list of strings, got %s", describe(v))
	case TypeYAML:
		switch v.(type) {
		case string, map[string]any, map[any]any, []any:
			rv.Set(reflect.ValueOf(v))
			return
		}
		d.fail(path, "must be YAML text, a mapping or a list, got %s", describe(v))
	case TypeList:
		d.list(n, v, rv, path)
	case TypeMap:
		d.mapping(n, v, rv, path)
	case TypeObject:
		m, ok := asMap(v)
		if !ok {
			d.fail(path, "must be a mapping, got %s", describe(v))
			return
		}
		d.object(n, m, rv, path)
	}
}

func (d *decoder) list(n *node, v any, rv reflect.Value, path string) {
	var elems []any
	switch l := v.(type) {
	case []any:
		elems = l
	case []string:
		for _, s := range l {
			elems = append(elems, s)
		}
	case string:
		if n.items.Type != TypeString {
			d.fail(path, "must be a list, got %s", describe(v))
			return
		}
		elems = []any{l}
	default:
		d.fail(path, "must be a list, got %s", describe(v))
		return
	}
	out := reflect.MakeSlice(n.typ, len(elems), len(elems))
	for i, e := range elems {
		ep := fmt.Sprintf("%s[%d]", path, i)
		if e == nil {
			d.fail(ep, "must not be null")
			continue
		}
		d.value(n.items, e, out.Index(i), ep)
	}
	rv.Set(out)
}

func (d *decoder) mapping(n *node, v any, rv reflect.Value, path string) {
	out := reflect.MakeMap(n.typ)
	if l, ok := v.([]any); ok && n.items.Type == TypeString {
		// a list of KEY=VALUE, as in Compose files
		for i, x := range l {
			s, ok := x.(string)
			k, val, found := strings.Cut(s, "=")
			if !ok || !found || k == "" {
				d.fail(fmt.Sprintf("%s[%d]", path, i), "must be KEY=VALUE, got %s", describe(x))
				continue
			}
			out.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(val))
		}
		rv.Set(out)
		return
	}
	m, ok := asMap(v)
	if !ok {
		d.fail(path, "must be a mapping, got %s", describe(v))
		return
	}
	for _, k := range sortedKeys(m) {
		x := m[k]
		ev := reflect.New(n.typ.Elem()).Elem()
		switch {
		case x == nil && n.items.Type == TypeString:
			// `KEY:` with no value is an empty string
		case x == nil:
			d.fail(join(path, k), "must be a mapping, got null")
			continue
		default:
			d.value(n.items, x, ev, join(path, k))
		}
		out.SetMapIndex(reflect.ValueOf(k), ev)
	}
	rv.Set(out)
}

// object decodes the mapping m into the struct rv described by n: unknown
// keys, values, required keys, one-of groups, defaults.
func (d *decoder) object(n *node, m map[string]any, rv reflect.Value, path string) {
	known := make([]string, len(n.fields))
	byKey := map[string]*node{}
	for i, f := range n.fields {
		known[i] = f.Key
		byKey[f.Key] = f
	}
	for _, k := range sortedKeys(m) {
		if _, ok := byKey[k]; !ok {
			what := "unknown key"
			if path == "" {
				what += " for " + n.Key
			}
			d.fail(join(path, k), "%s%s; known keys: %s", what, suggest.Hint(k, known), strings.Join(known, ", "))
		}
	}
	groups := map[string][]string{}
	var order []string
	for _, f := range n.fields {
		v, present := m[f.Key]
		fp := join(path, f.Key)
		if f.OneOf != "" {
			if _, seen := groups[f.OneOf]; !seen {
				order = append(order, f.OneOf)
				groups[f.OneOf] = []string{}
			}
		}
		fv := rv.Field(f.index)
		switch {
		case present && !unset(v):
			if f.OneOf != "" {
				groups[f.OneOf] = append(groups[f.OneOf], f.Key)
			}
			target := fv
			if f.ptr {
				target = reflect.New(f.typ).Elem()
			}
			before := len(d.errs)
			d.value(f, v, target, fp)
			if f.ptr && len(d.errs) == before {
				p := reflect.New(f.typ)
				p.Elem().Set(target)
				fv.Set(p)
			}
		case f.Required:
			d.fail(fp, "required")
		case f.def != nil:
			fv.Set(*f.def)
		}
	}
	for _, g := range order {
		var members []string
		for _, f := range n.fields {
			if f.OneOf == g {
				members = append(members, f.Key)
			}
		}
		switch set := groups[g]; {
		case len(set) == 0:
			d.fail(path, "needs one of %s", or(members))
		case len(set) > 1:
			d.fail(path, "takes one of %s, not %s", or(members), strings.Join(set, " and "))
		}
	}
}

func asMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, x := range m {
			out[fmt.Sprint(k)] = x
		}
		return out, true
	}
	return nil, false
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// or writes "a, b or c".
func or(list []string) string {
	if len(list) < 2 {
		return strings.Join(list, "")
	}
	return strings.Join(list[:len(list)-1], ", ") + " or " + list[len(list)-1]
}

// describe names v for a message: a string quoted, a number or boolean as
// written, a list or mapping by its kind.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(x)
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	}
	if s, ok := Scalar(v); ok {
		return s
	}
	return fmt.Sprintf("a %T", v)
}

// Scalar returns a scalar setting value (a string, bool or number, as YAML
// and JSON decode them) as text; ok is false for anything else.
func Scalar(v any) (text string, ok bool) {
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
	case uint64:
		return strconv.FormatUint(x, 10), true
	}
	return "", false
}

func toInt(v any) (int64, bool) {
	switch n := v.(type) {
	case float64:
		if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return 0, false
		}
		return int64(n), true
	case int:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		if n > math.MaxInt64 {
			return 0, false
		}
		return int64(n), true
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		return i, err == nil
	}
	return 0, false
}

// toDuration reads a number of seconds, a string holding one, or a Go
// duration such as "90s".
func toDuration(v any) (time.Duration, bool) {
	switch n := v.(type) {
	case string:
		s := strings.TrimSpace(n)
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return time.Duration(f * float64(time.Second)), true
		}
		d, err := time.ParseDuration(s)
		return d, err == nil
	case float64:
		return time.Duration(n * float64(time.Second)), true
	case int:
		return time.Duration(n) * time.Second, true
	case int64:
		return time.Duration(n) * time.Second, true
	case uint64:
		return time.Duration(n) * time.Second, true
	}
	return 0, false
}
