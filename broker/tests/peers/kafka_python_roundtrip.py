"""kafka-python (Debian's python3-kafka) against Strand's Kafka listener.

The order-events pattern: a producer sends JSON order events with acks=all, a consumer reads
them back by assigned partitions (consumer groups over the Kafka protocol are not served yet).
Prints one line: the count and whether every order came back exactly once.
"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = KafkaProducer(
    bootstrap_servers=bootstrap,
    value_serializer=lambda v: json.dumps(v).encode(),
    acks="all",
)
for i in range(n):
    producer.send(topic, {"order_id": i, "status": "created"}, key=str(i).encode())
producer.flush()
producer.close()

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    value_deserializer=json.loads,
    consumer_timeout_ms=5000,
    enable_auto_commit=False,
)
partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
consumer.assign(partitions)
consumer.seek_to_beginning()
seen = sorted(message.value["order_id"] for message in consumer)
print(len(seen), seen == list(range(n)))
