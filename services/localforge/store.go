package localforge

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// PR states, as GitHub spells them.
const (
	StateOpen   = "open"
	StateClosed = "closed"
)

// PullRequest is the durable record of one pull request.
type PullRequest struct {
	Number int    `json:"number"`
	Title  string `json:"title"`
	Body   string `json:"body"`
	// Head and Base are branch names in the same repository.
	Head string `json:"head"`
	Base string `json:"base"`
	// HeadSHA and BaseSHA are the branch tips. Stored values are taken at
	// creation and at each change; while the PR is open, Pulls and the API
	// report the current tips, as GitHub does.
	HeadSHA string `json:"head_sha"`
	BaseSHA string `json:"base_sha"`
	// State is StateOpen or StateClosed.
	State string `json:"state"`
	Draft bool   `json:"draft"`
	// User is the login of the author (the token holder).
	User      string    `json:"user"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	ClosedAt  time.Time `json:"closed_at,omitzero"`
}

// pullStore holds every repository's PR records in memory and mirrors each
// repository's records to dir/<owner>/<repo>.json. It is not safe for
// concurrent use; Forge.mu guards it.
type pullStore struct {
	dir   string
	repos map[string][]PullRequest // by "owner/repo", sorted by number
}

// loadPullStore reads every record file under dir.
func loadPullStore(dir string) (*pullStore, error) {
	s := &pullStore{dir: dir, repos: map[string][]PullRequest{}}
	files, err := filepath.Glob(filepath.Join(dir, "*", "*.json"))
	if err != nil {
		return nil, fmt.Errorf("localforge: %w", err)
	}
	for _, file := range files {
		owner := filepath.Base(filepath.Dir(file))
		name := strings.TrimSuffix(filepath.Base(file), ".json")
		if !validName(owner) || !validName(name) {
			continue // not ours; temp files start with '.' and end in .tmp
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("localforge: %w", err)
		}
		var prs []PullRequest
		if err := json.Unmarshal(data, &prs); err != nil {
			return nil, fmt.Errorf("localforge: pull records %s: %w", file, err)
		}
		slices.SortFunc(prs, func(a, b PullRequest) int { return a.Number - b.Number })
		s.repos[owner+"/"+name] = prs
	}
	return s, nil
}

// list returns a copy of the records of one repository, by number.
func (s *pullStore) list(owner, name string) []PullRequest {
	return slices.Clone(s.repos[owner+"/"+name])
}

// nextNumber is one more than the highest number ever stored, so numbers
// survive restarts and are never reused.
func (s *pullStore) nextNumber(owner, name string) int {
	prs := s.repos[owner+"/"+name]
	if len(prs) == 0 {
		return 1
	}
	return prs[len(prs)-1].Number + 1
}

// put replaces the records of one repository, on disk first: memory only
// changes once the new state is durable, so a failed write changes nothing.
func (s *pullStore) put(owner, name string, prs []PullRequest) error {
	data, err := json.MarshalIndent(prs, "", "  ")
	if err != nil {
		return fmt.Errorf("localforge: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.dir, owner, name+".json"), data); err != nil {
		return err
	}
	s.repos[owner+"/"+name] = prs
	return nil
}

// writeFileAtomic writes data to path through a synced temp file and a
// rename, so a crash leaves either the old file or the new one.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("localforge: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return fmt.Errorf("localforge: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("localforge: write %s: %w", path, err)
	}
	// Sync the directory so the rename itself survives a power loss.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
