"""aiokafka (from PyPI) against Strand's Kafka listener, as its README uses it.

An idempotent producer sends JSON order events to the topic with acks=all; a consumer in group
`order-processor` reads them and commits; after ten more events a second consumer of the group
gets exactly those ten. Prints one line: the count and whether every order came back once.
Then the admin client creates a topic and finds it listed: "admin True".

Security settings come from `PEER_*` variables (see `peer_security.py`); with a fourth argument
`refused` or `denied` the script instead tries to produce one record and prints how it was refused.
"""
import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from peer_security import aiokafka_settings, mode

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
security = aiokafka_settings()


async def produce(first, count):
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        **security,
        value_serializer=lambda v: json.dumps(v).encode(),
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        sends = [
            await producer.send(topic, {"order_id": i, "status": "created"}, key=str(i).encode())
            for i in range(first, first + count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def consume(count):
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **security,
        group_id="order-processor",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        value_deserializer=json.loads,
    )
    await consumer.start()
    seen = []
    try:
        async with asyncio.timeout(60):
            async for message in consumer:
                seen.append(message.value["order_id"])
                if len(seen) == count:
                    break
        await consumer.commit()
    finally:
        await consumer.stop()
    return sorted(seen)


async def try_produce_one():
    """Prints how producing one record was refused, or "accepted"."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **security, acks="all")
    try:
        async with asyncio.timeout(30):
            await producer.start()
            await producer.send_and_wait(topic, b"x")
        print("accepted")
    except Exception as e:  # the error's class is what the test checks
        print("refused", type(e).__name__, str(e).replace("\n", " ")[:300])
    finally:
        await producer.stop()


async def admin():
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
    await client.start()
    try:
        name = topic + "-admin"
        await client.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
        return name in await client.list_topics()
    finally:
        await client.close()


async def main():
    if mode() in ("refused", "denied"):
        await try_produce_one()
        return
    await produce(0, n)
    first = await consume(n)
    await produce(n, 10)
    second = await consume(10)
    print(len(first), first == list(range(n)) and second == list(range(n, n + 10)))
    print("admin", await admin())


asyncio.run(main())
