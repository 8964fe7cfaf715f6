package store

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresDSNEnv names the variable holding the DSN of the PostgreSQL
// server the tests run against. Under CI=true the tests fail without it:
// CI installs and starts a real server.
const PostgresDSNEnv = "ANSFLOW_TEST_POSTGRES_DSN"

var schemaSeq atomic.Int64

// postgresDSN returns the test server's DSN, skipping the test when none is
// configured outside CI.
func postgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(PostgresDSNEnv)
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: CI must run the PostgreSQL audit tests against a real server", PostgresDSNEnv)
		}
		t.Skipf("%s is not set; set it to run the PostgreSQL tests", PostgresDSNEnv)
	}
	return dsn
}

// withSearchPath adds search_path=schema to dsn.
func withSearchPath(dsn, schema string) string {
	if IsPostgresDSN(dsn) && (strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")) {
		u, err := url.Parse(dsn)
		if err == nil {
			q := u.Query()
			q.Set("search_path", schema)
			u.RawQuery = q.Encode()
			return u.String()
		}
	}
	return dsn + " search_path=" + schema
}

// freshSchema creates an empty schema for one test and returns a DSN that
// uses it; the schema is dropped when the test ends.
func freshSchema(t testing.TB) string {
	t.Helper()
	dsn := postgresDSN(t)
	ctx := context.Background()
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", PostgresDSNEnv, err)
	}
	schema := fmt.Sprintf("audit_test_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, schemaSeq.Add(1))
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
	return withSearchPath(dsn, schema)
}

var postgresBackend = backend{name: "postgres", open: func(t *testing.T) (Store, func(*testing.T, string, ...any)) {
	dsn := freshSchema(t)
	ctx := context.Background()
	s, err := Open(ctx, dsn)
	if err != nil {
		t.Fatalf("Open(postgres): %v", err)
	}
	if _, ok := s.(*Postgres); !ok {
		t.Fatalf("Open(%q) = %T, want *Postgres", dsn, s)
	}
	t.Cleanup(func() { s.Close() })
	raw, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	return s, func(t *testing.T, query string, args ...any) {
		t.Helper()
		for i := 1; strings.Contains(query, "?"); i++ {
			query = strings.Replace(query, "?", "$"+strconv.Itoa(i), 1)
		}
		if _, err := raw.Exec(ctx, query, args...); err != nil {
			t.Fatalf("tamper %q: %v", query, err)
		}
	}
}}

func TestPostgres(t *testing.T) { runContract(t, postgresBackend) }

// TestPostgresTwoInstances appends through two stores on one database at
// once, as two audit instances sharing a durable consumer would.
func TestPostgresTwoInstances(t *testing.T) {
	dsn := freshSchema(t)
	ctx := context.Background()
	a, err := OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	done := make(chan error, 2)
	for i, s := range []Store{a, b} {
		go func() {
			var err error
			for j := 0; j < 20 && err == nil; j++ {
				// Both instances see every record: redeliveries overlap.
				_, err = s.Append(ctx, recs(j*5, j*5+9, "r"))
			}
			if err != nil {
				err = fmt.Errorf("instance %d: %w", i, err)
			}
			done <- err
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	wantOK(t, verify(t, a), 105)
}

// TestPostgresWritableReportsALockedHead: while another session holds the
// chain head exclusively, Writable fails within its context's deadline.
func TestPostgresWritableReportsALockedHead(t *testing.T) {
	dsn := freshSchema(t)
	ctx := context.Background()
	s, err := OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tx, err := raw.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := s.Writable(wctx); err == nil {
		t.Fatal("Writable while the head is locked = nil")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Writable(ctx); err != nil {
		t.Fatalf("Writable once the lock is released: %v", err)
	}
}
