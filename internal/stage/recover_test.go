package stage

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
)

// syncBuffer is a log destination several goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEndpointAnswersAPanic: an endpoint whose handler panics answers an
// error, logs the panic with its stack, and serves the next request.
func TestEndpointAnswersAPanic(t *testing.T) {
	res, _ := setup(t)
	nc := res.JS.Conn()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	svc, err := micro.AddService(nc, micro.Config{Name: "panicky", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = svc.Stop() }()
	err = svc.AddEndpoint("e", Endpoint(log, "e", func(r micro.Request) {
		if string(r.Data()) == "boom" {
			var m map[string]int
			m["x"] = 1 // a nil map: panics
		}
		_ = r.Respond([]byte("ok"))
	}), micro.WithEndpointSubject("test.panicky"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request("test.panicky", []byte("boom"), 5*time.Second)
	if err != nil || msg.Header.Get(micro.ErrorCodeHeader) != "500" {
		t.Fatalf("a panicking request: %v, headers %v", err, msg.Header)
	}
	if l := logs.String(); !strings.Contains(l, "panic recovered") || !strings.Contains(l, "recover_test.go") {
		t.Fatalf("the log has no panic with its stack:\n%s", l)
	}
	if msg, err := nc.Request("test.panicky", []byte("fine"), 5*time.Second); err != nil || string(msg.Data) != "ok" {
		t.Fatalf("the next request: %v", err)
	}
}
