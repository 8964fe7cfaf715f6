package api

import (
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"time"
)

// Page sizes of every list endpoint.
const (
	// DefaultPageSize is the page size when the request sets no limit.
	DefaultPageSize = 50
	// MaxPageSize caps the limit parameter: a larger one is lowered to it.
	MaxPageSize = 500
)

// pageParams reads limit and cursor. The cursor is the opaque value of the
// previous page's X-Next-Cursor header.
func pageParams(r *http.Request) (limit int, after string, err error) {
	q := r.URL.Query()
	limit = DefaultPageSize
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit <= 0 {
			return 0, "", fmt.Errorf("%w: limit %q is not a positive number", errBadRequest, l)
		}
	}
	limit = min(limit, MaxPageSize)
	if c := q.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(b) == 0 {
			return 0, "", fmt.Errorf("%w: cursor %q is not one this API returned", errBadRequest, c)
		}
		after = string(b)
	}
	return limit, after, nil
}

// writePage answers one page of items ordered by key: those whose key sorts
// after the request's cursor, at most limit of them. When more follow, the
// X-Next-Cursor header carries the next page's cursor and a Link header
// (rel="next") its URL. The body stays a JSON array, so a client that reads
// one page needs nothing new. Keys must be unique.
func writePage[T any](s *Server, w http.ResponseWriter, r *http.Request, items []T, key func(T) string) {
	limit, after, err := pageParams(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = key(it)
	}
	order := make([]int, len(items))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return keys[order[a]] < keys[order[b]] })
	start := sort.Search(len(order), func(i int) bool { return keys[order[i]] > after })
	end := min(start+limit, len(order))
	if end < len(order) {
		next := base64.RawURLEncoding.EncodeToString([]byte(keys[order[end-1]]))
		q := r.URL.Query()
		q.Set("cursor", next)
		q.Set("limit", strconv.Itoa(limit))
		w.Header().Set("X-Next-Cursor", next)
		w.Header().Set("Link", fmt.Sprintf("<%s?%s>; rel=\"next\"", r.URL.Path, q.Encode()))
	}
	page := make([]T, 0, end-start)
	for _, i := range order[start:end] {
		page = append(page, items[i])
	}
	writeJSON(w, http.StatusOK, page)
}

// newestFirst is a page key that orders by time, newest first, then by id.
func newestFirst(t time.Time, id string) string {
	return fmt.Sprintf("%020d/%s", math.MaxInt64-t.UnixNano(), id)
}
