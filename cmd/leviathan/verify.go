package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/leviathan-dev/leviathan/internal/stack"
	"github.com/leviathan-dev/leviathan/services/projector/api"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// cmdVerify is `leviathan verify`: it reads the hash chain the control
// plane recorded, replays the stream itself, and compares the two link by
// link. Exit 0: the chain holds; exit 1: it names the first broken link.
func cmdVerify(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	cpURL := fs.String("url", firstSet(env.ControlURL, "http://127.0.0.1:8000"), "control plane URL (env LEVIATHAN_CONTROL_PLANE_URL)")
	tokenFile := fs.String("token-file", "", "file holding the control plane token (default: env LEVIATHAN_CONTROL_PLANE_TOKEN, else "+devTokenFile+")")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	token, err := controlToken(env, *tokenFile)
	if err != nil {
		return err
	}
	began := time.Now()
	recorded, err := fetchChain(ctx, strings.TrimRight(*cpURL, "/"), token)
	if err != nil {
		return err
	}
	nc, js, err := env.connect(*natsURL, "verify")
	if err != nil {
		return err
	}
	defer nc.Close()
	c, err := stack.VerifyChain(ctx, js, recorded, newLogger(stderr, "warn"))
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if len(recorded) == 0 {
		fmt.Fprintln(stdout, "the control plane has chained no event yet: nothing to verify")
		return nil
	}
	if c.Break != nil {
		what := ""
		if c.EventID != "" {
			what = fmt.Sprintf(" (event %s, %s)", c.EventID, c.EventType)
		}
		fmt.Fprintf(stdout, "chain broken at stream sequence %d%s: %s\n", c.Break.Seq, what, c.Break)
		return &exitError{code: 1, msg: "the hash chain does not hold"}
	}
	head := recorded[len(recorded)-1]
	fmt.Fprintf(stdout, "chain verified: %d events at stream sequences %d-%d replayed and hashed as recorded; head %s at %d (%.1fs)\n",
		c.Links, c.From, c.To, hex.EncodeToString(head.Hash[:]), head.Seq, time.Since(began).Seconds())
	return nil
}

// fetchChain pages through GET /v1/events/chain.
func fetchChain(ctx context.Context, baseURL, token string) ([]graph.Link, error) {
	var out []graph.Link
	var after uint64
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		page, err := fetchChainPage(rctx, baseURL+"/v1/events/chain?limit="+strconv.Itoa(api.MaxChainPage)+"&after_seq="+url.QueryEscape(strconv.FormatUint(after, 10)), token)
		cancel()
		if err != nil {
			return nil, err
		}
		for _, l := range page.Links {
			var link graph.Link
			if b, err := hex.DecodeString(l.Hash); err != nil || len(b) != len(link.Hash) || l.Seq <= after {
				return nil, fmt.Errorf("hash chain: bad link at %d from the control plane", l.Seq)
			} else {
				copy(link.Hash[:], b)
			}
			link.Seq, after = l.Seq, l.Seq
			out = append(out, link)
		}
		if len(page.Links) == 0 || page.Head == nil || after >= page.Head.Seq {
			return out, nil
		}
	}
}

func fetchChainPage(ctx context.Context, u, token string) (*api.ChainView, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hash chain: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("hash chain: %s", apiError(resp, body))
	}
	var v api.ChainView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, fmt.Errorf("hash chain: %w", err)
	}
	return &v, nil
}
