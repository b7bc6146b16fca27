//! The real `strand-broker` binary as a child process: `kill -9` while producing with
//! acks=durable loses no acknowledged record; SIGTERM shuts down cleanly with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strand_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    TopicSettings,
};

pub(crate) struct BrokerProcess {
    pub child: Child,
    pub addr: String,
    pub kafka_addr: String,
    pub http_addr: String,
}

impl Drop for BrokerProcess {
    /// A failing test must not leave a broker running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_broker(data_dir: &std::path::Path) -> BrokerProcess {
    start_broker_with(data_dir, &[])
}

/// `strand-broker` on `data_dir`, every listener on a port the kernel picks, with `extra` flags.
pub(crate) fn start_broker_with(data_dir: &std::path::Path, extra: &[&str]) -> BrokerProcess {
    start_broker_under(&[], data_dir, extra)
}

/// Like [`start_broker_with`], run through `wrapper` (such as `prlimit --nofile=N --`).
pub(crate) fn start_broker_under(
    wrapper: &[&str],
    data_dir: &std::path::Path,
    extra: &[&str],
) -> BrokerProcess {
    let binary = env!("CARGO_BIN_EXE_strand-broker");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.args(extra);
    command.args([
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

/// Starts `command` with its log on a pipe and waits (at most a minute) for a line containing
/// `marker`, which it returns; later warnings and errors are passed on to the test's output.
pub(crate) fn spawn_until(command: &mut Command, marker: &str) -> (Child, String) {
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                eprintln!("child: {line}");
            }
            if line.contains(&marker) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child never logged its start line");
    (child, line)
}

pub(crate) async fn client(addr: &str) -> Client {
    Client::connect(addr.to_string(), ClientConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_durably_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    c.admin()
        .create_topic(
            "t",
            TopicSettings {
                partitions: 3,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let producing = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let config = ProducerConfig {
                acks: Acks::Durable,
                retries: 0,
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            };
            let producer = Producer::new(c, config);
            let mut n = 0u64;
            loop {
                let mut deliveries = Vec::new();
                for _ in 0..200 {
                    let value = format!("record-{n}");
                    n += 1;
                    let Ok(d) = producer
                        .send(ProducerRecord::new("t", value.clone()).key(value.clone()))
                        .await
                    else {
                        return;
                    };
                    deliveries.push((value, d));
                }
                for (value, d) in deliveries {
                    if d.await.is_ok() {
                        acked.lock().unwrap().push(value);
                    }
                }
            }
        })
    };
    // Let some records be acknowledged, then kill the broker mid-stream.
    let started = std::time::Instant::now();
    while acked.lock().unwrap().len() < 2000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow to acknowledge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..200))).await;
    broker.child.kill().unwrap(); // SIGKILL
    broker.child.wait().unwrap();
    let acked = acked.lock().unwrap().clone();
    producing.abort();

    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    let total: u64 = c
        .admin()
        .describe_topic("t")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .sum();
    assert!(
        total >= acked.len() as u64,
        "{total} records stored, {} acknowledged",
        acked.len()
    );
    let mut consumer = Consumer::new(c, "t", None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut stored = std::collections::HashSet::new();
    for _ in 0..total {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap()
            .unwrap();
        stored.insert(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|v| !stored.contains(*v))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged records lost: {lost:?} (of {})",
        acked.len()
    );
    stop(broker);
}

pub(crate) fn stop(mut broker: BrokerProcess) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    broker.child.wait().unwrap()
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let c = client(&broker.addr).await;
    c.admin()
        .create_topic(
            "t",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    let status = stop(broker);
    assert!(status.success(), "exit status {status:?}");
    assert!(
        dir.path().join("topics/t/0/clean-shutdown").exists(),
        "no clean-shutdown marker"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_strand-broker"))
        .args(["--fsync", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "usage errors exit with 2");
}

/// The `strand` CLI binary next to `strand-broker`: a workspace test run builds it because the
/// client crate's integration tests need it. (Building it from here would wait forever on the
/// build-folder lock the test run holds.)
pub(crate) fn strand_cli() -> std::path::PathBuf {
    let broker = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strand-broker"));
    let cli = broker.with_file_name("strand");
    assert!(
        cli.exists(),
        "{} is missing: run the tests with --workspace, which builds every binary",
        cli.display()
    );
    cli
}

/// Runs the CLI against the broker at `addr` with `input` on its standard input. coreutils'
/// timeout bounds every run, so a hang fails the test instead of CI.
pub(crate) fn run_cli(
    cli: &std::path::Path,
    addr: &str,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    run_cli_with(cli, &["--broker", addr], args, input)
}

/// Like [`run_cli`], with `connection` (the broker address and any TLS or SASL flags) before
/// the command.
pub(crate) fn run_cli_with(
    cli: &std::path::Path,
    connection: &[&str],
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    let mut child = Command::new("timeout")
        .arg("120")
        .arg(cli)
        .args(connection)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn cli_pipeline_round_trips_100k_lines() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let cli = strand_cli();
    let run = |args: &[&str], input: Option<&[u8]>| {
        run_cli(&cli, &broker.addr, args, input.unwrap_or_default())
    };
    assert!(run(&["topic", "create", "t", "--partitions", "3"], None)
        .status
        .success());
    let lines: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let produced = run(&["produce", "t"], Some(lines.as_bytes()));
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = run(
        &["consume", "t", "--from", "earliest", "--count", "100000"],
        None,
    );
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let mut got: Vec<u64> = String::from_utf8(consumed.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=100_000).collect::<Vec<u64>>());
    // Without --count it stops at the end of the log as it was when it started.
    let all = run(&["consume", "t"], None);
    assert_eq!(
        String::from_utf8(all.stdout).unwrap().lines().count(),
        100_000
    );
    // Keys split at the separator land where Kafka's partitioner puts them.
    let keyed = run(
        &["produce", "t", "--key-separator", ":"],
        Some(b"alpha:1\nbeta:2\n"),
    );
    assert!(keyed.status.success());
    let json = run(
        &["consume", "t", "--from", "earliest", "--format", "json"],
        None,
    );
    let text = String::from_utf8(json.stdout).unwrap();
    let alpha = text
        .lines()
        .find(|l| l.contains("\"alpha\""))
        .expect("keyed record consumed");
    let expected = strand_client::partitioner::partition_for_key(b"alpha", 3);
    assert!(
        alpha.contains(&format!("\"partition\":{expected}")),
        "{alpha}"
    );
    // Errors: one line on stderr, exit 1; usage errors exit 2.
    let missing = run(&["consume", "nope"], None);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert_eq!(run(&["topic", "frobnicate"], None).status.code(), Some(2));
    stop(broker);
}

#[test]
fn cli_group_members_share_a_topic_and_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let cli = strand_cli();
    let run = |args: &[&str], input: &[u8]| {
        let out = run_cli(&cli, &broker.addr, args, input);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["topic", "create", "orders", "--partitions", "6"], b"");
    let first: String = (0..3000).map(|i| format!("a{i}\n")).collect();
    run(&["produce", "orders"], first.as_bytes());

    // Three members, each printing what it gets.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    // Killed on drop, so a failing assertion leaves no consumer running.
    let mut members = Members(Vec::new());
    for _ in 0..3 {
        let mut child = Command::new(&cli)
            .args([
                "--broker",
                &broker.addr,
                "consume",
                "orders",
                "--group",
                "g",
                "--follow",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        members.0.push(child);
    }
    let wait_for = |n: usize| {
        let started = std::time::Instant::now();
        loop {
            let distinct: std::collections::HashSet<String> =
                seen.lock().unwrap().iter().cloned().collect();
            if distinct.len() >= n {
                return distinct;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "only {} of {n} records consumed",
                distinct.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(3000);
    // kill -9 one member; records produced afterwards still all arrive (its partitions move to
    // the others after its session timeout).
    members.0[0].kill().unwrap();
    members.0[0].wait().unwrap();
    let second: String = (0..3000).map(|i| format!("b{i}\n")).collect();
    run(&["produce", "orders"], second.as_bytes());
    let distinct = wait_for(6000);
    assert_eq!(distinct.len(), 6000);
    assert!(run(&["group", "list"], b"").lines().any(|l| l == "g"));
    // The dead member leaves the group by its session timeout (it may first be handed
    // partitions by a rebalance it had joined just before it died): the group settles with two.
    let started = std::time::Instant::now();
    loop {
        let described = run(&["group", "describe", "g"], b"");
        let members = described
            .lines()
            .filter(|l| l.starts_with("member "))
            .count();
        if described.contains("state stable") && members == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "group never settled:\n{described}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(members);
    stop(broker);
}

/// kcat (librdkafka 2.0.2 in Debian) against the Kafka listener, crossed with the native CLI.
#[test]
fn kcat_reads_metadata_produces_and_consumes_across_protocols() {
    let kcat_present = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        kcat_present,
        "kcat is missing: install Debian's kcat (bash .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let cli = strand_cli();
    let kcat = |args: &[&str], input: &[u8]| {
        let mut child = Command::new("timeout")
            .args(["60", "kcat", "-b", &broker.kafka_addr])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kcat {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let strand = |args: &[&str], input: &[u8]| {
        let out = run_cli(&cli, &broker.addr, args, input);
        assert!(
            out.status.success(),
            "strand {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    strand(&["topic", "create", "events", "--partitions", "3"], b"");
    let metadata = kcat(&["-L"], b"");
    assert!(
        metadata.contains("topic \"events\" with 3 partitions"),
        "{metadata}"
    );
    // kcat produces, both kcat and strand consume it all.
    let lines: String = (0..1000)
        .map(|i| format!("k{i}:from-kafka-{i}\n"))
        .collect();
    kcat(&["-P", "-t", "events", "-K", ":"], lines.as_bytes());
    let consumed = kcat(&["-C", "-t", "events", "-o", "beginning", "-e", "-q"], b"");
    assert_eq!(consumed.lines().count(), 1000);
    let mut by_strand: Vec<String> = strand(&["consume", "events", "--format", "json"], b"")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(by_strand.len(), 1000);
    // Every record kept its key and value across the protocols.
    by_strand.sort();
    assert!(by_strand
        .iter()
        .all(|l| l.contains("\"key\":\"k") && l.contains("from-kafka-")));
    // strand produces, kcat consumes.
    strand(&["produce", "events"], b"from-strand-1\nfrom-strand-2\n");
    let consumed = kcat(&["-C", "-t", "events", "-o", "beginning", "-e", "-q"], b"");
    assert_eq!(
        consumed
            .lines()
            .filter(|l| l.starts_with("from-strand-"))
            .count(),
        2
    );
    assert_eq!(consumed.lines().count(), 1002);
    // Compressed batches from librdkafka are stored and served as sent, for every codec.
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("compressed-{codec}");
        strand(&["topic", "create", &topic, "--partitions", "1"], b"");
        let lines: String = (0..500)
            .map(|i| format!("{codec}-record-{i}-{}\n", "z".repeat(100)))
            .collect();
        kcat(&["-P", "-t", &topic, "-z", codec], lines.as_bytes());
        let back = kcat(&["-C", "-t", &topic, "-o", "beginning", "-e", "-q"], b"");
        assert_eq!(back, lines, "{codec} batches did not come back intact");
        // They really were compressed: the stored log is smaller than the text.
        let stored: u64 = std::fs::read_dir(dir.path().join("topics").join(&topic).join("0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            stored < lines.len() as u64 / 2,
            "{codec}: {stored} bytes stored for {} of text",
            lines.len()
        );
    }
    // An unknown topic is the protocol's error, not a hang.
    let out = Command::new("timeout")
        .args([
            "30",
            "kcat",
            "-b",
            &broker.kafka_addr,
            "-C",
            "-t",
            "nope",
            "-e",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    stop(broker);
}

/// kafka-python, a client nobody here wrote, produces JSON order events with acks=all and reads
/// them back in group `order-processor`, committing; `strand consume` sees the same records.
#[test]
fn kafka_python_produces_and_consumes_order_events() {
    peer_order_events(
        PYTHON,
        &["-c", "import kafka"],
        "Debian's python3-kafka",
        "kafka_python_roundtrip.py",
    );
}

/// aiokafka (PyPI) runs its README's producer and group consumer pattern unchanged.
#[test]
fn aiokafka_produces_and_consumes_order_events() {
    peer_order_events(
        PYTHON,
        &["-c", "import aiokafka"],
        "aiokafka from PyPI",
        "aiokafka_order_events.py",
    );
}

/// kafkajs (npm) does the same: admin-free, idempotent producer, group consumer, commits.
#[test]
fn kafkajs_produces_and_consumes_order_events() {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    peer_order_events(
        "node",
        &["-e", &format!("require('{peers}/node_modules/kafkajs')")],
        "kafkajs from npm (npm ci in broker/tests/peers)",
        "kafkajs_order_events.js",
    );
}

/// Debian's interpreter, where python3-kafka lives and where `bash .ci/run` installs aiokafka
/// (pip --user).
const PYTHON: &str = "/usr/bin/python3";

/// Runs a peer script (`tests/peers/`) with `program` against a fresh broker: it produces 500
/// order events and 10 more, consumes them through group `order-processor` and prints
/// "500 True" when every order came back once and the group's commits held; then its admin
/// client creates a topic and lists it ("admin True").
fn peer_order_events(program: &str, check: &[&str], what: &str, script: &str) {
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
    let cli = strand_cli();
    let created = run_cli(
        &cli,
        &broker.addr,
        &["topic", "create", "order-events", "--partitions", "3"],
        b"",
    );
    assert!(created.status.success());
    let script = format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .args([
            "180",
            program,
            &script,
            &broker.kafka_addr,
            "order-events",
            "500",
        ])
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
        ["500 True", "admin True"],
        "{stdout}"
    );
    let consumed = run_cli(&cli, &broker.addr, &["consume", "order-events"], b"");
    let lines = String::from_utf8(consumed.stdout).unwrap();
    assert_eq!(lines.lines().count(), 510);
    assert!(
        lines
            .lines()
            .all(|l| l.contains("order_id") && l.contains("\"created\"")),
        "{lines}"
    );
    let described = run_cli(
        &cli,
        &broker.addr,
        &["group", "describe", "order-processor"],
        b"",
    );
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(described.contains("order-events"), "{described}");
    stop(broker);
}

/// Child processes killed when dropped.
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
