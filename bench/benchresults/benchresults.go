// Package benchresults writes bench/results.json, the file every benchmark
// of `make bench` adds its own top-level key to.
package benchresults

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// FormatRatios writes ratios as the report and pipebench print them: two
// decimals each, separated by commas.
func FormatRatios(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, ", ")
}

// Merge returns the results document existing (empty or nil for
// none) with key set to value and every other top-level key kept as it was.
func Merge(existing []byte, key string, value any) ([]byte, error) {
	doc := map[string]json.RawMessage{}
	if len(existing) > 0 {
		if err := json.Unmarshal(existing, &doc); err != nil {
			return nil, fmt.Errorf("existing results are not a JSON object: %w", err)
		}
		if doc == nil { // the file held "null"
			doc = map[string]json.RawMessage{}
		}
	}
	v, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	doc[key] = v
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Write sets key in the results file at path, atomically: other
// benchmarks' keys survive, and a reader never sees half a file.
func Write(path, key string, value any) error {
	existing, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	out, err := Merge(existing, key, value)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".results-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
