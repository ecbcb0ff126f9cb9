package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// authServer starts a JetStream server that requires a user and password,
// as the Kubernetes deployment's NATS does.
func authServer(t *testing.T, user, pass string) *server.Server {
	t.Helper()
	return startServer(t, &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Username: user, Password: pass, NoSigs: true,
	})
}

// startServer starts an embedded NATS server that stops when the test ends.
func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// TestNATSCredentialsFromEnvironment checks that NATS_USER and NATS_PASSWORD
// reach both kinds of NATS client of the binary: `leviathan run` (every
// Deployment) and `leviathan submit` (the proof Job).
func TestNATSCredentialsFromEnvironment(t *testing.T) {
	const user, pass = "leviathan", "s3cret-nats-pass"
	ns := authServer(t, user, pass)
	withCreds := env(map[string]string{"NATS_URL": ns.ClientURL(), "NATS_USER": user, "NATS_PASSWORD": pass})
	noCreds := env(map[string]string{"NATS_URL": ns.ClientURL()})
	wrongCreds := env(map[string]string{"NATS_URL": ns.ClientURL(), "NATS_USER": user, "NATS_PASSWORD": "wrong"})

	submitArgs := []string{"submit", "--target", "demo", "--repo-url", "http://127.0.0.1:1/x.git", "--task-id", "T-1", "--title", "t"}
	for name, getenv := range map[string]func(string) string{"none": noCreds, "wrong": wrongCreds} {
		var out bytes.Buffer
		err := run(context.Background(), submitArgs, getenv, &out, &out)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
			t.Errorf("submit with %s credentials: err = %v, want an authorization violation", name, err)
		}
		if strings.Contains(out.String()+errString(err), pass) {
			t.Errorf("submit with %s credentials printed the password", name)
		}
	}
	// With credentials the connection is accepted; nothing answers the
	// submit subject, which proves the request got past authentication.
	var out bytes.Buffer
	err := run(context.Background(), submitArgs, withCreds, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "no clone service is answering") {
		t.Fatalf("submit with credentials: err = %v, want no responders", err)
	}

	// A service without credentials fails at start-up.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, []string{"run", "backlog-edit", "--http-addr", "127.0.0.1:0"}, noCreds, &out, &out)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Fatalf("run without credentials: err = %v", err)
	}

	// With credentials `leviathan setup` creates the stream, buckets and
	// consumers; the service binds to them, registers with nats micro (the
	// last step of its start-up) and keeps running until cancelled.
	out.Reset()
	if err := run(ctx, []string{"setup"}, withCreds, &out, &out); err != nil || !strings.Contains(out.String(), "set up: stream LEVIATHAN_EVENTS") {
		t.Fatalf("setup: %v\n%s", err, out.String())
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	var svcOut bytes.Buffer
	go func() {
		done <- run(sctx, []string{"run", "backlog-edit", "--http-addr", "127.0.0.1:0"}, withCreds, &svcOut, &svcOut)
	}()
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, pass))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for {
		if _, err := nc.Request("$SRV.PING.leviathan-backlog-edit", nil, 200*time.Millisecond); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("service exited before it was up: %v\n%s", err, svcOut.String())
		case <-ctx.Done():
			t.Fatalf("the service did not come up\n%s", svcOut.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(ctx, "LEVIATHAN_EVENTS"); err != nil {
		t.Fatalf("stream: %v", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run with credentials: %v\n%s", err, svcOut.String())
	}
	if strings.Contains(svcOut.String(), pass) {
		t.Fatal("the service logged the NATS password")
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestSetupRetriesARequestNobodyAnswers: a JetStream request that gets no
// answer (a cluster drops it during a leader election) costs one try, not
// the whole set-up's time. The server here has no JetStream of its own: a
// client answers its API by passing each request on to a JetStream
// server, except the first, which it drops.
func TestSetupRetriesARequestNobodyAnswers(t *testing.T) {
	front := startServer(t, &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true})
	const user, pass = "leviathan", "p"
	back := authServer(t, user, pass)
	bnc, err := nats.Connect(back.ClientURL(), nats.UserInfo(user, pass))
	if err != nil {
		t.Fatal(err)
	}
	defer bnc.Close()
	fnc, err := nats.Connect(front.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer fnc.Close()
	dropped := make(chan string, 1)
	first := true
	sub, err := fnc.Subscribe("$JS.API.>", func(m *nats.Msg) {
		if first {
			first = false
			dropped <- m.Subject
			return
		}
		resp, err := bnc.Request(m.Subject, m.Data, 10*time.Second)
		if err == nil {
			_ = m.Respond(resp.Data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	began := time.Now()
	err = run(ctx, []string{"setup", "--timeout", "40s", "--try-timeout", "2s"}, env(map[string]string{"NATS_URL": front.ClientURL()}), &out, &out)
	if err != nil || !strings.Contains(out.String(), "set up: stream LEVIATHAN_EVENTS") {
		t.Fatalf("setup after %v: %v\n%s", time.Since(began), err, out.String())
	}
	t.Logf("dropped %s; set up in %v", <-dropped, time.Since(began).Round(time.Millisecond))
	js, _ := jetstream.New(bnc)
	if _, err := js.Stream(ctx, "LEVIATHAN_EVENTS"); err != nil {
		t.Fatalf("the stream is not on the JetStream server: %v", err)
	}
}
