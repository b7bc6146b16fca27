// kafkajs (npm) against Strand's Kafka listener, as its README uses it.
//
// An idempotent producer sends JSON order events with acks=all; a consumer in group
// `order-processor` reads them and commits; after ten more events a second consumer of the group
// gets exactly those ten. Prints one line: the count and whether every order came back once.
const { Kafka, logLevel } = require('kafkajs');

const [, , broker, topic, n] = process.argv;
const total = parseInt(n, 10);
const kafka = new Kafka({ clientId: 'strand-test', brokers: [broker], logLevel: logLevel.ERROR });

async function produce(first, count) {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const messages = [];
  for (let i = first; i < first + count; i++) {
    messages.push({ key: String(i), value: JSON.stringify({ order_id: i, status: 'created' }) });
  }
  for (let i = 0; i < messages.length; i += 100) {
    await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 100) });
  }
  await producer.disconnect();
}

async function consume(count) {
  const consumer = kafka.consumer({ groupId: 'order-processor', heartbeatInterval: 500 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const seen = [];
  const next = new Map();
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${count}`)), 60000);
    consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        seen.push(JSON.parse(message.value.toString()).order_id);
        next.set(partition, (BigInt(message.offset) + 1n).toString());
        if (seen.length === count) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.commitOffsets([...next].map(([partition, offset]) => ({ topic, partition, offset })));
  await consumer.disconnect();
  return seen.sort((a, b) => a - b);
}

const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);
const same = (x, y) => x.length === y.length && x.every((v, i) => v === y[i]);

(async () => {
  await produce(0, total);
  const first = await consume(total);
  await produce(total, 10);
  const second = await consume(10);
  const ok = same(first, range(0, total)) && same(second, range(total, total + 10));
  console.log(first.length, ok ? 'True' : 'False');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
