// Package secret is AnsFlow's secret store and the sealing that carries a
// secret to a runner.
//
// A secret is a named value at global scope or at the scope of one
// pipeline. The pipeline service keeps it in the key-value bucket
// [topology.BucketSecrets] encrypted with AES-256-GCM under the operator's
// secrets key ([Key]); the bucket holds only ciphertext and [Meta]. When a
// step asks for a secret, the pipeline service opens it and seals it with
// NaCl box (X25519, anonymous sender) to the public key of every runner
// identity ([Identity]) announced for the step's pool, binding it to the
// run, step and attempt ([Sealed]). Only a runner holding such an identity
// can open it, just before it starts the step's container.
package secret

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"
)

// MinValueBytes is the shortest value a secret may have: shorter values
// could not be masked in logs without garbling ordinary output.
const MinValueBytes = 3

// MaxValueBytes is the longest value a secret may have.
const MaxValueBytes = 64 << 10

// Errors returned by the store and by [Filters.Allow].
var (
	// ErrNotFound is returned for a secret that does not exist.
	ErrNotFound = errors.New("secret not found")
	// ErrInvalid is wrapped by errors caused by a bad name, value or filter.
	ErrInvalid = errors.New("invalid secret")
	// ErrNotAllowed is wrapped when a secret's filters refuse a run.
	ErrNotAllowed = errors.New("secret not allowed for this run")
)

var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// ValidName reports whether name is a valid secret name (and environment
// variable name): letters, digits and _, not starting with a digit, at most
// 128 characters.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// CheckName returns an error wrapping [ErrInvalid] for an invalid name.
func CheckName(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%w: name %q: want letters, digits and _ (not starting with a digit, at most 128)", ErrInvalid, name)
	}
	return nil
}

// CheckValue returns an error wrapping [ErrInvalid] for a value that is too
// short to mask or too long.
func CheckValue(v []byte) error {
	switch {
	case len(v) < MinValueBytes:
		return fmt.Errorf("%w: value has %d bytes; at least %d are needed so that it can be masked in logs", ErrInvalid, len(v), MinValueBytes)
	case len(v) > MaxValueBytes:
		return fmt.Errorf("%w: value has %d bytes; at most %d are allowed", ErrInvalid, len(v), MaxValueBytes)
	}
	return nil
}

// Scope says where a secret lives: Pipeline "" is the global scope.
type Scope struct {
	Pipeline string `json:"pipeline,omitempty"`
}

// String is "global" or "pipeline NAME".
func (s Scope) String() string {
	if s.Pipeline == "" {
		return "global"
	}
	return "pipeline " + s.Pipeline
}

// Filters limit the runs a secret is given to, like Woodpecker's secret
// filters. An empty list allows everything; a set list must match.
type Filters struct {
	// Events are trigger kinds (api, cli, cron, webhook, rerun) or webhook
	// events (push, tag, pull_request) the secret is given to.
	Events []string `json:"events,omitempty"`
	// Branches are globs (path.Match) over the run's git_branch.
	Branches []string `json:"branches,omitempty"`
	// Images are globs (path.Match) over the step's image, with or without
	// its tag.
	Images []string `json:"images,omitempty"`
	// AllowForks gives the secret to runs from forks' pull requests too;
	// without it they never receive it.
	AllowForks bool `json:"allow_forks,omitempty"`
}

// Validate checks every glob.
func (f Filters) Validate() error {
	for _, g := range append(append([]string{}, f.Branches...), f.Images...) {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return fmt.Errorf("%w: filter %q is not a valid glob", ErrInvalid, g)
		}
	}
	for _, e := range f.Events {
		if !contains(Events, e) {
			return fmt.Errorf("%w: filter event %q: want one of %s", ErrInvalid, e, strings.Join(Events, ", "))
		}
	}
	return nil
}

// Events are the values [Filters.Events] accepts.
var Events = []string{"api", "cli", "cron", "webhook", "rerun", "push", "tag", "pull_request"}

// RunFacts is what the filters are checked against.
type RunFacts struct {
	// Trigger is the run's trigger kind (api, cli, cron, webhook, rerun).
	Trigger string
	// Event is the webhook event (push, tag, pull_request), if any.
	Event string
	// Branch is the run's git_branch.
	Branch string
	// Image is the step's image (with its tag, if any).
	Image string
	// Fork marks a run of a pull request from a fork.
	Fork bool
}

// Allow returns nil when the filters admit the run, and otherwise an error
// wrapping [ErrNotAllowed] that names the filter.
func (f Filters) Allow(r RunFacts) error {
	if r.Fork && !f.AllowForks {
		return fmt.Errorf("%w: the run is from a fork's pull request (the secret's filter allow_forks is off)", ErrNotAllowed)
	}
	if len(f.Events) > 0 && !contains(f.Events, r.Trigger) && (r.Event == "" || !contains(f.Events, r.Event)) {
		ev := r.Trigger
		if r.Event != "" {
			ev += "/" + r.Event
		}
		return fmt.Errorf("%w: event %s is not in the secret's events filter %v", ErrNotAllowed, ev, f.Events)
	}
	if len(f.Branches) > 0 && !matchAny(f.Branches, r.Branch) {
		return fmt.Errorf("%w: branch %q is not in the secret's branches filter %v", ErrNotAllowed, r.Branch, f.Branches)
	}
	if len(f.Images) > 0 {
		img := r.Image
		bare := img
		if i := strings.LastIndex(img, ":"); i > strings.LastIndex(img, "/") {
			bare = img[:i]
		}
		if !matchAny(f.Images, img) && !matchAny(f.Images, bare) {
			return fmt.Errorf("%w: image %q is not in the secret's images filter %v", ErrNotAllowed, r.Image, f.Images)
		}
	}
	return nil
}

func matchAny(globs []string, s string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Meta is what the store keeps and lists about a secret besides its
// ciphertext. It never holds the value.
type Meta struct {
	Name      string    `json:"name"`
	Scope     Scope     `json:"scope"`
	Filters   Filters   `json:"filters"`
	CreatedBy string    `json:"created_by,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedBy string    `json:"updated_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}
