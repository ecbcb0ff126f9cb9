package podrun

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

// DockerPool connects to the local Docker engine. Without one the test
// fails (a skip would hide a broken set-up), unless LEVIATHAN_SKIP_DOCKER=1
// says to skip it on purpose.
func DockerPool(t testing.TB) *dockertest.Pool {
	t.Helper()
	pool, err := dockertest.NewPool("")
	if err == nil {
		err = pool.Client.Ping()
	}
	if err != nil {
		if os.Getenv("LEVIATHAN_SKIP_DOCKER") == "1" {
			t.Skipf("Docker is not available (%v) and LEVIATHAN_SKIP_DOCKER=1", err)
		}
		t.Fatalf("Docker is not available: %v; start the Docker engine, or set LEVIATHAN_SKIP_DOCKER=1 to skip the container tests", err)
	}
	return pool
}

// Images are the images the container tests run, built offline.
type Images struct {
	// Leviathan is deploy/Dockerfile.prebuilt around the static binary:
	// the `runtime` target, FROM scratch.
	Leviathan string
	// LeviathanGit is the same plus the host's git, git-http-backend and a
	// shell (copied with their shared libraries), standing in for the
	// `runtime-git` target, whose Alpine base cannot be pulled here.
	LeviathanGit string
	// NATS is nats-server built from the module version of go.mod, standing
	// in for the nats:<version>-alpine image of the manifests.
	NATS string
}

var (
	imagesOnce sync.Once
	images     Images
	imagesErr  error
)

// BuildImages builds the test images once per test binary, from the
// repository at root; t.Cleanup of the first caller's test does not
// remove them (later tests share them), so the package's TestMain removes
// them with RemoveImages.
func BuildImages(t testing.TB, pool *dockertest.Pool, root string) Images {
	t.Helper()
	imagesOnce.Do(func() { images, imagesErr = doBuildImages(pool, root) })
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	return images
}

var builtImages []string

func doBuildImages(pool *dockertest.Pool, root string) (Images, error) {
	dir, err := os.MkdirTemp("", "leviathan-images-")
	if err != nil {
		return Images{}, err
	}
	defer os.RemoveAll(dir)
	tag := "test-" + RandomHex(4)

	// Both Go builds, in parallel: they are most of the time spent here.
	var wg sync.WaitGroup
	var levErr, natsErr error
	lev := filepath.Join(dir, "leviathan-bin")
	natsBin := filepath.Join(dir, "nats-server-bin")
	wg.Add(2)
	go func() {
		defer wg.Done()
		// The same build as tests/binary_test.go, so the two share the cache.
		levErr = goBuild(root, lev, "./cmd/leviathan")
	}()
	go func() {
		defer wg.Done()
		natsErr = goBuild(root, natsBin, "github.com/nats-io/nats-server/v2")
	}()
	wg.Wait()
	if levErr != nil || natsErr != nil {
		return Images{}, fmt.Errorf("go build: %v %v", levErr, natsErr)
	}
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		return Images{}, fmt.Errorf("the host's CA bundle: %w", err)
	}

	// The layout deploy/Dockerfile.prebuilt documents.
	plain := filepath.Join(dir, "plain")
	if err := copyInto(plain, lev, "usr/local/bin/leviathan", 0o755); err != nil {
		return Images{}, err
	}
	if err := writeInto(plain, "etc/ssl/certs/ca-certificates.crt", ca, 0o644); err != nil {
		return Images{}, err
	}
	prebuilt, err := os.ReadFile(filepath.Join(root, "deploy", "Dockerfile.prebuilt"))
	if err != nil {
		return Images{}, err
	}
	var out Images
	if out.Leviathan, err = dockerBuild(pool, plain, prebuilt, "leviathan-test:"+tag); err != nil {
		return Images{}, err
	}

	withGit := filepath.Join(dir, "git")
	if err := copyTree(filepath.Join(plain, "rootfs"), filepath.Join(withGit, "rootfs")); err != nil {
		return Images{}, err
	}
	if err := addHostGit(filepath.Join(withGit, "rootfs")); err != nil {
		return Images{}, err
	}
	if out.LeviathanGit, err = dockerBuild(pool, withGit, prebuilt, "leviathan-git-test:"+tag); err != nil {
		return Images{}, err
	}

	natsDir := filepath.Join(dir, "nats")
	if err := copyInto(natsDir, natsBin, "usr/local/bin/nats-server", 0o755); err != nil {
		return Images{}, err
	}
	natsDockerfile := []byte("FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin\nENTRYPOINT [\"nats-server\"]\n")
	if out.NATS, err = dockerBuild(pool, natsDir, natsDockerfile, "nats-test:"+tag); err != nil {
		return Images{}, err
	}
	return out, nil
}

// RemoveImages removes what BuildImages built.
func RemoveImages(pool *dockertest.Pool) {
	for _, img := range builtImages {
		_ = pool.Client.RemoveImageExtended(img, dc.RemoveImageOptions{Force: true})
	}
}

// Built reports whether BuildImages built anything (for TestMain).
func Built() bool { return len(builtImages) > 0 }

// RandomHex is n random bytes in hex: names that do not collide.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// goBuild builds a static binary from the repository root.
func goBuild(root, out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", pkg, err, b)
	}
	return nil
}

// dockerBuild builds dockerfile with contextDir as its context.
func dockerBuild(pool *dockertest.Pool, contextDir string, dockerfile []byte, name string) (string, error) {
	if err := os.WriteFile(filepath.Join(contextDir, "Dockerfile"), dockerfile, 0o644); err != nil {
		return "", err
	}
	var log bytes.Buffer
	err := pool.Client.BuildImage(dc.BuildImageOptions{
		Name: name, ContextDir: contextDir, Dockerfile: "Dockerfile",
		OutputStream: &log, RmTmpContainer: true, ForceRmTmpContainer: true,
	})
	if err != nil {
		return "", fmt.Errorf("docker build %s: %v\n%s", name, err, log.String())
	}
	builtImages = append(builtImages, name)
	return name, nil
}

func writeInto(dir, rel string, data []byte, mode os.FileMode) error {
	p := filepath.Join(dir, "rootfs", rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, mode)
}

func copyInto(dir, src, rel string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeInto(dir, rel, b, mode)
}

// copyTree copies a directory of regular files and directories.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		return copyFile(p, target)
	})
}

// copyFile copies the content (following symlinks) and the mode bits.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// addHostGit copies into rootfs what localforge and its seed script run:
// git with its server-side helpers, a shell and the few tools seed.sh
// calls, each with the shared libraries ldd reports.
func addHostGit(rootfs string) error {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return fmt.Errorf("git is needed for localforge's image: %w", err)
	}
	execPath := strings.TrimSpace(string(out))
	files := []string{
		filepath.Join(execPath, "git"), filepath.Join(execPath, "git-http-backend"),
		filepath.Join(execPath, "git-upload-pack"), filepath.Join(execPath, "git-receive-pack"),
	}
	// /bin/sh by that name: the seed init container's command.
	files = append(files, "/bin/sh")
	for _, tool := range []string{"git", "mkdir", "mktemp", "rm", "cp", "mv"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			return fmt.Errorf("%s: %w", tool, err)
		}
		files = append(files, p)
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		return fmt.Errorf("ldd is needed to copy git's shared libraries: %w", err)
	}
	libs := map[string]bool{}
	libRe := regexp.MustCompile(`(/\S+) \(0x[0-9a-f]+\)`)
	for _, f := range files {
		if err := copyFile(f, filepath.Join(rootfs, f)); err != nil {
			return err
		}
		ldd, err := exec.Command("ldd", f).Output()
		if err != nil {
			continue // ldd fails on a static binary: nothing to add
		}
		for _, m := range libRe.FindAllStringSubmatch(string(ldd), -1) {
			libs[m[1]] = true
		}
	}
	for lib := range libs {
		if err := copyFile(lib, filepath.Join(rootfs, lib)); err != nil {
			return err
		}
	}
	// `git init` copies its templates from here (optional, but quieter).
	if _, err := os.Stat("/usr/share/git-core/templates"); err == nil {
		if err := copyTree("/usr/share/git-core/templates", filepath.Join(rootfs, "usr/share/git-core/templates")); err != nil {
			return err
		}
	}
	return nil
}
