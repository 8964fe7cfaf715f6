package apiv1

import (
	"time"

	"github.com/ansflow/ansflow/pkg/spec"
)

// Pipeline is one stored version of a pipeline.
type Pipeline struct {
	Name      string         `json:"name"`
	Version   int            `json:"version"`
	YAML      string         `json:"yaml"`
	Spec      *spec.Pipeline `json:"spec"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	UpdatedBy string         `json:"updated_by,omitempty"`
}

// ApplyRequest is the JSON form of a pipeline upload.
type ApplyRequest struct {
	YAML string `json:"yaml"`
	File string `json:"file,omitempty"`
}

// CloneRequest names the copy.
type CloneRequest struct {
	Name string `json:"name"`
}

// TriggerBody is the JSON body of a run trigger.
type TriggerBody struct {
	Vars    map[string]string `json:"vars,omitempty"`
	Branch  string            `json:"branch,omitempty"`
	Commit  string            `json:"commit,omitempty"`
	Tag     string            `json:"tag,omitempty"`
	RepoURL string            `json:"repo_url,omitempty"`
	// SourceObject is an object returned by POST /api/v1/sources.
	SourceObject string `json:"source_object,omitempty"`
}

// RerunBody is the optional body of POST /api/v1/runs/{id}/rerun. Without
// All the new run keeps the steps that succeeded and runs the rest again,
// from the failed ones on; with All every step runs again (a succeeded
// run too).
type RerunBody struct {
	All bool `json:"all,omitempty"`
}

// SourceBody answers a source upload.
type SourceBody struct {
	Object string `json:"object"`
}
