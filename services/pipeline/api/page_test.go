package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ansflow/ansflow/pkg/apiv1"
	"github.com/ansflow/ansflow/pkg/source"
	"github.com/ansflow/ansflow/services/pipeline/pipelinetest"
)

// TestPagination walks a listing page by page through its Link headers:
// every pipeline comes exactly once and in order, and a bad cursor or limit
// is a 400.
func TestPagination(t *testing.T) {
	base := server(t)
	const n = 7
	for i := range n {
		y := fmt.Sprintf("pipeline:\n  name: page-%02d\n  steps:\n    - name: s\n      type: docker_run\n      command: \"true\"\n", i)
		if code := call(t, "POST", base+"/api/v1/pipelines", "application/yaml", y, nil); code != 200 {
			t.Fatalf("apply %d: HTTP %d", i, code)
		}
	}
	var got []string
	next, pages := base+"/api/v1/pipelines?limit=3", 0
	for next != "" {
		req, _ := http.NewRequest(http.MethodGet, next, nil)
		req.Header.Set("Authorization", "Bearer "+tokenFor(next))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var page []apiv1.Pipeline
		if err := decode(resp, &page); err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page) > 3 {
			t.Fatalf("page of %d over the limit 3", len(page))
		}
		for _, p := range page {
			got = append(got, p.Name)
		}
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			if resp.Header.Get("X-Next-Cursor") == "" {
				t.Fatalf("Link %q without X-Next-Cursor", l)
			}
			next = base + strings.TrimSuffix(strings.TrimPrefix(strings.Split(l, ";")[0], "<"), ">")
		}
	}
	want := []string{"page-00", "page-01", "page-02", "page-03", "page-04", "page-05", "page-06"}
	if fmt.Sprint(got) != fmt.Sprint(want) || pages != 3 {
		t.Fatalf("walked %d pages: %v, want 3 pages of %v", pages, got, want)
	}
	for _, q := range []string{"limit=0", "limit=x", "cursor=%25%25", "cursor="} {
		code := call(t, "GET", base+"/api/v1/pipelines?"+q, "", "", nil)
		if want := 400; q == "cursor=" {
			if code != 200 {
				t.Errorf("%s: HTTP %d, want 200", q, code)
			}
		} else if code != want {
			t.Errorf("%s: HTTP %d, want %d", q, code, want)
		}
	}
	var all []apiv1.Pipeline
	if call(t, "GET", base+"/api/v1/pipelines?limit=100000", "", "", &all); len(all) != n {
		t.Errorf("limit over the cap: %d pipelines, want %d", len(all), n)
	}
}

// TestSourceUploadLimit streams uploads into the object store: one within
// the limit is stored whole, one over it is a 413 and leaves no object.
func TestSourceUploadLimit(t *testing.T) {
	e := pipelinetest.Start(t)
	bearerFor[e.Srv.URL] = e.AdminToken
	e.Svc.API.MaxSourceBytes = 64 << 10
	okBody := bytes.Repeat([]byte("a"), 48<<10)
	var sb apiv1.SourceBody
	if code := call(t, "POST", e.Srv.URL+"/api/v1/sources", "application/gzip", string(okBody), &sb); code != 201 || sb.Object == "" {
		t.Fatalf("upload within the limit: HTTP %d %+v", code, sb)
	}
	objects, err := source.Store(t.Context(), e.NATS.JS)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := objects.GetBytes(t.Context(), sb.Object); err != nil || !bytes.Equal(got, okBody) {
		t.Fatalf("stored object: %d bytes, %v", len(got), err)
	}
	var eb apiv1.ErrorBody
	if code := call(t, "POST", e.Srv.URL+"/api/v1/sources", "application/gzip", string(bytes.Repeat([]byte("b"), 200<<10)), &eb); code != 413 {
		t.Fatalf("upload over the limit: HTTP %d %+v", code, eb)
	}
	names, err := objects.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0].Name != sb.Object {
		t.Fatalf("objects after a refused upload: %d", len(names))
	}
}

func decode(resp *http.Response, out any) error {
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
