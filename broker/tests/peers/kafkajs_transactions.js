// kafkajs (npm) transactions against Strand's Kafka listener.
//
// A transactional producer commits ten records, aborts five and commits three more, on a topic
// of one partition. A read_committed consumer (kafkajs' default) must see exactly the committed
// thirteen, in order; a readUncommitted one all eighteen. Prints "committed True" and
// "uncommitted True".
//
// Usage: node kafkajs_transactions.js BOOTSTRAP TOPIC
const { Kafka, logLevel } = require('kafkajs');

const [, , broker, topic] = process.argv;
const kafka = new Kafka({ clientId: 'strand-txn-test', brokers: [broker], logLevel: logLevel.NOTHING });

async function produce() {
  const producer = kafka.producer({
    transactionalId: 'kafkajs-txn',
    idempotent: true,
    maxInFlightRequests: 1,
  });
  await producer.connect();
  const send = async (name, n, commit) => {
    const txn = await producer.transaction();
    const messages = [];
    for (let i = 0; i < n; i++) messages.push({ key: 'k', value: `${name}-${i}` });
    await txn.send({ topic, messages });
    if (commit) await txn.commit();
    else await txn.abort();
  };
  await send('committed', 10, true);
  await send('aborted', 5, false);
  await send('after', 3, true);
  await producer.disconnect();
}

async function read(readUncommitted, wanted) {
  const consumer = kafka.consumer({
    groupId: `kafkajs-txn-${readUncommitted ? 'uncommitted' : 'committed'}`,
    readUncommitted,
    maxWaitTimeInMs: 100,
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const values = [];
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ message }) => {
      values.push(message.value.toString());
    },
  });
  const deadline = Date.now() + 60000;
  while (values.length < wanted && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  // A little longer, so records beyond those expected would show.
  await new Promise((r) => setTimeout(r, 500));
  await consumer.disconnect();
  return values;
}

(async () => {
  await produce();
  const committed = [];
  for (let i = 0; i < 10; i++) committed.push(`committed-${i}`);
  for (let i = 0; i < 3; i++) committed.push(`after-${i}`);
  const everything = [];
  for (let i = 0; i < 10; i++) everything.push(`committed-${i}`);
  for (let i = 0; i < 5; i++) everything.push(`aborted-${i}`);
  for (let i = 0; i < 3; i++) everything.push(`after-${i}`);
  const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
  let got = await read(false, committed.length);
  console.log('committed', same(got, committed) ? 'True' : 'False');
  if (!same(got, committed)) console.error(JSON.stringify(got));
  got = await read(true, everything.length);
  console.log('uncommitted', same(got, everything) ? 'True' : 'False');
  if (!same(got, everything)) console.error(JSON.stringify(got));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
