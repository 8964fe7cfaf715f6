package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ansflow/ansflow/pkg/auth"
	"github.com/ansflow/ansflow/pkg/spec"
	"github.com/ansflow/ansflow/services/audit/store"
)

// Paths of the REST API.
const (
	PathQuery  = "/api/v1/audit"
	PathVerify = "/api/v1/audit/verify"
)

// MaxHTTPLimit caps the limit parameter of the REST API.
const MaxHTTPLimit = 1000

// Reader answers audit queries. A [store.Store] is one (the embedded
// store, as with "ansflow audit query --data-dir"), and so is a [Client]
// (a running audit service).
type Reader interface {
	Query(ctx context.Context, f store.Filter) (store.Page, error)
	Verify(ctx context.Context) (store.VerifyResult, error)
}

var (
	_ Reader = store.Store(nil)
	_ Reader = (*Client)(nil)
)

// Routes returns the service's REST API over its store; see [Routes].
func (s *Service) Routes() []auth.Route { return Routes(s.st, s.log) }

// NewHandler serves [Routes] over r behind g.
func NewHandler(r Reader, log *zap.Logger, g *auth.Guard) http.Handler {
	mux := http.NewServeMux()
	g.Mount(mux, Routes(r, log)...)
	return mux
}

// Routes returns the REST API over r, for an [auth.Guard] to mount:
//
//	GET /api/v1/audit?run=&pipeline=&step=&actor=&type=&since=&until=&limit=&cursor=
//	    -> 200 {"records": [...], "next_cursor": "..."}
//	GET /api/v1/audit/verify
//	    -> 200 store.VerifyResult; "ok" is false when the chain is broken
//
// Both need role viewer. The query is [auth.ScopeFiltered]: a grant limited
// to some pipelines must name one of them with pipeline= (it then reads
// that pipeline's records and its runs'), else 403. Verify covers the whole
// chain, so it needs a grant on every pipeline. since and until take the
// forms of [ParseTime]. A bad parameter or cursor is a 400 with
// {"error": "..."}; a failing store a 500.
func Routes(r Reader, log *zap.Logger) []auth.Route {
	query := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		f, err := ParseFilter(req.URL.Query(), time.Now())
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if id := auth.FromContext(req.Context()); !id.AllPipelines() && (f.Pipeline == "" || !id.CoversPipeline(spec.Slug(f.Pipeline))) {
			auth.Deny(w, req, fmt.Errorf("%w: the grant of %s covers %s only: ask for one of them with pipeline=NAME",
				auth.ErrForbidden, id.Actor(), id.Grant()))
			return
		}
		if f.Limit > MaxHTTPLimit {
			f.Limit = MaxHTTPLimit
		}
		p, err := r.Query(req.Context(), f)
		switch {
		case errors.Is(err, store.ErrBadCursor):
			writeError(w, http.StatusBadRequest, err)
		case err != nil:
			log.Error("audit query", zap.Error(err))
			writeError(w, http.StatusInternalServerError, err)
		default:
			writeJSON(w, http.StatusOK, p)
		}
	})
	verify := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		res, err := r.Verify(req.Context())
		if err != nil {
			log.Error("audit verify", zap.Error(err))
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	return []auth.Route{
		{Pattern: "GET " + PathQuery, Role: auth.RoleViewer, Scope: auth.ScopeFiltered, Handler: query},
		{Pattern: "GET " + PathVerify, Role: auth.RoleViewer, Scope: auth.ScopeGlobal, Handler: verify},
	}
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, errorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrBadParameter is wrapped by the errors of [ParseFilter] and
// [ParseTime].
var ErrBadParameter = errors.New("bad audit query parameter")

// ParseFilter reads a filter from query parameters run, pipeline, step,
// actor, type, since, until, limit and cursor. Relative times count back
// from now. Errors wrap [ErrBadParameter].
func ParseFilter(q url.Values, now time.Time) (store.Filter, error) {
	f := store.Filter{
		RunID: q.Get("run"), Pipeline: q.Get("pipeline"), StepID: q.Get("step"),
		Actor: q.Get("actor"), Type: q.Get("type"), Cursor: q.Get("cursor"),
	}
	var err error
	if f.Since, err = ParseTime(q.Get("since"), now); err != nil {
		return f, fmt.Errorf("since: %w", err)
	}
	if f.Until, err = ParseTime(q.Get("until"), now); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	if l := q.Get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil || f.Limit < 0 {
			return f, fmt.Errorf("%w: limit %q is not a non-negative number", ErrBadParameter, l)
		}
	}
	return f, nil
}

// FilterValues is the inverse of [ParseFilter].
func FilterValues(f store.Filter) url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("run", f.RunID)
	set("pipeline", f.Pipeline)
	set("step", f.StepID)
	set("actor", f.Actor)
	set("type", f.Type)
	set("cursor", f.Cursor)
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		q.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

// ParseTime reads a time given as RFC 3339 ("2025-03-01T12:00:00Z"), a
// date and time without zone (UTC, "2025-03-01T12:00:00" or with a space),
// a date ("2025-03-01", midnight UTC), or a duration before now ("90m",
// "24h", "7d"). "" is the zero time. Errors wrap [ErrBadParameter].
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.ParseFloat(days, 64); err == nil && n >= 0 {
			return now.Add(-time.Duration(n * float64(24*time.Hour))).UTC(), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%w: time %q: want RFC 3339, a date, or a duration such as 24h or 7d", ErrBadParameter, s)
}

// Client queries a running audit service over its REST API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client for the service at baseURL (such as
// "http://127.0.0.1:8081"); hc nil means http.DefaultClient.
func NewClient(baseURL string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: hc}
}

// HTTPError is a non-200 answer of the REST API.
type HTTPError struct {
	Status  int
	Message string
}

// Error gives the status and the API's message.
func (e *HTTPError) Error() string {
	return fmt.Sprintf("audit API: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Query implements [Reader]. A 400 answer is an *[HTTPError].
func (c *Client) Query(ctx context.Context, f store.Filter) (store.Page, error) {
	var p store.Page
	err := c.get(ctx, PathQuery+"?"+FilterValues(f).Encode(), &p)
	return p, err
}

// Verify implements [Reader].
func (c *Client) Verify(ctx context.Context) (store.VerifyResult, error) {
	var res store.VerifyResult
	err := c.get(ctx, PathVerify, &res)
	return res, err
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fmt.Errorf("audit API request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("audit API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("audit API: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		return &HTTPError{Status: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("audit API: decode answer: %w", err)
	}
	return nil
}
