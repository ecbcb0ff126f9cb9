package clone_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/natstest"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/clone"
)

// TestSubmitWaitsForTheStream: a submit while the stream is not answering
// (its leader moving, in a cluster; deleted and made again here) is
// published once the stream is back, within SubmitRetryFor, and answered
// accepted, not refused.
func TestSubmitWaitsForTheStream(t *testing.T) {
	ns := natstest.Run(t)
	_, js := natstest.Connect(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := stage.Setup(ctx, js, stage.ResourceConfig{}); err != nil {
		t.Fatal(err)
	}
	res, err := stage.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	urls, err := egress.New(egress.Config{Allowed: []string{"forge.example"}})
	if err != nil {
		t.Fatal(err)
	}
	svc := clone.New(res, &stage.Publisher{JS: js, Actor: "clone-test"}, clone.Config{URLs: urls})
	body := []byte(`{"attempt_id":"a-wait","target":{"name":"demo","repo_url":"https://forge.example/o/r.git"},"task":{"id":"T-1","title":"x","allowed_paths":[".leviathan/"]}}`)

	if err := js.DeleteStream(ctx, stage.StreamName); err != nil {
		t.Fatal(err)
	}
	back := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		back <- stage.Setup(ctx, js, stage.ResourceConfig{})
	}()
	began := time.Now()
	resp := svc.Submit(ctx, body, "user:test")
	if err := <-back; err != nil {
		t.Fatal(err)
	}
	if resp.Error != "" || resp.Status != "accepted" {
		t.Fatalf("submit while the stream was away answered %+v after %v", resp, time.Since(began))
	}
	st, err := js.Stream(ctx, stage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, events.Subject("a-wait", events.AttemptRequested))
	if err != nil || !strings.Contains(string(msg.Data), `"T-1"`) {
		t.Fatalf("the request is not in the stream: %v", err)
	}
	t.Logf("accepted after %v", time.Since(began).Round(time.Millisecond))
}
