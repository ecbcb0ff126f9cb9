package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// seedDir holds localforge's seed script and the demo repository's files.
const seedDir = "deploy/components/localforge/seed"

// TestSeedScript runs localforge's seed init container script with the
// host's sh and git: it creates leviathan/demo.git with the demo files and
// the settings of the minimal fetch strategy, leaves nothing behind, and a
// second run (a restarted pod) changes nothing.
func TestSeedScript(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is required: %v", err)
	}
	data := t.TempDir()
	// The files as the init container sees them: the rendered ConfigMap.
	cm := render(t, "dev").configMapWithPrefix("localforge-seed")
	if cm == nil {
		t.Fatal("no localforge-seed ConfigMap in the dev overlay")
	}
	seed := t.TempDir()
	for key, content := range cm.Data {
		if err := os.WriteFile(filepath.Join(seed, key), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func() string {
		cmd := exec.Command("sh", filepath.Join(seed, "seed.sh"))
		cmd.Env = append(os.Environ(), "FORGE_DATA="+data, "SEED_DIR="+seed, "HOME="+t.TempDir(), "GIT_CONFIG_NOSYSTEM=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("seed.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := run(); !strings.Contains(out, "created") {
		t.Fatalf("first run: %s", out)
	}
	repo := filepath.Join(data, "repos", "leviathan", "demo.git")
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"--git-dir", repo}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	head := git("rev-parse", "refs/heads/main")
	if files := git("ls-tree", "-r", "--name-only", "main"); files != ".leviathan/backlog.yaml\nREADME.md\nsrc/main.go" {
		t.Errorf("files of main: %q", files)
	}
	for _, key := range []string{"http.receivepack", "uploadpack.allowFilter", "uploadpack.allowAnySHA1InWant"} {
		if v := git("config", key); v != "true" {
			t.Errorf("%s = %q, want true", key, v)
		}
	}
	if backlog := git("show", "main:.leviathan/backlog.yaml"); !strings.Contains(backlog, "id: DEMO-0") {
		t.Errorf("backlog: %s", backlog)
	}
	entries, err := os.ReadDir(filepath.Join(data, "repos", "leviathan"))
	if err != nil || len(entries) != 1 {
		t.Errorf("left behind: %v %v", entries, err)
	}
	if out := run(); !strings.Contains(out, "exists") {
		t.Errorf("second run: %s", out)
	}
	if again := git("rev-parse", "refs/heads/main"); again != head {
		t.Errorf("the second run moved main from %s to %s", head, again)
	}
}

// TestSeedMatchesTheLaptopStack checks that the cluster's demo repository
// is the one `leviathan dev` creates (internal/stack/stack.go), so the README
// and the proof Job behave the same on both.
func TestSeedMatchesTheLaptopStack(t *testing.T) {
	stack := string(readFile(t, "internal/stack/stack.go"))
	backlog := regexp.MustCompile("(?s)const demoBacklog = `(.*?)`").FindStringSubmatch(stack)
	if backlog == nil {
		t.Fatal("no demoBacklog in internal/stack/stack.go")
	}
	if got := string(readFile(t, seedDir+"/backlog.yaml")); got != backlog[1] {
		t.Errorf("seed/backlog.yaml differs from stack.go's demoBacklog:\n%s\n---\n%s", got, backlog[1])
	}
	for path, file := range map[string]string{"README.md": "README.md", "src/main.go": "main.go.txt"} {
		m := regexp.MustCompile(regexp.QuoteMeta(strconv.Quote(path)) + `:\s*\[\]byte\(("(?:[^"\\]|\\.)*")\)`).FindStringSubmatch(stack)
		if m == nil {
			t.Errorf("%s is not in stack.go's demo repository", path)
			continue
		}
		want, err := strconv.Unquote(m[1])
		if err != nil {
			t.Fatal(err)
		}
		if got := string(readFile(t, seedDir+"/"+file)); got != want {
			t.Errorf("seed/%s = %q, stack.go has %q", file, got, want)
		}
	}
}
