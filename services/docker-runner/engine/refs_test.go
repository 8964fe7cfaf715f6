package engine

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/distribution/reference"

	"github.com/ansflow/ansflow/pkg/event"
)

func TestQualify(t *testing.T) {
	e := &Engine{cfg: Config{Credentials: Credentials{"named": {Server: "reg.example.com:5000"}}}}
	for _, tc := range []struct {
		image, tag string
		reg        *event.Registry
		url, repo  string
		want       string
	}{
		{"myapp", "1.0", &event.Registry{Name: "local", URL: "http://127.0.0.1:5000"}, "", "", "127.0.0.1:5000/myapp:1.0"},
		{"myapp:0.9", "1.0", nil, "127.0.0.1:5000", "", "127.0.0.1:5000/myapp:1.0"},
		{"myapp", "", nil, "https://reg.example.com/team/", "", "reg.example.com/team/myapp:latest"},
		{"library/myapp", "", nil, "reg.example.com", "", "reg.example.com/myapp:latest"},
		{"user/myapp:2", "", nil, "reg.example.com", "", "reg.example.com/user/myapp:2"},
		{"127.0.0.1:5000/myapp:3", "", nil, "127.0.0.1:5000", "", "127.0.0.1:5000/myapp:3"},
		{"other.example.com/team/myapp:3", "", nil, "127.0.0.1:5000", "", "127.0.0.1:5000/team/myapp:3"},
		{"myapp", "4", nil, "127.0.0.1:5000", "ci/renamed", "127.0.0.1:5000/ci/renamed:4"},
		{"myapp", "5", &event.Registry{Name: "named"}, "", "", "reg.example.com:5000/myapp:5"},
	} {
		ref, err := namedRef(tc.image, tc.tag)
		if err != nil {
			t.Fatal(err)
		}
		req := &event.StepRequested{Registry: tc.reg}
		reg, err := e.targetRegistry(req, tc.url, e.cfg.Credentials)
		if err != nil {
			t.Fatal(err)
		}
		got, err := qualify(ref, reg, tc.repo)
		if err != nil {
			t.Fatal(err)
		}
		if s := reference.FamiliarString(got); s != tc.want {
			t.Errorf("%s:%s in %v %s = %s, want %s", tc.image, tc.tag, tc.reg, tc.url, s, tc.want)
		}
	}
	if _, err := e.targetRegistry(&event.StepRequested{Registry: &event.Registry{Name: "unknown"}}, "", e.cfg.Credentials); !errors.Is(err, ErrInvalidStep) {
		t.Errorf("registry without URL: %v", err)
	}
	for _, bad := range []string{"", "team/UPPER", "a b"} {
		if _, err := namedRef(bad, ""); !errors.Is(err, ErrInvalidStep) {
			t.Errorf("namedRef(%q) = %v, want ErrInvalidStep", bad, err)
		}
	}
}

func TestBuildContext(t *testing.T) {
	src := t.TempDir()
	for name, content := range map[string]string{
		"app/Dockerfile":    "FROM x\n",
		"app/main.go":       "package main\n",
		"app/.dockerignore": "*.log\nsecrets/\n!keep.log\nDockerfile\n",
		"app/debug.log":     "",
		"app/keep.log":      "",
		"app/secrets/key":   "",
		"docker/Other":      "FROM y\n",
	} {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(content), 0o644)
	}
	ctxDir := filepath.Join(src, "app")
	names := func(dockerfile, outside string) []string {
		var buf bytes.Buffer
		if err := writeContext(&buf, ctxDir, dockerfile, outside); err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(&buf)
		var out []string
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Uid != 0 || h.Gid != 0 {
				t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
			}
			out = append(out, h.Name)
		}
		sort.Strings(out)
		return out
	}

	in, out, err := locateDockerfile(src, ctxDir, "")
	if err != nil || in != "Dockerfile" || out != "" {
		t.Fatalf("default dockerfile: %q %q %v", in, out, err)
	}
	if got := strings.Join(names(in, out), " "); got != ".dockerignore Dockerfile keep.log main.go" {
		t.Errorf("context %s", got)
	}
	in, out, err = locateDockerfile(src, ctxDir, "docker/Other")
	if err != nil || out != filepath.Join(src, "docker/Other") {
		t.Fatalf("dockerfile outside the context: %q %q %v", in, out, err)
	}
	if got := strings.Join(names(in, out), " "); got != ".ansflow.dockerfile .dockerignore keep.log main.go" {
		t.Errorf("context %s", got)
	}
	if _, _, err := locateDockerfile(src, ctxDir, "../../etc/passwd"); !errors.Is(err, ErrInvalidStep) {
		t.Errorf("dockerfile outside the source: %v", err)
	}
}
