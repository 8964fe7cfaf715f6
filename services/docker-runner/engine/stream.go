package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// jsonMessage is one line of the progress stream the daemon sends for
// builds, pulls and pushes.
type jsonMessage struct {
	Stream   string `json:"stream"`
	Status   string `json:"status"`
	ID       string `json:"id"`
	Progress string `json:"progress"`
	Error    *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errorDetail"`
	ErrorMessage string          `json:"error"`
	Aux          json.RawMessage `json:"aux"`
}

// DaemonError is an error the Docker Engine reported inside a progress
// stream (a failed build instruction, a refused push), as opposed to an
// error response to the request itself.
type DaemonError struct {
	// Message is the daemon's text, e.g. "The command '/bin/sh -c make'
	// returned a non-zero code: 2".
	Message string
}

// Error returns the daemon's message.
func (e *DaemonError) Error() string { return e.Message }

// readProgress decodes a daemon progress stream until its end, writing build
// output and status lines (not progress bars) to out as they arrive and
// handing aux messages to aux. It returns the first error message in the
// stream as a [*DaemonError].
func readProgress(r io.Reader, out io.Writer, aux func(json.RawMessage)) error {
	dec := json.NewDecoder(r)
	for {
		var m jsonMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read progress stream: %w", err)
		}
		switch {
		case m.Error != nil && m.Error.Message != "":
			return &DaemonError{Message: m.Error.Message}
		case m.ErrorMessage != "":
			return &DaemonError{Message: m.ErrorMessage}
		}
		if len(m.Aux) > 0 && aux != nil {
			aux(m.Aux)
		}
		if m.Stream != "" {
			io.WriteString(out, m.Stream)
		}
		if m.Status != "" && m.Progress == "" {
			if m.ID != "" {
				io.WriteString(out, m.ID+": "+m.Status+"\n")
			} else {
				io.WriteString(out, m.Status+"\n")
			}
		}
	}
}
