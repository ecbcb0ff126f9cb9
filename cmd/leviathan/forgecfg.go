package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/leviathan-dev/leviathan/internal/stack"
)

// forgeEnv is the forge configuration beyond the token, as read from the
// environment; config parses it.
type forgeEnv struct {
	AppID            string // LEVIATHAN_GITHUB_APP_ID
	InstallationID   string // LEVIATHAN_GITHUB_APP_INSTALLATION_ID
	PrivateKeyPath   string // LEVIATHAN_GITHUB_APP_PRIVATE_KEY_PATH
	MinInterval      string // LEVIATHAN_FORGE_MIN_INTERVAL (default 1s)
	RateLimitBackoff string // LEVIATHAN_FORGE_RATE_LIMIT_BACKOFF (default 60s)
}

func forgeEnvFrom(getenv func(string) string) forgeEnv {
	return forgeEnv{
		AppID:            getenv("LEVIATHAN_GITHUB_APP_ID"),
		InstallationID:   getenv("LEVIATHAN_GITHUB_APP_INSTALLATION_ID"),
		PrivateKeyPath:   getenv("LEVIATHAN_GITHUB_APP_PRIVATE_KEY_PATH"),
		MinInterval:      getenv("LEVIATHAN_FORGE_MIN_INTERVAL"),
		RateLimitBackoff: getenv("LEVIATHAN_FORGE_RATE_LIMIT_BACKOFF"),
	}
}

// config parses the variables; each error names its variable.
func (e forgeEnv) config() (stack.ForgeConfig, error) {
	var c stack.ForgeConfig
	for _, v := range []struct {
		name, value string
		dst         *int64
	}{
		{"LEVIATHAN_GITHUB_APP_ID", e.AppID, &c.AppID},
		{"LEVIATHAN_GITHUB_APP_INSTALLATION_ID", e.InstallationID, &c.InstallationID},
	} {
		if v.value == "" {
			continue
		}
		n, err := strconv.ParseInt(v.value, 10, 64)
		if err != nil || n <= 0 {
			return c, fmt.Errorf("%s=%q: want a positive number", v.name, v.value)
		}
		*v.dst = n
	}
	c.AppPrivateKeyPath = e.PrivateKeyPath
	if c.IsApp() && (c.AppID == 0 || c.InstallationID == 0 || c.AppPrivateKeyPath == "") {
		return c, fmt.Errorf("a GitHub App needs LEVIATHAN_GITHUB_APP_ID, LEVIATHAN_GITHUB_APP_INSTALLATION_ID and LEVIATHAN_GITHUB_APP_PRIVATE_KEY_PATH")
	}
	for _, v := range []struct {
		name, value string
		min         time.Duration
		dst         *time.Duration
	}{
		// Below these GitHub's documented minimums the token risks a ban.
		{"LEVIATHAN_FORGE_MIN_INTERVAL", e.MinInterval, 0, &c.MinInterval},
		{"LEVIATHAN_FORGE_RATE_LIMIT_BACKOFF", e.RateLimitBackoff, time.Second, &c.RateLimitBackoff},
	} {
		if v.value == "" {
			continue
		}
		d, err := time.ParseDuration(v.value)
		if err != nil || d < v.min || d == 0 {
			return c, fmt.Errorf("%s=%q: want a positive duration such as 1s", v.name, v.value)
		}
		*v.dst = d
	}
	return c, nil
}
