package steps

import (
	"regexp"
	"strings"
	"unicode"
)

// Patterns of the strings the decoder accepts in place of a typed value.
const (
	templatePattern = `\{\{`
	intPattern      = `^\s*[+-]?[0-9]+\s*$|^\s*$`
	boolPattern     = `^\s*(1|t|T|TRUE|true|True|0|f|F|FALSE|false|False)?\s*$`
	durationPattern = `^\s*(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+\s*$|^\s*[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*$|^\s*$`
	rfc3339Pattern  = `^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})\s*$`
)

var (
	scalarTypes = []any{"string", "number", "boolean"}
	template    = map[string]any{"type": "string", "pattern": templatePattern}
	null        = map[string]any{"type": "null"}
)

// ConfigSchema returns the JSON Schema (draft 2020-12) of stepType's config
// mapping, derived from the same definition as [Check]: what Check accepts
// the schema accepts, and a value of the wrong type is refused by both. It
// returns nil for an unknown step type.
func ConfigSchema(stepType string) map[string]any {
	e, ok := registry[stepType]
	if !ok {
		return nil
	}
	s := objectSchema(e.root)
	s["title"] = stepType + " " + e.ConfigKey
	s["description"] = e.Help
	return s
}

// NeedsConfig reports whether a step of type stepType must have its config
// mapping: it has a required key or a one-of group.
func NeedsConfig(stepType string) bool {
	e, ok := registry[stepType]
	if !ok {
		return false
	}
	for _, f := range e.root.fields {
		if f.Required || f.OneOf != "" {
			return true
		}
	}
	return false
}

func objectSchema(n *node) map[string]any {
	props := map[string]any{}
	var required []any
	groups := map[string][]any{}
	var order []string
	for _, f := range n.fields {
		props[f.Key] = fieldSchema(f)
		if f.Required {
			required = append(required, f.Key)
		}
		if f.OneOf != "" {
			if _, ok := groups[f.OneOf]; !ok {
				order = append(order, f.OneOf)
			}
			groups[f.OneOf] = append(groups[f.OneOf], map[string]any{"required": []any{f.Key}})
		}
	}
	s := map[string]any{"type": "object", "additionalProperties": false, "properties": props}
	if len(required) > 0 {
		s["required"] = required
	}
	var all []any
	for _, g := range order {
		all = append(all, map[string]any{"oneOf": groups[g]})
	}
	if len(all) > 0 {
		s["allOf"] = all
	}
	return s
}

// fieldSchema is the schema of one value of n; null stands for unset.
func fieldSchema(n *node) map[string]any {
	var alts []any
	switch n.Type {
	case TypeString:
		alts = []any{map[string]any{"type": scalarTypes}}
	case TypeEnum:
		alts = []any{map[string]any{"enum": strs(n.Enum)}, map[string]any{"type": "string", "pattern": enumPattern(n.Enum)}, template}
	case TypeBoolean:
		alts = []any{map[string]any{"type": "boolean"}, map[string]any{"type": "string", "pattern": boolPattern}, template}
	case TypeInteger:
		i := map[string]any{"type": "integer"}
		if n.Min != nil {
			i["minimum"] = *n.Min
		}
		if n.Max != nil {
			i["maximum"] = *n.Max
		}
		alts = []any{i, map[string]any{"type": "string", "pattern": intPattern}, template}
	case TypeDuration:
		alts = []any{map[string]any{"type": "number", "exclusiveMinimum": 0}, map[string]any{"type": "string", "pattern": durationPattern}, template}
	case TypeSince:
		alts = []any{map[string]any{"type": "number", "exclusiveMinimum": 0}, map[string]any{"type": "string", "pattern": durationPattern}, map[string]any{"type": "string", "pattern": rfc3339Pattern}, template}
	case TypeCommand:
		alts = []any{map[string]any{"type": "string"}, map[string]any{"type": "array", "items": map[string]any{"type": scalarTypes}}}
	case TypeYAML:
		alts = []any{map[string]any{"type": []any{"string", "object", "array"}}}
	case TypeList:
		if n.items.Type == TypeString {
			alts = []any{map[string]any{"type": "string"}, map[string]any{"type": "array", "items": map[string]any{"type": scalarTypes}}}
		} else {
			alts = []any{map[string]any{"type": "array", "items": fieldSchema(n.items)}}
		}
	case TypeMap:
		if n.items.Type == TypeString {
			alts = []any{
				map[string]any{"type": "object", "additionalProperties": map[string]any{"type": append(append([]any{}, scalarTypes...), "null")}},
				map[string]any{"type": "array", "items": map[string]any{"type": "string", "pattern": "^[^=]+="}},
			}
		} else {
			alts = []any{map[string]any{"type": "object", "additionalProperties": fieldSchema(n.items)}}
		}
	case TypeObject:
		alts = []any{objectSchema(n)}
	}
	s := map[string]any{}
	if n.index >= 0 {
		// a key of an object may be null (unset); a list item or map value
		// of an object type may not
		alts = append(alts, null)
	}
	if len(alts) == 1 {
		for k, v := range alts[0].(map[string]any) {
			s[k] = v
		}
	} else {
		s["anyOf"] = alts
	}
	if n.Help != "" {
		s["description"] = n.Help
	}
	if n.Default != nil {
		s["default"] = n.Default
	}
	return s
}

func strs(l []string) []any {
	out := make([]any, len(l))
	for i, s := range l {
		out[i] = s
	}
	return out
}

// enumPattern matches any of values ignoring case (JSON Schema's regular
// expressions have no flags), with the blanks the decoder trims.
func enumPattern(values []string) string {
	alts := make([]string, len(values))
	for i, v := range values {
		var b strings.Builder
		for _, r := range v {
			lo, up := unicode.ToLower(r), unicode.ToUpper(r)
			if lo == up {
				b.WriteString(regexp.QuoteMeta(string(r)))
				continue
			}
			b.WriteString("[" + string(up) + string(lo) + "]")
		}
		alts[i] = b.String()
	}
	return `^\s*(` + strings.Join(alts, "|") + `)\s*$`
}
