package auth_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/auth"
)

func TestRolesAreOrdered(t *testing.T) {
	for _, c := range []struct {
		have, need auth.Role
		want       bool
	}{
		{auth.RoleViewer, auth.RoleViewer, true}, {auth.RoleViewer, auth.RoleOperator, false}, {auth.RoleViewer, auth.RoleAdmin, false},
		{auth.RoleOperator, auth.RoleViewer, true}, {auth.RoleOperator, auth.RoleOperator, true}, {auth.RoleOperator, auth.RoleAdmin, false},
		{auth.RoleAdmin, auth.RoleViewer, true}, {auth.RoleAdmin, auth.RoleAdmin, true},
		{"root", auth.RoleViewer, false}, {"", auth.RoleViewer, false},
	} {
		if got := c.have.Allows(c.need); got != c.want {
			t.Errorf("%q.Allows(%q) = %v, want %v", c.have, c.need, got, c.want)
		}
	}
	if _, err := auth.ParseRole(" Operator "); err != nil {
		t.Errorf("ParseRole: %v", err)
	}
	if _, err := auth.ParseRole("root"); err == nil {
		t.Error("ParseRole(root) = nil error")
	}
}

func TestGrantsMatchPipelineGlobs(t *testing.T) {
	web := &auth.Identity{Kind: auth.KindToken, ID: "t", Role: auth.RoleOperator, Pipelines: []string{"web-*", "api"}}
	all := &auth.Identity{Kind: auth.KindToken, ID: "a", Role: auth.RoleViewer}
	for _, c := range []struct {
		id       *auth.Identity
		need     auth.Role
		pipeline string
		want     bool
	}{
		{web, auth.RoleOperator, "web-front", true},
		{web, auth.RoleViewer, "api", true},
		{web, auth.RoleOperator, "apix", false},
		{web, auth.RoleOperator, "mobile", false},
		{web, auth.RoleAdmin, "web-front", false},
		{web, auth.RoleViewer, "", false}, // a global action needs every pipeline
		{all, auth.RoleViewer, "", true},
		{all, auth.RoleViewer, "anything", true},
		{all, auth.RoleOperator, "anything", false},
		{nil, auth.RoleViewer, "x", false},
	} {
		if got := c.id.Can(c.need, c.pipeline); got != c.want {
			t.Errorf("%v.Can(%s, %q) = %v, want %v", c.id.Actor(), c.need, c.pipeline, got, c.want)
		}
	}
	if err := auth.ValidatePipelineGlobs([]string{"ok-*", "[bad"}); err == nil {
		t.Error("ValidatePipelineGlobs accepted [bad")
	}
	if err := auth.ValidatePipelineGlobs([]string{" "}); err == nil {
		t.Error("ValidatePipelineGlobs accepted an empty pattern")
	}
}

func TestATokenGrantsNoMoreThanItsCreatorHas(t *testing.T) {
	soon := time.Now().Add(time.Hour)
	later := soon.Add(time.Hour)
	limited := &auth.Identity{Kind: auth.KindToken, ID: "l", Role: auth.RoleAdmin, Pipelines: []string{"web-*", "api"}, ExpiresAt: &soon}
	op := &auth.Identity{Kind: auth.KindToken, ID: "o", Role: auth.RoleOperator}
	for _, c := range []struct {
		name    string
		creator *auth.Identity
		spec    auth.TokenSpec
		ok      bool
	}{
		{"same glob", limited, auth.TokenSpec{Role: auth.RoleViewer, Pipelines: []string{"web-*"}, ExpiresAt: &soon}, true},
		{"covered name", limited, auth.TokenSpec{Role: auth.RoleOperator, Pipelines: []string{"web-front", "api"}, ExpiresAt: &soon}, true},
		{"wider glob", limited, auth.TokenSpec{Role: auth.RoleViewer, Pipelines: []string{"*"}, ExpiresAt: &soon}, false},
		{"overlapping glob", limited, auth.TokenSpec{Role: auth.RoleViewer, Pipelines: []string{"web-f*"}, ExpiresAt: &soon}, false},
		{"every pipeline", limited, auth.TokenSpec{Role: auth.RoleViewer, ExpiresAt: &soon}, false},
		{"outlives", limited, auth.TokenSpec{Role: auth.RoleViewer, Pipelines: []string{"api"}, ExpiresAt: &later}, false},
		{"never expires", limited, auth.TokenSpec{Role: auth.RoleViewer, Pipelines: []string{"api"}}, false},
		{"higher role", op, auth.TokenSpec{Role: auth.RoleAdmin}, false},
		{"lower role", op, auth.TokenSpec{Role: auth.RoleViewer}, true},
		{"system", auth.System, auth.TokenSpec{Role: auth.RoleAdmin}, true},
	} {
		err := c.creator.MayGrant(c.spec)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, auth.ErrForbidden)) {
			t.Errorf("%s: MayGrant = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
