"""confluent-kafka (PyPI) transactions against Strand's Kafka listener.

A transactional producer commits ten records, aborts five and commits three more, on a topic
of one partition. A read_committed consumer must see exactly the committed thirteen, in order;
a read_uncommitted one all eighteen. Prints "committed True" and "uncommitted True".

Usage: confluent_transactions.py BOOTSTRAP TOPIC
"""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

bootstrap, topic = sys.argv[1], sys.argv[2]

producer = Producer({
    "bootstrap.servers": bootstrap,
    "transactional.id": "confluent-python",
    "transaction.timeout.ms": 30000,
})
producer.init_transactions(30)
producer.begin_transaction()
for i in range(10):
    producer.produce(topic, key=b"k", value=f"committed-{i}".encode())
producer.commit_transaction(30)
producer.begin_transaction()
for i in range(5):
    producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
producer.flush(30)
producer.abort_transaction(30)
producer.begin_transaction()
for i in range(3):
    producer.produce(topic, key=b"k", value=f"after-{i}".encode())
producer.commit_transaction(30)


def read(isolation, wanted):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"confluent-{isolation}",
        "enable.auto.commit": False,
        "isolation.level": isolation,
    })
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values = []
    deadline = time.monotonic() + 60
    extra_until = None
    while time.monotonic() < deadline:
        if extra_until is None and len(values) >= wanted:
            extra_until = time.monotonic() + 0.5
        if extra_until is not None and time.monotonic() > extra_until:
            break
        message = consumer.poll(0.1)
        if message is None:
            continue
        if message.error():
            raise SystemExit(f"consumer error: {message.error()}")
        values.append(message.value().decode())
    consumer.close()
    return values


committed = [f"committed-{i}" for i in range(10)] + [f"after-{i}" for i in range(3)]
everything = (
    [f"committed-{i}" for i in range(10)]
    + [f"aborted-{i}" for i in range(5)]
    + [f"after-{i}" for i in range(3)]
)
got = read("read_committed", len(committed))
print("committed", got == committed, flush=True)
if got != committed:
    print(got, file=sys.stderr)
got = read("read_uncommitted", len(everything))
print("uncommitted", got == everything, flush=True)
if got != everything:
    print(got, file=sys.stderr)
