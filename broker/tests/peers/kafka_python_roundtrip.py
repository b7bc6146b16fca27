"""kafka-python (Debian's python3-kafka) against Strand's Kafka listener.

The order-events pattern: a producer sends JSON order events with acks=all; a consumer in group
`order-processor` reads them and commits; a second consumer of the same group, started after
ten more events, gets exactly those ten (the group's commits hold). Prints one line: the count
and whether every order came back exactly once. Then the admin client creates a topic and finds
it listed: "admin True".

Security settings come from `PEER_*` variables (see `peer_security.py`); with a fourth argument
`refused` or `denied` the script instead tries to produce one record and prints how it was refused.
"""
import json
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from peer_security import kafka_python_settings, mode

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
security = kafka_python_settings()


def produce(first, count):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        **security,
        value_serializer=lambda v: json.dumps(v).encode(),
        acks="all",
    )
    for i in range(first, first + count):
        producer.send(topic, {"order_id": i, "status": "created"}, key=str(i).encode())
    producer.flush()
    producer.close()


def consume(count):
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **security,
        group_id="order-processor",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        value_deserializer=json.loads,
    )
    seen = []
    deadline = time.time() + 60
    while len(seen) < count and time.time() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen.extend(r.value["order_id"] for r in records)
    consumer.commit()
    consumer.close()
    return sorted(seen)


def try_produce_one():
    """Prints how producing one record was refused, or "accepted"."""
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, **security, acks="all", max_block_ms=10000
        )
        producer.send(topic, b"x").get(timeout=20)
        producer.close()
        print("accepted")
    except Exception as e:  # the error's class is what the test checks
        print("refused", type(e).__name__, str(e).replace("\n", " ")[:300])


def admin():
    client = KafkaAdminClient(bootstrap_servers=bootstrap, **security)
    name = topic + "-admin"
    client.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    listed = name in client.list_topics()
    client.close()
    return listed


if mode() in ("refused", "denied"):
    try_produce_one()
else:
    produce(0, n)
    first = consume(n)
    produce(n, 10)
    second = consume(10)
    print(len(first), first == list(range(n)) and second == list(range(n, n + 10)))
    print("admin", admin())
