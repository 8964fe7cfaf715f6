package engine

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/spec/steps"
)

// TestEngineUsesTheDefinitions checks that the engine executes exactly the
// Docker step types pkg/spec/steps defines, and that its decoding of
// docker_config refuses what validation refuses, as ErrInvalidStep naming
// the key.
func TestEngineUsesTheDefinitions(t *testing.T) {
	if got, want := (&Engine{}).Types(), steps.Names("docker"); !slices.Equal(got, want) {
		t.Errorf("engine executes %v, definitions are %v", got, want)
	}
	_, err := decodeConfig[steps.DockerBuildConfig](map[string]any{"no_cache": "sometimes"})
	if !errors.Is(err, ErrInvalidStep) || !strings.Contains(err.Error(), `docker_config.no_cache: must be true or false, got "sometimes"`) {
		t.Errorf("bad value: %v", err)
	}
	_, err = decodeConfig[steps.DockerPushConfig](map[string]any{"registry": "x"})
	if !errors.Is(err, ErrInvalidStep) || !strings.Contains(err.Error(), "docker_config.registry: unknown key for docker_push") {
		t.Errorf("unknown key: %v", err)
	}
	opts := buildOptions(&steps.DockerBuildConfig{Network: "none", BuildArgs: map[string]string{"A": "1"}, NoCache: true})
	if opts.NetworkMode != "none" || *opts.BuildArgs["A"] != "1" || !opts.NoCache || !opts.Remove {
		t.Errorf("build options: %+v", opts)
	}
}
