"""kafka-python (Debian's python3-kafka) or aiokafka (PyPI) logging in to Strand's Kafka listener
over SASL_PLAINTEXT, as their documentation configures them.

Arguments: client (kafka-python or aiokafka), bootstrap, mechanism, user, password, topic.
Produces three records and reads them back from the beginning. Prints "ok 3" on success, or
"refused <exception type>" and exits 3 when the broker refuses the login (so the caller can
tell a refusal from a crash).
"""
import asyncio
import sys

client, bootstrap, mechanism, user, password, topic = sys.argv[1:7]
VALUES = [f"{mechanism}-{i}".encode() for i in range(3)]
SETTINGS = dict(
    bootstrap_servers=bootstrap,
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism=mechanism,
    sasl_plain_username=user,
    sasl_plain_password=password,
)


def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(acks="all", **SETTINGS)
    for value in VALUES:
        producer.send(topic, value).get(timeout=20)
    producer.close()
    consumer = KafkaConsumer(
        topic, auto_offset_reset="earliest", consumer_timeout_ms=20000, **SETTINGS
    )
    seen = []
    for message in consumer:
        seen.append(message.value)
        if len(seen) == len(VALUES):
            break
    consumer.close()
    return seen


async def aiokafka():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(acks="all", **SETTINGS)
    await producer.start()
    try:
        for value in VALUES:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **SETTINGS)
    await consumer.start()
    try:
        seen = []
        while len(seen) < len(VALUES):
            message = await asyncio.wait_for(consumer.getone(), 20)
            seen.append(message.value)
        return seen
    finally:
        await consumer.stop()


try:
    seen = kafka_python() if client == "kafka-python" else asyncio.run(aiokafka())
except Exception as e:  # the refusal each client reports, whatever its type
    print(f"refused {type(e).__name__}")
    sys.exit(3)
print(f"ok {len(seen)}" if seen == VALUES else f"wrong {seen}")
