package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"
)

// sqliteBackend opens a store in a fresh file; tampering goes through a
// separate connection to the same file, as an editor of the file would.
var sqliteBackend = backend{name: "sqlite", open: func(t *testing.T) (Store, func(*testing.T, string, ...any)) {
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	raw, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return s, func(t *testing.T, query string, args ...any) {
		t.Helper()
		if _, err := raw.Exec(query, args...); err != nil {
			t.Fatalf("tamper %q: %v", query, err)
		}
	}
}}

func TestSQLite(t *testing.T) { runContract(t, sqliteBackend) }

func TestSQLiteReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "audit.db")
	ctx := context.Background()
	s, err := Open(ctx, "sqlite:"+path)
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, recs(1, 3, "r1"))
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustAppend(t, s, recs(3, 5, "r1"))
	wantOK(t, verify(t, s), 5)
}

// TestSQLiteParallelVerify runs the contract with every chain verified in
// three ranges, so that tampering near a range boundary is found too.
func TestSQLiteParallelVerify(t *testing.T) {
	defer func(min int64, workers int) { verifyParallelMin, verifyWorkers = min, workers }(verifyParallelMin, verifyWorkers)
	verifyParallelMin, verifyWorkers = 1, 3
	runContract(t, sqliteBackend)
	// Every single-record edit of a longer chain is found at its record,
	// wherever the range boundaries fall.
	s, exec := sqliteBackend.open(t)
	mustAppend(t, s, recs(1, 30, "r1"))
	for seq := 1; seq <= 30; seq++ {
		exec(t, `UPDATE audit_records SET actor = 'mallory' WHERE seq = ?`, seq)
		wantBad(t, verify(t, s), int64(seq), "")
		exec(t, `UPDATE audit_records SET actor = '' WHERE seq = ?`, seq)
	}
	// Moving one record to the end is found at the record after its place
	// (or at the moved record, for the last one).
	for seq := 2; seq <= 30; seq++ {
		exec(t, `UPDATE audit_records SET seq = seq + 1000000 WHERE seq = ?`, seq)
		bad := int64(seq + 1)
		if seq == 30 {
			bad = 1000030
		}
		wantBad(t, verify(t, s), bad, "missing")
		exec(t, `UPDATE audit_records SET seq = seq - 1000000 WHERE seq = ?`, seq+1000000)
	}
	wantOK(t, verify(t, s), 30)
}

// TestSQLiteNULTamperDetected: SQLite's format() stops at a NUL byte, so
// check that hiding bytes behind one is still caught.
func TestSQLiteNULTamperDetected(t *testing.T) {
	for _, edit := range []string{
		`UPDATE audit_records SET data = CAST(data AS BLOB) || x'00' || CAST('{"x":1}' AS BLOB) WHERE seq = 4`,
		`UPDATE audit_records SET actor = actor || char(0) || 'mallory' WHERE seq = 4`,
		`UPDATE audit_records SET actor = CAST(x'00' AS TEXT) WHERE seq = 4`,
	} {
		s, exec := sqliteBackend.open(t)
		mustAppend(t, s, recs(1, 6, "r1"))
		exec(t, edit)
		wantBad(t, verify(t, s), 4, "edited")
	}
}

// TestSQLiteWritableReportsALockedFile: while another connection holds the
// file's write lock, Writable fails within its context's deadline.
func TestSQLiteWritableReportsALockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	ctx := context.Background()
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	conn, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Writable(wctx); err == nil {
		t.Fatal("Writable while another connection holds the write lock = nil")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Writable took %s, want about its 500ms deadline", took)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := s.Writable(ctx); err != nil {
		t.Fatalf("Writable once the lock is released: %v", err)
	}
}
