// peers-go: the produce-then-consume run of benches/peers/run.sh against Redis Streams and NATS
// JetStream, with the Go clients Debian packages (redigo, nats.go), built offline in GOPATH
// mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o peers-go benches/peers/go/main.go
//	peers-go redis -addr 127.0.0.1:6379 -records 300000 -bytes 1024
//	peers-go nats -url nats://127.0.0.1:4222 -records 300000 -bytes 1024
//
// One producer writes N values of B bytes to one stream with at most -window unanswered,
// every answer checked; then one consumer reads all N back from the start. It prints, like
// the other runners, one line per direction:
//
//	RESULT <system> <produce|consume> <records/s> <MB/s of values>
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peers-go redis|nats [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "redis":
		err = runRedis(os.Args[2:])
	case "nats":
		err = runNats(os.Args[2:])
	default:
		err = fmt.Errorf("unknown system %q: redis or nats", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers-go:", err)
		os.Exit(1)
	}
}

func report(system, what string, records, bytes int, elapsed time.Duration) {
	secs := elapsed.Seconds()
	fmt.Printf("RESULT %s %s %.0f %.1f\n", system, what, float64(records)/secs,
		float64(records)*float64(bytes)/secs/1e6)
}

// runRedis: XADD to one stream (the AOF on, fsync as the server is configured), pipelined on
// one connection: this goroutine sends, another reads and checks the answers; then XREAD
// from the start, -batch entries per call.
func runRedis(args []string) error {
	fs := flag.NewFlagSet("redis", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:6379", "Redis address")
	records := fs.Int("records", 300000, "records to produce and consume")
	size := fs.Int("bytes", 1024, "bytes per record value")
	window := fs.Int("window", 10000, "commands in flight at most")
	batch := fs.Int("batch", 1000, "entries per XREAD")
	stream := fs.String("stream", fmt.Sprintf("peers-%d", os.Getpid()), "stream key")
	fs.Parse(args)
	value := make([]byte, *size)
	for i := range value {
		value[i] = 'x'
	}
	conn, err := redis.Dial("tcp", *addr, redis.DialReadTimeout(60*time.Second),
		redis.DialWriteTimeout(60*time.Second))
	if err != nil {
		return err
	}
	defer conn.Close()
	slots := make(chan struct{}, *window)
	done := make(chan error, 1)
	started := time.Now()
	go func() {
		for i := 0; i < *records; i++ {
			if _, err := redis.String(conn.Receive()); err != nil {
				done <- fmt.Errorf("XADD %d: %w", i, err)
				return
			}
			<-slots
		}
		done <- nil
	}()
	for i := 0; i < *records; i++ {
		select {
		case slots <- struct{}{}:
		case err := <-done:
			return err
		}
		if err := conn.Send("XADD", *stream, "*", "v", value); err != nil {
			return err
		}
		if i%64 == 63 || len(slots) == cap(slots) {
			if err := conn.Flush(); err != nil {
				return err
			}
		}
	}
	if err := conn.Flush(); err != nil {
		return err
	}
	if err := <-done; err != nil {
		return err
	}
	report("redis", "produce", *records, *size, time.Since(started))

	started = time.Now()
	last := "0-0"
	consumed := 0
	for consumed < *records {
		reply, err := redis.Values(conn.Do("XREAD", "COUNT", *batch, "STREAMS", *stream, last))
		if err != nil {
			return fmt.Errorf("XREAD after %s: %w", last, err)
		}
		streams, err := redis.Values(reply[0], nil)
		if err != nil || len(streams) != 2 {
			return fmt.Errorf("unexpected XREAD answer: %v", err)
		}
		entries, err := redis.Values(streams[1], nil)
		if err != nil || len(entries) == 0 {
			return fmt.Errorf("XREAD answered no entries after %s (%d of %d read)", last, consumed, *records)
		}
		for _, e := range entries {
			entry, err := redis.Values(e, nil)
			if err != nil || len(entry) != 2 {
				return errors.New("unexpected stream entry")
			}
			fields, err := redis.ByteSlices(entry[1], nil)
			if err != nil || len(fields) != 2 || len(fields[1]) != *size {
				return errors.New("stream entry without its value")
			}
			if last, err = redis.String(entry[0], nil); err != nil {
				return err
			}
			consumed++
		}
	}
	report("redis", "consume", *records, *size, time.Since(started))
	_, err = conn.Do("DEL", *stream)
	return err
}

// runNats: a file-backed JetStream stream of one subject; PublishAsync with at most -window
// unacknowledged, every acknowledgement checked; then an ordered consumer (push, flow
// control, no acks) reads it from the start.
func runNats(args []string) error {
	fs := flag.NewFlagSet("nats", flag.ExitOnError)
	url := fs.String("url", nats.DefaultURL, "NATS server")
	records := fs.Int("records", 300000, "records to produce and consume")
	size := fs.Int("bytes", 1024, "bytes per record value")
	window := fs.Int("window", 10000, "publishes in flight at most")
	name := fs.String("stream", fmt.Sprintf("PEERS%d", os.Getpid()), "stream name")
	fs.Parse(args)
	value := make([]byte, *size)
	for i := range value {
		value[i] = 'x'
	}
	nc, err := nats.Connect(*url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(*window))
	if err != nil {
		return err
	}
	subject := "peers." + *name
	if _, err := js.AddStream(&nats.StreamConfig{
		Name:     *name,
		Subjects: []string{subject},
		Storage:  nats.FileStorage,
		Replicas: 1,
	}); err != nil {
		return fmt.Errorf("creating the stream: %w", err)
	}
	defer js.DeleteStream(*name)
	started := time.Now()
	pending := make([]nats.PubAckFuture, 0, *window)
	check := func() error {
		for _, f := range pending {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("publish: %w", err)
			case <-time.After(60 * time.Second):
				return errors.New("no acknowledgement in 60 s")
			}
		}
		pending = pending[:0]
		return nil
	}
	for i := 0; i < *records; i++ {
		f, err := js.PublishAsync(subject, value)
		if err != nil {
			return err
		}
		pending = append(pending, f)
		if len(pending) == *window {
			if err := check(); err != nil {
				return err
			}
		}
	}
	if err := check(); err != nil {
		return err
	}
	report("nats", "produce", *records, *size, time.Since(started))

	started = time.Now()
	sub, err := js.SubscribeSync(subject, nats.OrderedConsumer(), nats.DeliverAll())
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	for i := 0; i < *records; i++ {
		msg, err := sub.NextMsg(60 * time.Second)
		if err != nil {
			return fmt.Errorf("after %d of %d: %w", i, *records, err)
		}
		if len(msg.Data) != *size {
			return fmt.Errorf("record %d has %d bytes", i, len(msg.Data))
		}
	}
	report("nats", "consume", *records, *size, time.Since(started))
	return nil
}
