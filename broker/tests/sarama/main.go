// A Kafka client nobody here wrote, Go's sarama 1.22 as Debian packages it, driven by the
// broker's integration tests (broker/tests/it/kafka_versions.rs). Each mode prints what it saw
// on stdout, one fact a line, and exits non-zero with the reason on stderr when anything fails.
//
//	sarama-check produce <bootstrap> <topic> <from> <n>   create the topic if needed, then
//	                                                      send values m-<from>..m-<from+n-1>
//	                                                      with the idempotent producer
//	sarama-check consume <bootstrap> <topic> <group> <n>  read n records in the group,
//	                                                      committing as it goes, then leave
//	sarama-check legacy  <bootstrap> <topic>              the requests a client configured
//	                                                      for Kafka 0.10.0 sends
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/Shopify/sarama"
)

// Every wait is bounded, so a broker that stops answering fails the run instead of hanging it.
const waitMax = 60 * time.Second

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "sarama-check: "+format+"\n", args...)
	os.Exit(1)
}

func config(version sarama.KafkaVersion) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = "sarama-check"
	c.Version = version
	c.Net.DialTimeout = 10 * time.Second
	c.Net.ReadTimeout = waitMax
	c.Net.WriteTimeout = 10 * time.Second
	c.Metadata.Retry.Max = 10
	c.Metadata.Retry.Backoff = 200 * time.Millisecond
	c.Admin.Timeout = 10 * time.Second
	return c
}

func createTopic(bootstrap, topic string, c *sarama.Config) {
	admin, err := sarama.NewClusterAdmin([]string{bootstrap}, c)
	if err != nil {
		fail("admin: %v", err)
	}
	defer admin.Close()
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		if te, ok := err.(*sarama.TopicError); !ok || te.Err != sarama.ErrTopicAlreadyExists {
			fail("create topic %s: %v", topic, err)
		}
	}
	fmt.Printf("topic %s\n", topic)
}

func produce(bootstrap, topic string, from, n int) {
	c := config(sarama.V1_0_0_0)
	createTopic(bootstrap, topic, c)
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Retry.Max = 5
	c.Producer.Return.Successes = true
	c.Net.MaxOpenRequests = 1
	producer, err := sarama.NewSyncProducer([]string{bootstrap}, c)
	if err != nil {
		fail("producer: %v", err)
	}
	for i := from; i < from+n; i++ {
		_, offset, err := producer.SendMessage(&sarama.ProducerMessage{
			Topic: topic,
			Value: sarama.StringEncoder(fmt.Sprintf("m-%d", i)),
		})
		if err != nil {
			fail("send m-%d: %v", i, err)
		}
		fmt.Printf("sent m-%d at %d\n", i, offset)
	}
	if err := producer.Close(); err != nil {
		fail("producer close: %v", err)
	}
}

type handler struct {
	want int
	got  int
	done chan struct{}
}

func (h *handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *handler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		if h.got >= h.want {
			return nil
		}
		fmt.Printf("got %s at %d\n", m.Value, m.Offset)
		s.MarkMessage(m, "")
		h.got++
		if h.got == h.want {
			close(h.done)
			return nil
		}
	}
	return nil
}

func consume(bootstrap, topic, group string, n int) {
	c := config(sarama.V1_0_0_0)
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	c.Consumer.Return.Errors = true
	g, err := sarama.NewConsumerGroup([]string{bootstrap}, group, c)
	if err != nil {
		fail("consumer group: %v", err)
	}
	go func() {
		for err := range g.Errors() {
			fmt.Fprintf(os.Stderr, "sarama-check: consumer error: %v\n", err)
		}
	}()
	h := &handler{want: n, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, h); err != nil {
				stopped <- err
				return
			}
		}
		stopped <- nil
	}()
	select {
	case <-h.done:
	case err := <-stopped:
		fail("consume stopped after %d of %d records: %v", h.got, n, err)
	case <-time.After(waitMax):
		fail("only %d of %d records within %v", h.got, n, waitMax)
	}
	cancel()
	<-stopped
	// Closing the group commits what was marked, then leaves the group.
	if err := g.Close(); err != nil {
		fail("close: %v", err)
	}
	fmt.Printf("consumed %d\n", h.got)
}

// legacy sends what a client configured for Kafka 0.10.0 sends: CreateTopics v0, ListOffsets
// v0, Fetch v2 (which gets message sets v1 back, converted from the stored batches, and reads
// the partition from its start), and a Produce v2 holding a message set v1, which the broker
// refuses with UNSUPPORTED_FOR_MESSAGE_FORMAT instead of closing the connection.
func legacy(bootstrap, topic string) {
	c := config(sarama.V0_10_1_0)
	createTopic(bootstrap, topic, c)
	c = config(sarama.V0_10_0_0)
	client, err := sarama.NewClient([]string{bootstrap}, c)
	if err != nil {
		fail("client: %v", err)
	}
	defer client.Close()
	newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		fail("newest offset: %v", err)
	}
	fmt.Printf("newest %d\n", newest)
	if newest > 0 {
		consumer, err := sarama.NewConsumerFromClient(client)
		if err != nil {
			fail("consumer: %v", err)
		}
		pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
		if err != nil {
			fail("consume partition: %v", err)
		}
		for read := int64(0); read < newest; read++ {
			select {
			case m := <-pc.Messages():
				fmt.Printf("old got %s at %d\n", m.Value, m.Offset)
			case err := <-pc.Errors():
				fail("fetch v2: %v", err)
			case <-time.After(waitMax):
				fail("fetch v2: only %d of %d records within %v", read, newest, waitMax)
			}
		}
		pc.Close()
		consumer.Close()
	}
	c.Producer.Return.Successes = true
	c.Producer.Retry.Max = 0
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		fail("producer: %v", err)
	}
	_, _, err = producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder("old")})
	fmt.Printf("produce v2: %v\n", err)
	producer.Close()
}

func number(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail("not a number: %q", s)
	}
	return n
}

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 5 && args[0] == "produce":
		produce(args[1], args[2], number(args[3]), number(args[4]))
	case len(args) == 5 && args[0] == "consume":
		consume(args[1], args[2], args[3], number(args[4]))
	case len(args) == 3 && args[0] == "legacy":
		legacy(args[1], args[2])
	default:
		fail("usage: sarama-check produce|consume|legacy <bootstrap> <topic> ...")
	}
}
