package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The read limit: the rate at which the stream is merely read, with the
// requests the projector's catch-up makes, every message dropped as it
// comes (not decoded, not applied). The replay cannot be faster than
// that on the same machine, server and client, so replay ÷ read limit
// says how much of the replay's time is the projector's own work rather
// than the server's and the client's.
//
// The catch-up (services/projector/catchup.go) exports nothing, so its
// request pattern is repeated here with its defaults: ranges of 2,048
// sequences (defaultReplayChunk), two workers (defaultReplayWorkers) with
// an inbox each (a channel subscription with room for a whole response),
// at most six ranges handed out and not yet taken in order
// (defaultReplayWindow), one request per range on
// $JS.API.DIRECT.GET.<stream> with {"seq":…,"batch":…,"no_hdr":true}, the
// response read up to its end-of-batch status (204) and used only when
// gap-free. Keep them in step with catchup.go.
const (
	readChunk   = 2048
	readWorkers = 2
	readWindow  = 6
	readTimeout = 10 * time.Second // replayTimeout
)

// readPass reads the whole stream as described above and prints and
// returns the rate. It is timed as replay times a replay: from the start
// (which, as Projector.Run does, asks for the stream's info) until the
// last range is taken in order, noticed by the same 2 ms polling as
// Projector.WaitApplied.
func readPass(ctx context.Context, st *stack, stdout io.Writer) (float64, error) {
	info, err := st.res.Stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	n, last := info.State.Msgs, info.State.LastSeq
	if !info.Config.AllowDirect {
		return 0, errors.New("read limit: the stream does not allow direct gets, so the replay does not use them either")
	}
	if n != last-info.State.FirstSeq+1 {
		return 0, fmt.Errorf("read limit: the stream has gaps (%d messages in sequences %d-%d)", n, info.State.FirstSeq, last)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpuBefore := readCPU()
	start := time.Now()

	var taken atomic.Uint64 // every sequence up to it has been read
	done := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { done <- readStream(rctx, st, info.State.FirstSeq, &taken) }()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	ended := false // readStream returned (nil, having taken the last range)
wait:
	for {
		select {
		case err := <-done:
			if err == nil && taken.Load() < last {
				err = errors.New("stopped early")
			}
			if err != nil {
				return 0, fmt.Errorf("read limit: %w", err)
			}
			ended, done = true, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C: // the end is noticed at a tick, as a replay's is
			if taken.Load() >= last {
				break wait
			}
		}
	}
	took := time.Since(start)
	cpu := readCPU().since(cpuBefore)
	runtime.ReadMemStats(&after)
	if !ended {
		if err := <-done; err != nil {
			return 0, fmt.Errorf("read limit: %w", err)
		}
	}
	rate := math.Round(float64(n) / took.Seconds())
	fmt.Fprintf(stdout, "read:   %d events in %v = %.0f events/s (GC: %d cycles, %.0f MB allocated; machine: %s)\n",
		n, took.Round(time.Millisecond), rate, after.NumGC-before.NumGC,
		float64(after.TotalAlloc-before.TotalAlloc)/1e6, cpu)
	return rate, nil
}

// readRange is a range of sequences a worker reads.
type readRange struct {
	from, to uint64
	err      error
	done     chan struct{}
}

// readStream reads sequences from first up to the stream's last one (asked
// for here, as Projector.Run asks when it starts), setting taken as the
// ranges are taken in order.
func readStream(ctx context.Context, st *stack, first uint64, taken *atomic.Uint64) error {
	info, err := st.res.Stream.Info(ctx)
	if err != nil {
		return err
	}
	target := info.State.LastSeq
	nc := st.res.JS.Conn()
	subject := jetstream.DefaultAPIPrefix + "DIRECT.GET." + info.Config.Name

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	todo := make(chan *readRange, readWindow)
	finished := make(chan struct{})
	for range readWorkers {
		go func() {
			defer func() { finished <- struct{}{} }()
			ch := make(chan *nats.Msg, readChunk+8)
			sub, err := nc.ChanSubscribe(nc.NewInbox(), ch)
			if sub != nil {
				defer func() { _ = sub.Unsubscribe() }()
			}
			var req []byte
			for r := range todo {
				if err == nil { // after an error, the inbox is not used again
					err = readOne(wctx, nc, subject, sub, ch, &req, r)
				}
				r.err = err
				close(r.done)
			}
		}()
	}
	defer func() {
		close(todo)
		cancel()
		for range readWorkers {
			<-finished
		}
	}()

	var fifo []*readRange
	from := first
	enqueue := func() {
		if from > target {
			return
		}
		r := &readRange{from: from, to: min(from+readChunk-1, target), done: make(chan struct{})}
		from = r.to + 1
		fifo = append(fifo, r)
		todo <- r
	}
	for range readWindow {
		enqueue()
	}
	for len(fifo) > 0 {
		r := fifo[0]
		fifo = fifo[1:]
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			return r.err
		}
		taken.Store(r.to)
		enqueue()
	}
	return nil
}

// readOne asks for the range r with one batched direct get without headers
// and reads the response, dropping each message. The response has to be
// gap-free, as the catch-up needs it to be to use it.
func readOne(ctx context.Context, nc *nats.Conn, subject string, sub *nats.Subscription, ch chan *nats.Msg, req *[]byte, r *readRange) error {
	b := append((*req)[:0], `{"seq":`...)
	b = strconv.AppendUint(b, r.from, 10)
	b = append(b, `,"batch":`...)
	b = strconv.AppendUint(b, r.to-r.from+1, 10)
	b = append(b, `,"no_hdr":true}`...)
	*req = b
	if err := nc.PublishRequest(subject, sub.Subject, b); err != nil {
		return err
	}
	timer := time.NewTimer(readTimeout)
	defer timer.Stop()
	var n uint64
	for {
		var m *nats.Msg
		select {
		case m = <-ch:
		default:
			timer.Reset(readTimeout)
			select {
			case m = <-ch:
			case <-timer.C:
				return errors.New("direct get: no response in time")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if status := m.Header.Get("Status"); status != "" && m.Header.Get(jetstream.SequenceHeader) == "" {
			if status != "204" {
				return fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
			}
			if dropped, _ := sub.Dropped(); dropped > 0 {
				return fmt.Errorf("direct get: %d messages dropped", dropped)
			}
			last, err := strconv.ParseUint(m.Header.Get(jetstream.LastSequenceHeader), 10, 64)
			if err != nil || last != r.to || n != r.to-r.from+1 {
				return fmt.Errorf("direct get: range %d-%d not read whole: %d messages, last %q", r.from, r.to, n, m.Header.Get(jetstream.LastSequenceHeader))
			}
			return nil
		}
		if m.Header != nil {
			return errors.New("direct get: headers in a response asked without them")
		}
		n++ // the message is dropped undecoded
	}
}
