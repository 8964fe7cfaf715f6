package engine

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// decodeConfig decodes a request's docker_config into its step type's
// definition, T, one of the config structs of [steps]: the engine reads no
// setting that pipeline validation does not know. A value that does not fit
// fails the step with [ErrInvalidStep].
func decodeConfig[T any](cfg map[string]any) (*T, error) {
	c, err := steps.Decode[T](cfg)
	if err != nil {
		var fe *steps.FieldError
		if errors.As(err, &fe) && fe.Path != "" {
			return nil, fmt.Errorf("%w: docker_config.%s: %s", ErrInvalidStep, fe.Path, fe.Msg)
		}
		return nil, fmt.Errorf("%w: docker_config: %w", ErrInvalidStep, err)
	}
	return c, nil
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
			s, ok := steps.Scalar(x)
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
