// Package dockertest gives tests real Docker parts on a machine whose Docker
// Engine has no images and cannot pull from public registries: a client of
// the local engine, a tiny base image made from the host's static busybox,
// and a private registry with htpasswd authentication listening on loopback.
//
// Every helper fails the test (it never skips) when its part cannot be had,
// because CI has Docker: a missing engine must show up as a failure.
//
// The Debian packages the helpers need are busybox-static (for
// [BusyboxImage]) and docker-registry (for [StartRegistry]).
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"golang.org/x/crypto/bcrypt"
)

// BusyboxRef is the reference [BusyboxImage] tags its image with.
const BusyboxRef = "ansflow-test/busybox:latest"

// Client returns a client of the local Docker Engine (honouring DOCKER_HOST
// and friends) after checking that the engine answers. It is closed when the
// test ends.
func Client(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("docker client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		t.Fatalf("the Docker Engine is not reachable (these tests need one; CI has it): %v", err)
	}
	return cli
}

var importMu sync.Mutex

// BusyboxImage makes sure [BusyboxRef] exists in the engine and returns it.
// The image holds the host's statically linked busybox as /bin/busybox with
// a symlink per applet (sh, echo, cat, sleep, ...), /etc/passwd with root and
// nobody, PATH set and CMD ["sh"]. It is imported once and then reused, also
// by later test runs.
func BusyboxImage(t testing.TB, cli *client.Client) string {
	t.Helper()
	importMu.Lock()
	defer importMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := cli.ImageInspect(ctx, BusyboxRef); err == nil {
		return BusyboxRef
	} else if !cerrdefs.IsNotFound(err) {
		t.Fatalf("inspect %s: %v", BusyboxRef, err)
	}
	rootfs, err := BusyboxRootfs()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"}, BusyboxRef,
		image.ImportOptions{
			Message: "ansflow test base image (busybox-static)",
			Changes: []string{
				"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				`CMD ["sh"]`,
			},
		})
	if err != nil {
		t.Fatalf("import %s: %v", BusyboxRef, err)
	}
	out, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("import %s: %v", BusyboxRef, err)
	}
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("import %s: %s", BusyboxRef, out)
	}
	return BusyboxRef
}

// BusyboxRootfs returns a tar of a minimal root file system around the host's
// static busybox binary. It fails when only a dynamically linked busybox is
// installed: install Debian's busybox-static.
func BusyboxRootfs() ([]byte, error) {
	path := ""
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		return nil, errors.New("no busybox binary on this host: apt-get install busybox-static")
	}
	if f, err := elf.Open(path); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				f.Close()
				return nil, fmt.Errorf("%s is dynamically linked: apt-get install busybox-static", path)
			}
		}
		f.Close()
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	list, err := exec.Command(path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dir := func(name string, mode int64) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: now})
		tw.Write(data)
	}
	link := func(name, target string) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: now})
	}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "proc", "sys", "dev"} {
		dir(d, 0o755)
	}
	dir("tmp", 0o1777)
	file("bin/busybox", 0o755, bin)
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		link("bin/"+applet, "busybox")
	}
	link("usr/bin/env", "/bin/busybox")
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar rootfs: %w", err)
	}
	return buf.Bytes(), nil
}

// Registry is a running private registry (Debian's docker-registry, i.e.
// distribution 2.x) that requires basic authentication. The Docker Engine
// trusts 127.0.0.0/8 as insecure registries by default, so it speaks plain
// HTTP.
type Registry struct {
	// Host is 127.0.0.1:PORT, the registry part of image references.
	Host string
	// Username and Password are the one htpasswd user.
	Username string
	Password string
	// Dir holds the registry's configuration, htpasswd file and storage.
	Dir string
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return "http://" + r.Host }

// StartRegistry runs docker-registry on a free loopback port with one
// htpasswd user and waits until it answers. It is stopped when the test
// ends.
func StartRegistry(t testing.TB, username, password string) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry not found (apt-get install docker-registry): %v", err)
	}
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(username+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host := FreeAddr(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
auth:
  htpasswd:
    realm: ansflow-test
    path: %s
`, filepath.Join(dir, "data"), host, htpasswd)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		logf.Close()
	})
	r := &Registry{Host: host, Username: username, Password: password, Dir: dir}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("docker-registry exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("docker-registry at %s not ready within 15s (last error %v): %s", host, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreeAddr returns 127.0.0.1:PORT for a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Containers lists the containers, running or not, that carry every one of
// labels.
func Containers(t testing.TB, cli *client.Client, labels map[string]string) []container.Summary {
	t.Helper()
	args := filters.NewArgs()
	for k, v := range labels {
		args.Add("label", k+"="+v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: args})
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	return list
}

// RemoveContainers force-removes the containers carrying labels; tests
// register it with t.Cleanup so a failed test leaves nothing running.
func RemoveContainers(t testing.TB, cli *client.Client, labels map[string]string) {
	t.Helper()
	for _, c := range Containers(t, cli, labels) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		cancel()
		if err != nil && !cerrdefs.IsNotFound(err) && !cerrdefs.IsConflict(err) {
			t.Errorf("remove container %s: %v", c.ID, err)
		}
	}
}

// RemoveImage removes ref (and its untagged parents) if it exists; tests
// register it with t.Cleanup for the images they build, tag or pull.
func RemoveImage(t testing.TB, cli *client.Client, ref string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
		t.Logf("remove image %s: %v", ref, err)
	}
}

// Eventually polls cond every 20ms until it holds or timeout passes, then
// fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
