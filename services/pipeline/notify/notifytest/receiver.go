package notifytest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// Receiver is a real HTTP server that accepts the deliveries verify
// passes (answering 401 to the others) and keeps their bodies.
type Receiver struct {
	// URL is the server's address.
	URL    string
	mu     sync.Mutex
	bodies [][]byte
}

// StartReceiver starts a receiver on loopback that checks each request
// with verify (notify.Verify for signed webhooks); it stops when the test
// ends.
func StartReceiver(t testing.TB, verify func(h http.Header, body []byte) error) *Receiver {
	rc := &Receiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err == nil {
			err = verify(r.Header, body)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		rc.mu.Lock()
		rc.bodies = append(rc.bodies, body)
		rc.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	rc.URL = srv.URL
	return rc
}

// Bodies returns the bodies of the deliveries accepted so far.
func (rc *Receiver) Bodies() [][]byte {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([][]byte(nil), rc.bodies...)
}
