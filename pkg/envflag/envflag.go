// Package envflag gives command-line flags defaults from environment
// variables, the way every AnsFlow binary reads its configuration: the flag
// wins, then the variable, then the built-in default. A variable that does
// not parse is an error reported by [Env.Err], never silently ignored.
package envflag

import (
	"fmt"
	"strconv"
	"time"
)

// Env reads defaults from an environment lookup (os.LookupEnv in a main,
// a map in tests). It is not safe for concurrent use.
type Env struct {
	lookup func(string) (string, bool)
	err    error
}

// New returns an Env over lookup.
func New(lookup func(string) (string, bool)) *Env { return &Env{lookup: lookup} }

func (e *Env) get(key string) (string, bool) {
	v, ok := e.lookup(key)
	return v, ok && v != ""
}

func (e *Env) fail(key, v, want string) {
	if e.err == nil {
		e.err = fmt.Errorf("%s=%q is not %s", key, v, want)
	}
}

// String returns the variable key, or def when it is unset or empty.
func (e *Env) String(key, def string) string {
	if v, ok := e.get(key); ok {
		return v
	}
	return def
}

// Int returns the variable key as an int, or def.
func (e *Env) Int(key string, def int) int {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.fail(key, v, "a number")
		return def
	}
	return n
}

// Duration returns the variable key as a time.Duration, or def.
func (e *Env) Duration(key string, def time.Duration) time.Duration {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.fail(key, v, "a duration")
		return def
	}
	return d
}

// Bool returns the variable key as a bool, or def.
func (e *Env) Bool(key string, def bool) bool {
	v, ok := e.get(key)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.fail(key, v, "a boolean")
		return def
	}
	return b
}

// Err returns the first variable that did not parse.
func (e *Env) Err() error { return e.err }
