package events

import (
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Credentials in a request are never kept (DESIGN.md §11): a request that
// carries one anywhere is rejected and erased from the stream, whatever
// else is wrong with it. These patterns find them in a string.
var credentialPatterns = []struct {
	re   *regexp.Regexp
	what string
}{
	// user info in anything URL-shaped: scheme://user:secret@host
	{regexp.MustCompile(`(?i)[a-z][a-z0-9+.\-]*://[^/\s"'<>@]+@`), "user info in a URL"},
	// a token in a query string
	{regexp.MustCompile(`(?i)[?&;](access_token|token|private_token|auth_token|api_key|apikey|client_secret|password|passwd|secret|sig|signature|x-amz-signature)=[^&\s"'#]+`), "a token in a URL's query"},
	// tokens GitHub and GitLab issue, recognisable by their prefixes
	{regexp.MustCompile(`\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,})`), "a forge token"},
}

// credentialIn says what kind of credential s holds, or "".
func credentialIn(s string) string {
	for _, p := range credentialPatterns {
		if p.re.MatchString(s) {
			return p.what
		}
	}
	return ""
}

// FindCredential looks for a credential anywhere in the body of a request
// (an envelope or the bare request, valid JSON or not). It returns the
// field that holds it ("target.repo_url", "task.description"; "body" when
// the body is not JSON) and what it looks like, or "" and "".
func FindCredential(data []byte) (field, what string) {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		// Not JSON: read it as text, JSON escapes undone where they could
		// hide a '@', '/', '?', '&' or '='.
		if what := credentialIn(unescapeLoosely(string(data))); what != "" {
			return "body", what
		}
		return "", ""
	}
	if m, ok := v.(map[string]any); ok {
		if _, isEnv := m["event_type"]; isEnv {
			// An envelope: name the request's fields, not payload.*.
			if field, what := findIn(m["payload"], ""); what != "" {
				return field, what
			}
			delete(m, "payload")
		}
	}
	return findIn(v, "")
}

// findIn walks a decoded JSON value, keys included, in a stable order.
func findIn(v any, path string) (field, what string) {
	at := func(p string) string {
		if p == "" {
			return "body"
		}
		return p
	}
	switch t := v.(type) {
	case string:
		if what := credentialIn(t); what != "" {
			return at(path), what
		}
	case []any:
		for i, e := range t {
			if f, w := findIn(e, path+"["+strconv.Itoa(i)+"]"); w != "" {
				return f, w
			}
		}
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if what := credentialIn(k); what != "" {
				return at(path), what
			}
			if f, w := findIn(t[k], p); w != "" {
				return f, w
			}
		}
	}
	return "", ""
}

// unescapeLoosely undoes the JSON escapes \/ and \u00XX in text that may
// not be valid JSON.
func unescapeLoosely(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '/':
			b.WriteByte('/')
			i++
		case s[i] == '\\' && i+5 < len(s) && s[i+1] == 'u':
			if n, err := strconv.ParseUint(s[i+2:i+6], 16, 16); err == nil && n < 0x80 {
				b.WriteByte(byte(n))
				i += 5
				continue
			}
			b.WriteByte(s[i])
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
