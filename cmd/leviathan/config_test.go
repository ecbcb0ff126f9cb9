package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/stack"
)

func TestConfigCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startStack(t, ctx, stack.StackConfig{})
	cfg := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(ctx, append([]string{"config"}, args...), env(map[string]string{"NATS_URL": s.NATSURL}), &out, &errOut)
		return out.String() + errOut.String(), err
	}
	get := func(target string) map[string]any {
		t.Helper()
		out, err := cfg("get", target)
		if err != nil {
			t.Fatalf("get: %v %s", err, out)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("get printed %q: %v", out, err)
		}
		return m
	}
	if m := get("demo"); m["autonomy_enabled"] != true || m["max_open_prs"] != float64(10) {
		t.Fatalf("defaults: %v", m)
	}
	if out, err := cfg("set", "demo", "--autonomy=false", "--max-open-prs=3", "--allowed-path-prefixes=.leviathan/, docs/"); err != nil {
		t.Fatalf("set: %v %s", err, out)
	}
	// A second set changes only what it names.
	if out, err := cfg("set", "demo", "--max-open-prs", "4"); err != nil {
		t.Fatalf("set: %v %s", err, out)
	}
	m := get("demo")
	if m["autonomy_enabled"] != false || m["max_open_prs"] != float64(4) || strings.Join(toStrings(m["allowed_path_prefixes"]), ",") != ".leviathan/,docs/" {
		t.Fatalf("after set: %v", m)
	}
	if out, err := cfg("list"); err != nil || !strings.Contains(out, "demo\tautonomy_enabled=false max_open_prs=4") {
		t.Fatalf("list: %v %q", err, out)
	}
	// The form list prints, as set's arguments, flags after them too.
	if out, err := cfg("set", "demo", "autonomy_enabled=true", "max_open_prs=5", "--allowed-path-prefixes="); err != nil {
		t.Fatalf("set key=value: %v %s", err, out)
	}
	if m := get("demo"); m["autonomy_enabled"] != true || m["max_open_prs"] != float64(5) || len(toStrings(m["allowed_path_prefixes"])) != 0 {
		t.Fatalf("after set key=value: %v", m)
	}
	for _, bad := range [][]string{
		{"set", "demo", "--autonomy=maybe"}, {"set", "demo", "--max-open-prs=-1"}, {"set"}, {"frobnicate", "demo"}, {},
		{"set", "demo", "bogus"}, {"set", "demo", "colour=blue"}, {"get", "demo", "extra"},
	} {
		if out, err := cfg(bad...); exitCode(err) != 2 {
			t.Errorf("config %v: exit %d (%v) %s, want 2", bad, exitCode(err), err, out)
		}
	}
	if out, err := cfg("delete", "demo"); err != nil {
		t.Fatalf("delete: %v %s", err, out)
	}
	if m := get("demo"); m["autonomy_enabled"] != true {
		t.Fatalf("after delete: %v", m)
	}
}

func toStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func TestForgeEnvironment(t *testing.T) {
	for _, tc := range []struct {
		vars    map[string]string
		wantErr string
		check   func(stack.ForgeConfig) bool
	}{
		{vars: nil, check: func(c stack.ForgeConfig) bool { return !c.IsApp() && c.MinInterval == 0 }},
		{vars: map[string]string{"LEVIATHAN_GITHUB_APP_ID": "12", "LEVIATHAN_GITHUB_APP_INSTALLATION_ID": "34", "LEVIATHAN_GITHUB_APP_PRIVATE_KEY_PATH": "/k.pem"},
			check: func(c stack.ForgeConfig) bool {
				return c.AppID == 12 && c.InstallationID == 34 && c.AppPrivateKeyPath == "/k.pem"
			}},
		{vars: map[string]string{"LEVIATHAN_GITHUB_APP_ID": "12"}, wantErr: "LEVIATHAN_GITHUB_APP_INSTALLATION_ID"},
		{vars: map[string]string{"LEVIATHAN_GITHUB_APP_ID": "x"}, wantErr: "LEVIATHAN_GITHUB_APP_ID"},
		{vars: map[string]string{"LEVIATHAN_FORGE_MIN_INTERVAL": "2s", "LEVIATHAN_FORGE_RATE_LIMIT_BACKOFF": "90s"},
			check: func(c stack.ForgeConfig) bool {
				return c.MinInterval == 2*time.Second && c.RateLimitBackoff == 90*time.Second
			}},
		{vars: map[string]string{"LEVIATHAN_FORGE_MIN_INTERVAL": "soon"}, wantErr: "LEVIATHAN_FORGE_MIN_INTERVAL"},
		{vars: map[string]string{"LEVIATHAN_FORGE_RATE_LIMIT_BACKOFF": "10ms"}, wantErr: "LEVIATHAN_FORGE_RATE_LIMIT_BACKOFF"},
	} {
		c, err := envConfig(env(tc.vars)).Forge.config()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err %v, want one naming %s", tc.vars, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !tc.check(c) {
			t.Errorf("%v: %+v %v", tc.vars, c, err)
		}
	}
}
