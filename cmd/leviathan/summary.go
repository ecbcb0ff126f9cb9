package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leviathan-dev/leviathan/services/projector/api"
)

// devTokenFile is where `leviathan dev` keeps the control plane token.
var devTokenFile = filepath.Join(".leviathan-dev", "control-plane.token")

// cmdSummary prints the graph summary from the control plane API.
func cmdSummary(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("summary", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", firstSet(env.ControlURL, "http://127.0.0.1:8000"), "control plane URL (env LEVIATHAN_CONTROL_PLANE_URL)")
	tokenFile := fs.String("token-file", "", "file holding the control plane token (default: env LEVIATHAN_CONTROL_PLANE_TOKEN, else "+devTokenFile+")")
	asJSON := fs.Bool("json", false, "print the JSON of GET /v1/graph/summary as it is")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	token, err := controlToken(env, *tokenFile)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	body, err := fetchSummary(rctx, strings.TrimRight(*url, "/"), token)
	if err != nil {
		return err
	}
	if *asJSON {
		fmt.Fprintln(stdout, body)
		return nil
	}
	var s api.Summary
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		return fmt.Errorf("graph summary: %w", err)
	}
	printSummary(stdout, *url, s)
	return nil
}

// controlToken finds the control plane token: a file named by flag, the
// environment, or the file `leviathan dev` writes. It is never printed: a
// flag holding the token itself would show in the process list.
func controlToken(env environment, file string) (string, error) {
	if file == "" && env.ControlToken != "" {
		return env.ControlToken, nil
	}
	if file == "" {
		file = devTokenFile
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) && file == devTokenFile {
		return "", &exitError{code: 2, msg: "no control plane token: LEVIATHAN_CONTROL_PLANE_TOKEN is not set, --token-file was not given, and " +
			file + " (written by leviathan dev in its data directory) does not exist here"}
	}
	if err != nil {
		return "", fmt.Errorf("control plane token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func printSummary(w io.Writer, url string, s api.Summary) {
	counts := func(m map[string]int) string {
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range m {
				if !yield(k) {
					return
				}
			}
		})
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
		if len(parts) == 0 {
			return "none"
		}
		return strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "graph at %s\n  nodes: %s\n  edges: %s\n", url, counts(s.NodesByType), counts(s.EdgesByType))
	if len(s.RecentEvents) == 0 {
		fmt.Fprintln(w, "no events yet")
		return
	}
	fmt.Fprintln(w, "recent events, newest first:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, e := range s.RecentEvents {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", e.Timestamp.Format("2006-01-02 15:04:05.000"), e.AttemptID, e.EventType, e.Target, e.ActorID)
	}
	tw.Flush()
}
