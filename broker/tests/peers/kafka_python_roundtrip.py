"""kafka-python (Debian's python3-kafka) against Strand's Kafka listener.

The order-events pattern: a producer sends JSON order events with acks=all; a consumer in group
`order-processor` reads them and commits; a second consumer of the same group, started after
ten more events, gets exactly those ten (the group's commits hold). Prints one line: the count
and whether every order came back exactly once.
"""
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])


def produce(first, count):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
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


produce(0, n)
first = consume(n)
produce(n, 10)
second = consume(10)
print(len(first), first == list(range(n)) and second == list(range(n, n + 10)))
