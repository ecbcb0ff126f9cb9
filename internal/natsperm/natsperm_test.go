package natsperm

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

var update = flag.Bool("update", false, "rewrite deploy/base/nats/users.conf from the table")

// usersConf is the deployments' copy of Conf.
var usersConf = filepath.Join("..", "..", "deploy", "base", "nats", "users.conf")

// TestDeployedUsersMatchTheTable keeps the NATS configuration of the
// deployments equal to the permissions the services are tested with, and
// checks that nats-server reads it: every user, with the permissions of
// the table.
func TestDeployedUsersMatchTheTable(t *testing.T) {
	want := Conf(PasswordVar)
	if *update {
		if err := os.WriteFile(usersConf, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(usersConf)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s differs from internal/natsperm: run `go test ./internal/natsperm -update`", usersConf)
	}
	for _, u := range Users() {
		t.Setenv(PasswordVar(u), "pw-"+u)
	}
	opts, err := server.ProcessConfigFile(usersConf)
	if err != nil {
		t.Fatalf("nats-server cannot read %s: %v", usersConf, err)
	}
	if len(opts.Users) != len(Users()) {
		t.Fatalf("%d users in the file, want %d", len(opts.Users), len(Users()))
	}
	for _, su := range opts.Users {
		p, ok := For(su.Username)
		if !ok || su.Password != "pw-"+su.Username {
			t.Fatalf("user %q: known %v, password from its variable %v", su.Username, ok, su.Password == "pw-"+su.Username)
		}
		if len(su.Permissions.Publish.Allow) != len(p.Publish) || len(su.Permissions.Subscribe.Allow) != len(p.Subscribe) ||
			(su.Permissions.Response != nil) != p.AllowResponses {
			t.Errorf("user %s: the server read other permissions than the table's", su.Username)
		}
	}
}

func TestEveryServiceHasAUser(t *testing.T) {
	for _, u := range Users() {
		if _, ok := For(u); !ok {
			t.Errorf("no permissions for %s", u)
		}
	}
	if _, ok := For("nobody"); ok {
		t.Error("an unknown user has permissions")
	}
	if p, _ := For("pr"); len(p.Publish) == 0 || p.Publish[0] == ">" {
		t.Error("pr may publish anything")
	}
}
