"""aiokafka (from PyPI) against Strand's Kafka listener, as its README uses it.

An idempotent producer sends JSON order events to the topic with acks=all; a consumer in group
`order-processor` reads them and commits; after ten more events a second consumer of the group
gets exactly those ten. Prints one line: the count and whether every order came back once.
"""
import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])


async def produce(first, count):
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
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


async def main():
    await produce(0, n)
    first = await consume(n)
    await produce(n, 10)
    second = await consume(10)
    print(len(first), first == list(range(n)) and second == list(range(n, n + 10)))


asyncio.run(main())
