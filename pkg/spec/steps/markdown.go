package steps

import (
	"fmt"
	"strings"
)

// Markdown renders the step-type reference, docs/steps.md, from the
// definitions: per step type, a table of its settings and one per nested
// object.
func Markdown() string {
	var b strings.Builder
	b.WriteString("# Step types\n\n")
	b.WriteString("<!-- Generated from pkg/spec/steps by `go generate ./pkg/spec`; do not edit. -->\n\n")
	b.WriteString("Each step's settings go under `docker_config` (Docker steps) or `k8s_config`\n")
	b.WriteString("(Kubernetes steps). `ansflow validate`, the API, the runners and\n")
	b.WriteString("[pipeline.schema.json](pipeline.schema.json) all read these definitions\n")
	b.WriteString("(pkg/spec/steps); `GET /api/v1/step-types` serves them as JSON.\n\n")
	b.WriteString("Types: a *string* is any scalar; an *integer*, *boolean* or *duration*\n")
	b.WriteString("(a positive number of seconds, or `90s`, `5m`) may also be written as a\n")
	b.WriteString("string holding one, and any of them as a `{{variable}}` resolved when the\n")
	b.WriteString("step runs; an *enum* is matched ignoring case; a *list of strings* may be a\n")
	b.WriteString("single string; a *map of strings* may be a list of `KEY=VALUE`. A null or\n")
	b.WriteString("blank value counts as unset. An unknown key is an error.\n\n")
	for _, d := range definitions {
		e := registry[d.name]
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", d.name, d.help)
		if e.Example != "" {
			fmt.Fprintf(&b, "```yaml\n%s\n```\n\n", e.Example)
		}
		if len(e.root.fields) == 0 {
			fmt.Fprintf(&b, "It takes no `%s`.\n\n", e.ConfigKey)
		} else {
			table(&b, "`"+e.ConfigKey+"`", e.root)
		}
		failuresMarkdown(&b, d.name)
	}
	return b.String()
}

// table writes the settings of object n, titled title, then the tables of
// its nested objects.
func table(b *strings.Builder, title string, n *node) {
	fmt.Fprintf(b, "Settings of %s:\n\n| Key | Type | Default | Description |\n|---|---|---|---|\n", title)
	var nested []*node
	var nestedTitles []string
	groups := map[string][]string{}
	for _, f := range n.fields {
		typ := typeName(f)
		if f.Required {
			typ += ", **required**"
		}
		def := ""
		if f.Default != nil {
			def = fmt.Sprintf("`%v`", f.Default)
		}
		help := strings.ReplaceAll(f.Help, "|", `\|`)
		fmt.Fprintf(b, "| `%s` | %s | %s | %s |\n", f.Key, typ, def, help)
		if f.OneOf != "" {
			groups[f.OneOf] = append(groups[f.OneOf], "`"+f.Key+"`")
		}
		if o, suffix := objectOf(f); o != nil {
			nested = append(nested, o)
			nestedTitles = append(nestedTitles, strings.Trim(title, "`")+"."+f.Key+suffix)
		}
	}
	b.WriteString("\n")
	for _, g := range sortedGroupNames(n) {
		fmt.Fprintf(b, "Exactly one of %s is set.\n\n", or(groups[g]))
	}
	for i, o := range nested {
		table(b, "`"+nestedTitles[i]+"`", o)
	}
}

// objectOf returns the object node within f (itself, or its list items or
// map values) and the path suffix naming one of them.
func objectOf(f *node) (*node, string) {
	switch {
	case f.Type == TypeObject:
		return f, ""
	case f.Type == TypeList && f.items.Type == TypeObject:
		return f.items, "[]"
	case f.Type == TypeMap && f.items.Type == TypeObject:
		return f.items, ".NAME"
	}
	return nil, ""
}

func sortedGroupNames(n *node) []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range n.fields {
		if f.OneOf != "" && !seen[f.OneOf] {
			seen[f.OneOf] = true
			out = append(out, f.OneOf)
		}
	}
	return out
}

func typeName(f *node) string {
	switch f.Type {
	case TypeEnum:
		return "enum: " + strings.Join(f.Enum, ", ")
	case TypeInteger:
		switch {
		case f.Min != nil && f.Max != nil:
			return fmt.Sprintf("integer %d–%d", *f.Min, *f.Max)
		case f.Min != nil:
			return fmt.Sprintf("integer ≥ %d", *f.Min)
		}
		return "integer"
	case TypeList:
		if f.items.Type == TypeObject {
			return "list of objects"
		}
		return "list of strings"
	case TypeMap:
		if f.items.Type == TypeObject {
			return "map of objects"
		}
		return "map of strings"
	case TypeCommand:
		return "string or list of strings"
	case TypeYAML:
		return "YAML text, mapping or list"
	case TypeSince:
		return "duration or RFC 3339 time"
	}
	return f.Type
}
