package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// params reads a step's k8s_config. Values arrive as JSON (numbers are
// float64) after template resolution, which turns "{{x}}" into strings, so
// numbers and booleans are also accepted as strings.
type params map[string]any

// has reports whether key is set to something other than null or "".
func (p params) has(key string) bool {
	v, ok := p[key]
	if !ok || v == nil {
		return false
	}
	if s, ok := v.(string); ok && strings.TrimSpace(s) == "" {
		return false
	}
	return true
}

// str returns a string value ("" when unset).
func (p params) str(key string) (string, error) {
	switch v := p[key].(type) {
	case nil:
		return "", nil
	case string:
		return strings.TrimSpace(v), nil
	case float64, bool, int, int64:
		return fmt.Sprint(v), nil
	default:
		return "", invalid(key, "want a string, got %T", v)
	}
}

// boolean returns a boolean value, def when unset.
func (p params) boolean(key string, def bool) (bool, error) {
	switch v := p[key].(type) {
	case nil:
		return def, nil
	case bool:
		return v, nil
	case string:
		if strings.TrimSpace(v) == "" {
			return def, nil
		}
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return false, invalid(key, "want true or false, got %q", v)
		}
		return b, nil
	default:
		return false, invalid(key, "want true or false, got %v", v)
	}
}

// integer returns a whole number and whether it was set.
func (p params) integer(key string) (int64, bool, error) {
	if !p.has(key) {
		return 0, false, nil
	}
	n, err := toInt(p[key])
	if err != nil {
		return 0, false, invalid(key, "%v", err)
	}
	return n, true, nil
}

// seconds returns a duration given in seconds (a number, or a string holding
// a number or a Go duration such as "90s" or "5m"), def when unset.
func (p params) seconds(key string, def time.Duration) (time.Duration, error) {
	if !p.has(key) {
		return def, nil
	}
	d, err := toDuration(p[key])
	if err != nil {
		return 0, invalid(key, "%v", err)
	}
	if d <= 0 {
		return 0, invalid(key, "must be positive")
	}
	return d, nil
}

// decode decodes p[key] into v, rejecting unknown fields so that a
// misspelled key fails the step instead of being ignored.
func (p params) decode(key string, v any) error {
	b, err := json.Marshal(p[key])
	if err != nil {
		return invalid(key, "%v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid(key, "%v", err)
	}
	return nil
}

func toInt(v any) (int64, error) {
	switch n := v.(type) {
	case float64:
		if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return 0, fmt.Errorf("want a whole number, got %v", n)
		}
		return int64(n), nil
	case int:
		return int64(n), nil
	case int64:
		return n, nil
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("want a whole number, got %q", n)
		}
		return i, nil
	}
	return 0, fmt.Errorf("want a whole number, got %v", v)
}

func toDuration(v any) (time.Duration, error) {
	if s, ok := v.(string); ok {
		s = strings.TrimSpace(s)
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return time.Duration(f * float64(time.Second)), nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("want seconds or a duration such as 90s or 5m, got %q", s)
		}
		return d, nil
	}
	switch n := v.(type) {
	case float64:
		return time.Duration(n * float64(time.Second)), nil
	case int:
		return time.Duration(n) * time.Second, nil
	case int64:
		return time.Duration(n) * time.Second, nil
	}
	return 0, fmt.Errorf("want seconds or a duration such as 90s or 5m, got %v", v)
}

// flexInt is an integer that also decodes from a numeric string.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	n, err := toInt(v)
	if err != nil {
		return err
	}
	*f = flexInt(n)
	return nil
}

// int32p returns f as an *int32 (nil for nil f).
func (f *flexInt) int32p() *int32 {
	if f == nil {
		return nil
	}
	n := int32(*f)
	return &n
}

// flexString is a string that also decodes from a number or a boolean, as
// YAML writers produce for values like `VERSION: 2`.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		*f = flexString(x)
	case float64:
		*f = flexString(strconv.FormatFloat(x, 'f', -1, 64))
	case bool:
		*f = flexString(strconv.FormatBool(x))
	case nil:
		*f = ""
	default:
		return fmt.Errorf("want a string, got %s", b)
	}
	return nil
}

// flexStrings is a list of strings that also decodes from a single string.
type flexStrings []string

func (f *flexStrings) UnmarshalJSON(b []byte) error {
	var one flexString
	if err := json.Unmarshal(b, &one); err == nil {
		*f = flexStrings{string(one)}
		return nil
	}
	var many []flexString
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings, got %s", b)
	}
	*f = make(flexStrings, len(many))
	for i, s := range many {
		(*f)[i] = string(s)
	}
	return nil
}
