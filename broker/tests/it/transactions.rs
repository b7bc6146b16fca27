//! Kafka transactions against the real `strand-broker` binary, with librdkafka (the `rdkafka`
//! crate) as the client: commit and abort as `read_committed` and `read_uncommitted` consumers
//! see them, zombie fencing, a consume-transform-produce loop that is killed with `kill -9` and
//! still writes each input exactly once, and a broker killed between the two phases of a commit.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::broker_process::{run_cli, spawn_until, start_broker, stop, strand_cli, BrokerProcess};

fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4");
    config
}

fn transactional_producer(bootstrap: &str, id: &str) -> BaseProducer {
    config(bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "30000")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("transactional producer")
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn send(producer: &BaseProducer, topic: &str, partition: Option<i32>, key: &str, value: &str) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    producer.send(record).map_err(|(e, _)| e).unwrap();
    producer.poll(Duration::ZERO);
}

/// Every value of `topic`'s partitions `0..n_partitions` a consumer at `isolation` reads from
/// the beginning, in order per partition, once `done` says it has enough (or after a minute);
/// then half a second more, so records beyond what was expected would show.
fn read_values(
    bootstrap: &str,
    topic: &str,
    n_partitions: i32,
    isolation: &str,
    done: impl Fn(&BTreeMap<i32, Vec<String>>) -> bool,
) -> BTreeMap<i32, Vec<String>> {
    let consumer: BaseConsumer = config(bootstrap)
        .set("group.id", "txn-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..n_partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut extra_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || extra_until.is_some_and(|t| now > t) {
            break;
        }
        if extra_until.is_none() && done(&got) {
            extra_until = Some(now + Duration::from_millis(500));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                got.entry(m.partition()).or_default().push(value);
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    got
}

fn all(values: &BTreeMap<i32, Vec<String>>) -> Vec<String> {
    values.values().flatten().cloned().collect()
}

fn count(values: &BTreeMap<i32, Vec<String>>) -> usize {
    values.values().map(Vec::len).sum()
}

fn create_topic(broker: &BrokerProcess, name: &str, partitions: u32) {
    let created = run_cli(
        &strand_cli(),
        &broker.addr,
        &[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ],
        b"",
    );
    assert!(created.status.success());
}

/// A committed transaction is seen by both isolation levels; an aborted one only by
/// `read_uncommitted`; a second producer with the same transactional id fences the first.
#[test]
fn rdkafka_commit_and_abort_as_each_isolation_level_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    create_topic(&broker, "txn-basic", 1);
    let producer = transactional_producer(&broker.kafka_addr, "basic");
    producer.init_transactions(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..10 {
        send(&producer, "txn-basic", None, "k", &format!("committed-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..5 {
        send(&producer, "txn-basic", None, "k", &format!("aborted-{i}"));
    }
    producer.flush(TIMEOUT).unwrap();
    producer.abort_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..3 {
        send(&producer, "txn-basic", None, "k", &format!("after-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();

    // An open transaction holds read_committed consumers back at its first record.
    producer.begin_transaction().unwrap();
    send(&producer, "txn-basic", None, "k", "open");
    producer.flush(TIMEOUT).unwrap();

    let committed: Vec<String> = (0..10)
        .map(|i| format!("committed-{i}"))
        .chain((0..3).map(|i| format!("after-{i}")))
        .collect();
    let got = read_values(&broker.kafka_addr, "txn-basic", 1, "read_committed", |g| {
        count(g) >= 13
    });
    assert_eq!(all(&got), committed);
    let mut everything: Vec<String> = (0..10).map(|i| format!("committed-{i}")).collect();
    everything.extend((0..5).map(|i| format!("aborted-{i}")));
    everything.extend((0..3).map(|i| format!("after-{i}")));
    everything.push("open".into());
    let got = read_values(
        &broker.kafka_addr,
        "txn-basic",
        1,
        "read_uncommitted",
        |g| count(g) >= 19,
    );
    assert_eq!(all(&got), everything);

    // A new instance with the same transactional id aborts the open transaction and fences
    // the old one: its commit fails and its record never becomes visible.
    let successor = transactional_producer(&broker.kafka_addr, "basic");
    successor.init_transactions(TIMEOUT).unwrap();
    let fenced = producer.commit_transaction(TIMEOUT);
    assert!(fenced.is_err(), "the zombie's commit went through");
    successor.begin_transaction().unwrap();
    send(&successor, "txn-basic", None, "k", "successor");
    successor.commit_transaction(TIMEOUT).unwrap();
    let mut expected = committed.clone();
    expected.push("successor".into());
    let got = read_values(&broker.kafka_addr, "txn-basic", 1, "read_committed", |g| {
        count(g) >= 14
    });
    assert_eq!(all(&got), expected);
    drop(producer);
    drop(successor);
    stop(broker);
}

const EOS_RECORDS: usize = 100_000;

/// The consume-transform-produce child of the exactly-once test: run as this test binary with
/// `STRAND_EOS_BOOTSTRAP` set (otherwise it does nothing). It reads `eos-in` from the group's
/// committed offsets and, one transaction per poll round, writes `t:<value>` to `eos-out` and
/// commits the input offsets in the same transaction; it prints the records it has committed
/// and exits once it has committed everything `eos-in` held when it started.
#[test]
#[ignore = "a child process of rdkafka_exactly_once_across_kill_9_of_the_transformer"]
fn eos_transformer() {
    let Ok(bootstrap) = std::env::var("STRAND_EOS_BOOTSTRAP") else {
        return;
    };
    // Set for the runs the parent kills: where to hold an open transaction for it.
    let pause_at: Option<usize> = std::env::var("STRAND_EOS_PAUSE_AT")
        .ok()
        .and_then(|n| n.parse().ok());
    let producer = transactional_producer(&bootstrap, "eos-transformer");
    producer.init_transactions(TIMEOUT).unwrap();
    let consumer: BaseConsumer = config(&bootstrap)
        .set("group.id", "eos-group")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition("eos-in", p);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT).unwrap();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..2 {
        let start = match committed.find_partition("eos-in", p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        positions.insert(p, start);
        ends.insert(
            p,
            consumer.fetch_watermarks("eos-in", p, TIMEOUT).unwrap().1,
        );
        assignment
            .add_partition_offset("eos-in", p, Offset::Offset(start))
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut n_committed = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while positions.iter().any(|(p, o)| *o < ends[p]) && Instant::now() < deadline {
        let mut round = Vec::new();
        let round_end = Instant::now() + Duration::from_millis(100);
        while round.len() < 2_000 && Instant::now() < round_end {
            match consumer.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => round.push((
                    m.partition(),
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                )),
                Some(Err(e)) => panic!("consumer error: {e}"),
                None => {}
            }
        }
        if round.is_empty() {
            continue;
        }
        producer.begin_transaction().unwrap();
        for (partition, offset, value) in &round {
            let value = format!("t:{}", String::from_utf8_lossy(value));
            send(&producer, "eos-out", None, &value, &value);
            positions.insert(*partition, offset + 1);
        }
        if pause_at.is_some_and(|at| n_committed >= at) {
            // The records are in the log, the transaction is open: the parent kills us here.
            producer.flush(TIMEOUT).unwrap();
            println!("sent");
            std::thread::sleep(Duration::from_secs(30));
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &positions {
            offsets
                .add_partition_offset("eos-in", *p, Offset::Offset(*o))
                .unwrap();
        }
        producer
            .send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap(), TIMEOUT)
            .unwrap();
        producer.commit_transaction(TIMEOUT).unwrap();
        n_committed += round.len();
        println!("committed {n_committed}");
    }
    assert!(
        positions.iter().all(|(p, o)| *o >= ends[p]),
        "ran out of time at {positions:?} of {ends:?}"
    );
    println!("done");
}

/// A transactional consume-transform-produce loop over 100,000 records whose process is
/// killed with `kill -9` three times mid-stream: `eos-out` read with `read_committed` holds
/// each input exactly once, while `read_uncommitted` also shows what killed transactions wrote.
#[test]
fn rdkafka_exactly_once_across_kill_9_of_the_transformer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    create_topic(&broker, "eos-in", 2);
    create_topic(&broker, "eos-out", 2);
    let lines: String = (0..EOS_RECORDS).map(|i| format!("{i}\n")).collect();
    let produced = run_cli(
        &strand_cli(),
        &broker.addr,
        &["produce", "eos-in"],
        lines.as_bytes(),
    );
    assert!(produced.status.success());

    let transformer = |pause_at: Option<usize>| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "transactions::eos_transformer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STRAND_EOS_BOOTSTRAP", &broker.kafka_addr)
            .env(
                "STRAND_EOS_PAUSE_AT",
                pause_at.map_or(String::new(), |n| n.to_string()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "sent" {
                    let _ = tx.send(());
                }
            }
        });
        (child, rx)
    };
    // Each run is killed in the middle of a transaction whose records are in the log, once it
    // has committed some thousands of records of its own.
    for round in 0..3 {
        let (mut child, sent) = transformer(Some(5_000 + round * 3_000));
        let held = sent.recv_timeout(Duration::from_secs(60));
        assert!(held.is_ok(), "run {round} never reached its kill point");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (mut child, _) = transformer(None);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the last transformer never finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the last transformer failed: {status}");

    let committed = read_values(&broker.kafka_addr, "eos-out", 2, "read_committed", |g| {
        count(g) >= EOS_RECORDS
    });
    let values = all(&committed);
    let distinct: BTreeSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), EOS_RECORDS, "every input is in the output");
    assert_eq!(values.len(), EOS_RECORDS, "no input is in the output twice");
    assert!((0..EOS_RECORDS).all(|i| distinct.contains(&format!("t:{i}"))));
    let uncommitted = read_values(&broker.kafka_addr, "eos-out", 2, "read_uncommitted", |g| {
        count(g) >= EOS_RECORDS
    });
    assert!(
        count(&uncommitted) > EOS_RECORDS,
        "the killed transactions' records are in the log"
    );
    eprintln!(
        "read_committed {} records, read_uncommitted {} (the difference: aborted by the kills)",
        values.len(),
        count(&uncommitted)
    );
    stop(broker);
}

/// `strand-broker` with `STRAND_TXN_CRASH` set: it aborts itself at that point of a commit.
fn start_broker_crashing_at(data_dir: &std::path::Path, point: &str) -> BrokerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strand-broker"));
    command.env("STRAND_TXN_CRASH", point).args([
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--kafka-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let (child, line) = spawn_until(&mut command, "strand-broker listening");
    let field = |name: &str| {
        let tail = line.split(&format!("{name}=")).nth(1).unwrap();
        tail.split(' ').next().unwrap().to_string()
    };
    BrokerProcess {
        addr: field("native"),
        kafka_addr: field("kafka"),
        http_addr: field("http"),
        child,
    }
}

/// Sends `n` records named `name-i` to both partitions in one transaction and asks to commit;
/// returns what the commit answered.
fn commit_attempt(bootstrap: &str, name: &str, n: usize) -> Result<(), KafkaError> {
    let producer = transactional_producer(bootstrap, "crashing");
    producer.init_transactions(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..n {
        send(
            &producer,
            "crash-out",
            Some((i % 2) as i32),
            name,
            &format!("{name}-{i}"),
        );
    }
    producer.flush(TIMEOUT).unwrap();
    producer.commit_transaction(Duration::from_secs(10))
}

/// The broker is killed (it aborts itself) after PrepareCommit is durable and before any
/// marker is written: after a restart the transaction is wholly visible. Killed before
/// PrepareCommit is recorded: the transaction is wholly invisible (the next producer with the
/// id aborts it), and records after it are read past it.
#[test]
fn a_broker_killed_between_the_phases_of_a_commit_keeps_the_transaction_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker_crashing_at(dir.path(), "after-prepare-commit");
    create_topic(&broker, "crash-out", 2);
    assert!(commit_attempt(&broker.kafka_addr, "prepared", 200).is_err());
    let status = broker.child.wait().unwrap();
    assert!(!status.success(), "the broker aborted itself: {status}");
    drop(broker);

    let mut broker = start_broker_crashing_at(dir.path(), "before-prepare-commit");
    let got = read_values(&broker.kafka_addr, "crash-out", 2, "read_committed", |g| {
        count(g) >= 200
    });
    let expected: BTreeSet<String> = (0..200).map(|i| format!("prepared-{i}")).collect();
    assert_eq!(all(&got).len(), 200);
    assert_eq!(all(&got).into_iter().collect::<BTreeSet<_>>(), expected);

    assert!(commit_attempt(&broker.kafka_addr, "unprepared", 100).is_err());
    let status = broker.child.wait().unwrap();
    assert!(!status.success(), "the broker aborted itself: {status}");
    drop(broker);

    let broker = start_broker(dir.path());
    let successor = transactional_producer(&broker.kafka_addr, "crashing");
    successor.init_transactions(TIMEOUT).unwrap();
    successor.begin_transaction().unwrap();
    for p in 0..2 {
        send(
            &successor,
            "crash-out",
            Some(p),
            "tail",
            &format!("tail-{p}"),
        );
    }
    successor.commit_transaction(TIMEOUT).unwrap();
    let got = read_values(&broker.kafka_addr, "crash-out", 2, "read_committed", |g| {
        g.values()
            .all(|v| v.last().is_some_and(|l| l.starts_with("tail")))
            && g.len() == 2
    });
    let values = all(&got);
    assert!(
        values.iter().all(|v| !v.starts_with("unprepared")),
        "{values:?}"
    );
    assert_eq!(values.len(), 202, "{values:?}");
    let uncommitted = read_values(
        &broker.kafka_addr,
        "crash-out",
        2,
        "read_uncommitted",
        |g| count(g) >= 302,
    );
    assert_eq!(
        all(&uncommitted)
            .iter()
            .filter(|v| v.starts_with("unprepared"))
            .count(),
        100,
        "the aborted records are in the log"
    );
    stop(broker);
}

/// Runs a transactions peer script (`tests/peers/`) with `program` against a fresh broker, on a
/// topic of one partition; it prints "committed True" and "uncommitted True" when each
/// isolation level saw exactly what it should.
fn peer_transactions(program: &str, check: &[&str], what: &str, script: &str) {
    let has_client = Command::new(program)
        .args(check)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_client,
        "{what} is missing for {program}: bash .ci/run installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    create_topic(&broker, "peer-txn", 1);
    let script = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .args(["180", program, &script, &broker.kafka_addr, "peer-txn"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["committed True", "uncommitted True"],
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(broker);
}

/// confluent-kafka (Python, PyPI): one transaction committed, one aborted, one committed.
#[test]
fn confluent_kafka_python_commits_and_aborts() {
    peer_transactions(
        "/usr/bin/python3",
        &["-c", "import confluent_kafka"],
        "confluent-kafka from PyPI",
        "confluent_transactions.py",
    );
}

/// kafkajs (npm): the same with its transaction API.
#[test]
fn kafkajs_commits_and_aborts() {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    peer_transactions(
        "node",
        &["-e", &format!("require('{peers}/node_modules/kafkajs')")],
        "kafkajs from npm (npm ci in broker/tests/peers)",
        "kafkajs_transactions.js",
    );
}
