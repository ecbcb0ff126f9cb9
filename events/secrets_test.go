package events

import "testing"

func TestFindCredential(t *testing.T) {
	for body, want := range map[string]string{
		// found, with the field that holds it
		`{"target":{"repo_url":"https://x:s3cretpassword@github.com/o/r.git"}}`:                                  "target.repo_url",
		`{"task":{"description":"clone https://o'brien:hunter2pass@git.corp.example/o/r"}}`:                      "task.description",
		`{"target":{"repo_url":"https://github.com/o/r.git?access_token=abcdefgh1234"}}`:                         "target.repo_url",
		`{"task":{"description":"see ?next=https%3A%2F%2Fdeploy%3As3cretvalue%40git.corp.example"}}`:             "task.description",
		`{"task":{"title":"ghp_abcdefghijklmnopqrstuvwxyz0123456789"}}`:                                          "task.title",
		`{"target":{"repo_url":"https:\/\/x:s3cret\u0040github.com/o/r"}}`:                                       "target.repo_url",
		`{"target":{"repo_url":"https://x:s3cretpassword@github.com/o/r"},"target":{"repo_url":"https://ok/r"}}`: "body",
		`{"target":{"repo_url":"https://x:s3cret@github.com/o/r"`:                                                "body",
		`{"target":{"repo_url":"https://0123456789abcdef0123456789abcdef01234567@github.com/o/r.git"}}`:          "target.repo_url",
		`{"task":{"description":"push to http://deploytoken@git.corp.example/o/r"}}`:                             "task.description",
		`{"target":{"repo_url":"https://github.com/o/r.git?token=hunter2"}}`:                                     "target.repo_url",
		`{"target":{"repo_url":"https://gitlab.example/o/r.git?private_token=glp4x"}}`:                           "target.repo_url",
		`{"task":{"description":"https://h.example/a?b=1&password=pass"}}`:                                       "task.description",
		`{"target":{"repo_url":"//carol:pw5@github.com/o/r.git"},"colour":"red"}`:                                "target.repo_url",
		`{"target":{"repo_url":"//tok5x9f8e7d6c5b4a3@github.com/o/r.git"}}`:                                      "target.repo_url",
		`{"target":{"repo_url":"https://github.com/o/r.git?oauth_token=oauth0000"}}`:                             "target.repo_url",
		`{"target":{"repo_url":"https://github.com/o/r.git#access_token=frag0000"}}`:                             "target.repo_url",
		`{"target":{"repo_url":"https://t0ken0123:@github.com/o/r.git"}}`:                                        "target.repo_url",
		// not credentials
		`{"task":{"description":"vendored from git+https://git@github.com/org/pkg.git"}}`:               "",
		`{"task":{"description":"see https://github.com/o/r/blob/main/a@b.md and mailto:a@b.example"}}`: "",
		`{"task":{"description":"npm i @scope/pkg@1.2; http://localhost:3000/@scope/pkg"}}`:             "",
		`{"task":{"description":"depends on git+ssh://git@github.com/org/pkg.git"}}`:                    "",
		`{"task":{"description":"https://x.com?ref=@alice, mail bob@example.com"}}`:                     "",
		`{"task":{"description":"set ?token=<yours> in the config"}}`:                                   "",
		`{"target":{"repo_url":"https://github.com/o/r.git"}}`:                                          "",
		`{"task":{"description":"https://registry.example:443/@scope/pkg"}}`:                            "",
	} {
		field, what := FindCredential([]byte(body))
		if field != want || (want != "" && what == "") {
			t.Errorf("FindCredential(%s) = %q (%s), want %q", body, field, what, want)
		}
	}
}

// TestRejectedRef: a rejection takes the target and task a body names, in
// a valid form and without a credential, where its Ref has none.
func TestRejectedRef(t *testing.T) {
	for _, c := range []struct {
		ref  Ref
		body string
		want Ref
	}{
		{Ref{}, `{"target":{"name":"demo"},"task":{"id":"T-1"}}`, Ref{TargetID: "demo", TaskID: "T-1"}},
		{Ref{}, `{"target":{"name":"de mo"},"task":{"id":7}}`, Ref{}},
		{Ref{}, `{"target":{"name":"demo"},"task":{"id":"ghp_abcdefghijklmnopqrstuvwxyz0123456789"}}`, Ref{TargetID: "demo"}},
		{Ref{}, `{"target":"demo"`, Ref{}},
		{Ref{TargetID: "t"}, `{"target":{"name":"other"},"task":{"id":"T-2"}}`, Ref{TargetID: "t", TaskID: "T-2"}},
	} {
		if got := RejectedRef(c.ref, []byte(c.body)); got != c.want {
			t.Errorf("RejectedRef(%+v, %s) = %+v, want %+v", c.ref, c.body, got, c.want)
		}
	}
}
