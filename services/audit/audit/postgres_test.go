package audit

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ansflow/ansflow/services/audit/store"
)

// postgresDSNEnv names the DSN of the PostgreSQL server the tests use.
// Under CI=true a missing DSN fails the tests: CI starts a real server.
const postgresDSNEnv = "ANSFLOW_TEST_POSTGRES_DSN"

var schemaSeq atomic.Int64

// postgresStoreDSN returns a DSN on an empty schema of the test server,
// dropped when the test ends.
func postgresStoreDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv(postgresDSNEnv)
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: CI must run the PostgreSQL audit tests against a real server", postgresDSNEnv)
		}
		t.Skipf("%s is not set; set it to run the PostgreSQL tests", postgresDSNEnv)
	}
	ctx := context.Background()
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	schema := fmt.Sprintf("audit_svc_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, schemaSeq.Add(1))
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// storeKinds lists how a test can name a fresh store: a SQLite data
// directory, or a PostgreSQL DSN.
var storeKinds = []struct {
	name  string
	fresh func(t *testing.T) string
}{
	{"sqlite", func(t *testing.T) string { return t.TempDir() }},
	{"postgres", postgresStoreDSN},
}

func TestOpenStorePostgres(t *testing.T) {
	st, err := OpenStore(postgresStoreDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, ok := st.(*store.Postgres); !ok {
		t.Fatalf("OpenStore(DSN) = %T", st)
	}
}
