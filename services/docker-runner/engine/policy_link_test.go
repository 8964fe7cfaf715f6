package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ansflow/ansflow/pkg/event"
	"github.com/ansflow/ansflow/services/docker-runner/dockertest"
	"github.com/ansflow/ansflow/services/docker-runner/policy"
)

// TestPolicySourceLinks: a link in the run's source (which an earlier step
// could have made) does not smuggle a host path past the policy: the Docker
// Engine would follow it.
func TestPolicySourceLinks(t *testing.T) {
	cli := dockertest.Client(t)
	base := dockertest.BusyboxImage(t, cli)
	e, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	src := t.TempDir()
	if err := os.Symlink("/", filepath.Join(src, "root")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	escaped := fmt.Sprintf("/tmp/ansflow-escaped-link-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.Remove(escaped) })
	for _, tc := range []struct {
		volume, want string
	}{
		{"./root:/host", `volumes: host path "./root" (a link to "/") is not allowed by this runner's policy (allow it with --allow-host-path /`},
		{"./root/tmp/new-dir:/host", `volumes: host path "./root/tmp/new-dir" (a link to "/tmp/new-dir") is not allowed`},
		{"./data:/data", ""},
	} {
		req := &event.StepRequested{RunID: fmt.Sprintf("link-%d", time.Now().UnixNano()), StepID: "s", Attempt: 1, Type: TypeRun,
			Pipeline: "p", Image: base, Command: "touch /host" + escaped + " 2>/dev/null; true",
			DockerConfig: map[string]any{"volumes": []any{tc.volume}}}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := e.execute(ctx, req, &benchTask{src: src})
		cancel()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.volume, err)
			}
			continue
		}
		if !errors.Is(err, policy.ErrDenied) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.volume, err, tc.want)
		}
	}
	if _, err := os.Stat(escaped); !os.IsNotExist(err) {
		t.Fatalf("%s exists on the host", escaped)
	}
	if _, err := os.Stat("/tmp/new-dir"); err == nil {
		t.Log("note: /tmp/new-dir exists (not made by this test?)")
	}
}
