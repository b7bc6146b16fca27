// kafkajs (npm) against Strand's Kafka listener, as its README uses it.
//
// An idempotent producer sends JSON order events with acks=all; a consumer in group
// `order-processor` reads them and commits; after ten more events a second consumer of the group
// gets exactly those ten. Prints one line: the count and whether every order came back once.
// Then the admin client creates a topic and finds it listed: "admin True".
//
// Security settings come from the same `PEER_*` variables as the Python peers (see
// peer_security.py); with a fourth argument `refused` or `denied` the script instead tries to
// produce one record and prints how it was refused.
const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');

const [, , broker, topic, n, modeArg] = process.argv;
const total = parseInt(n, 10);
const env = (name) => process.env[name] || undefined;
const mode = modeArg || env('PEER_MODE') || 'roundtrip';

function security() {
  const protocol = env('PEER_SECURITY_PROTOCOL') || 'PLAINTEXT';
  const settings = {};
  if (protocol.endsWith('SSL')) {
    settings.ssl = { ca: [fs.readFileSync(env('PEER_SSL_CA'))] };
    if (env('PEER_SSL_CERT')) {
      settings.ssl.cert = fs.readFileSync(env('PEER_SSL_CERT'));
      settings.ssl.key = fs.readFileSync(env('PEER_SSL_KEY'));
    }
  }
  if (protocol.startsWith('SASL')) {
    settings.sasl = {
      mechanism: env('PEER_SASL_MECHANISM').toLowerCase(),
      username: env('PEER_SASL_USERNAME'),
      password: env('PEER_SASL_PASSWORD'),
    };
  }
  return settings;
}

const kafka = new Kafka({
  clientId: 'strand-test',
  brokers: [broker],
  logLevel: logLevel.NOTHING,
  retry: { retries: mode === 'roundtrip' ? 5 : 0 },
  ...security(),
});

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

async function tryProduceOne() {
  const producer = kafka.producer();
  try {
    await producer.connect();
    await producer.send({ topic, acks: -1, messages: [{ value: 'x' }] });
    console.log('accepted');
  } catch (e) {
    const cause = e.originalError || e.cause || e;
    console.log('refused', cause.type || cause.name || e.name, String(e.message).slice(0, 300));
  } finally {
    await producer.disconnect().catch(() => {});
  }
}

async function admin() {
  const client = kafka.admin();
  await client.connect();
  const name = `${topic}-admin`;
  await client.createTopics({ topics: [{ topic: name, numPartitions: 2 }] });
  const listed = (await client.listTopics()).includes(name);
  await client.disconnect();
  return listed;
}

(async () => {
  if (mode === 'refused' || mode === 'denied') {
    await tryProduceOne();
    return;
  }
  await produce(0, total);
  const first = await consume(total);
  await produce(total, 10);
  const second = await consume(10);
  const ok = same(first, range(0, total)) && same(second, range(total, total + 10));
  console.log(first.length, ok ? 'True' : 'False');
  console.log('admin', (await admin()) ? 'True' : 'False');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
