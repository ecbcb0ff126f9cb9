package benchresults

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMergeResultsEmptyAndInvalid(t *testing.T) {
	for _, existing := range []string{"", "null"} {
		out, err := Merge([]byte(existing), "git", map[string]any{})
		if err != nil || !strings.Contains(string(out), `"git": {}`) {
			t.Errorf("Merge(%q) = %s, %v", existing, out, err)
		}
	}
	if _, err := Merge([]byte("[1]"), "git", map[string]any{}); err == nil {
		t.Error("a non-object results file was overwritten")
	}
}

func TestWriteResults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench", "results.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"other": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, "git", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"other": 1`) || !strings.Contains(string(b), `"git": {}`) {
		t.Errorf("results file: %s", b)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".results-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
