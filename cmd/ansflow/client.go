package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/auth"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// client talks to the pipeline service's REST API.
type client struct {
	base string
	http *http.Client
}

// newClient returns a client of the API at base that sends token (none
// when empty) as `Authorization: Bearer`.
func newClient(base, token string) *client {
	return &client{base: strings.TrimSuffix(base, "/"), http: &http.Client{Transport: &auth.BearerTransport{Token: token}}}
}

// apiError is an error response of the API.
type apiError struct {
	Status int
	Body   apiv1.ErrorBody
}

func (e *apiError) Error() string {
	if len(e.Body.Errors) > 0 {
		var lines []string
		for _, d := range e.Body.Errors {
			loc := d.File
			if d.Line > 0 {
				loc += fmt.Sprintf(":%d", d.Line)
			}
			if d.Field != "" {
				loc += ": " + d.Field
			}
			lines = append(lines, loc+": "+d.Message)
		}
		return strings.Join(lines, "\n")
	}
	msg := fmt.Sprintf("%s (HTTP %d)", e.Body.Error, e.Status)
	if e.Status == http.StatusUnauthorized {
		msg += "; pass --token TOKEN, set $ANSFLOW_TOKEN, or --data-dir of the server's `ansflow up`"
	}
	return msg
}

func (c *client) do(ctx context.Context, method, path, ctype string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("X-Ansflow-Trigger", "cli")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		ae := &apiError{Status: resp.StatusCode}
		if json.Unmarshal(b, &ae.Body) != nil {
			ae.Body.Error = strings.TrimSpace(string(b))
		}
		return ae
	}
	switch o := out.(type) {
	case nil:
	case *[]byte:
		*o = b
	default:
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

func (c *client) applyPipeline(ctx context.Context, file string, yamlText []byte) (*apiv1.Pipeline, error) {
	body, _ := json.Marshal(apiv1.ApplyRequest{YAML: string(yamlText), File: file})
	var rec apiv1.Pipeline
	return &rec, c.do(ctx, http.MethodPost, "/api/v1/pipelines", "application/json", bytes.NewReader(body), &rec)
}

func (c *client) trigger(ctx context.Context, pipeline string, tb apiv1.TriggerBody) (*apiv1.Run, error) {
	body, _ := json.Marshal(tb)
	var run apiv1.Run
	return &run, c.do(ctx, http.MethodPost, "/api/v1/pipelines/"+url.PathEscape(pipeline)+"/runs", "application/json", bytes.NewReader(body), &run)
}

func (c *client) getRun(ctx context.Context, id string) (*apiv1.Run, error) {
	var run apiv1.Run
	return &run, c.do(ctx, http.MethodGet, "/api/v1/runs/"+url.PathEscape(id), "", nil, &run)
}

func (c *client) uploadSource(ctx context.Context, archive []byte) (string, error) {
	var sb apiv1.SourceBody
	err := c.do(ctx, http.MethodPost, "/api/v1/sources", "application/gzip", bytes.NewReader(archive), &sb)
	return sb.Object, err
}

// follow streams a run's log and status lines to fn until the run ends.
func (c *client) follow(ctx context.Context, id string, fn func(apiv1.LogLine)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/runs/"+url.PathEscape(id)+"/logs", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("follow run %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		ae := &apiError{Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if json.Unmarshal(b, &ae.Body) != nil {
			ae.Body.Error = strings.TrimSpace(string(b))
		}
		return fmt.Errorf("follow run %s: %w", id, ae)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		var l apiv1.LogLine
		if err := json.Unmarshal([]byte(line[len("data: "):]), &l); err != nil || l.Kind == "" {
			continue
		}
		fn(l)
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("follow run %s: %w", id, err)
	}
	return nil
}
