// kafkajs (npm) logging in to Strand's Kafka listener over SASL_PLAINTEXT, as its README
// configures it (SaslHandshake v1, then SaslAuthenticate).
//
// Arguments: bootstrap, mechanism (plain, scram-sha-256, scram-sha-512), user, password, topic.
// Produces three records and reads them back. Prints "ok 3" on success, or "refused <error
// name>" and exits 3 when the login is refused.
const { Kafka, logLevel } = require('kafkajs');

const [, , broker, mechanism, username, password, topic] = process.argv;
const values = [0, 1, 2].map((i) => `${mechanism}-${i}`);
const kafka = new Kafka({
  clientId: 'strand-sasl-test',
  brokers: [broker],
  sasl: { mechanism, username, password },
  logLevel: logLevel.NOTHING,
  retry: { retries: 1 },
});

async function main() {
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, acks: -1, messages: values.map((value) => ({ value })) });
  await producer.disconnect();
  const consumer = kafka.consumer({ groupId: `g-${topic}` });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out consuming')), 30000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (seen.length === values.length) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  return seen;
}

main().then(
  (seen) => {
    console.log(JSON.stringify(seen) === JSON.stringify(values) ? `ok ${seen.length}` : `wrong ${seen}`);
    process.exit(0);
  },
  (e) => {
    console.log(`refused ${e.name}`);
    process.exit(3);
  },
);
