package forge

import "testing"

func TestEnterpriseAPIRoot(t *testing.T) {
	for in, want := range map[string]string{
		"https://ghe.example.com":               "https://ghe.example.com/api/v3",
		"https://ghe.example.com/":              "https://ghe.example.com/api/v3",
		"https://ghe.example.com/api/v3/":       "https://ghe.example.com/api/v3",
		"http://127.0.0.1:3000/api/v3/":         "http://127.0.0.1:3000/api/v3",
		"https://api.github.com/":               "https://api.github.com",
		"https://ghe.example.com/prefix/api/v3": "https://ghe.example.com/prefix/api/v3",
	} {
		if got := enterpriseAPIRoot(in); got != want {
			t.Errorf("enterpriseAPIRoot(%q) = %q, want %q", in, got, want)
		}
	}
}
