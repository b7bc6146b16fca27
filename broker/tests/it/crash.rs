//! SIGKILL a process appending with `FsyncPolicy::Always` at random moments; every batch it
//! acknowledged (printed after its durable wait returned) must be intact and in order.
//!
//! The child is this same test binary, re-run with `--ignored --exact crash::child_appender`
//! and the log folder in `STRAND_CRASH_DIR`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strand_broker::log::{FsyncPolicy, Log, LogConfig};

use super::support::{batch, read_all};

const DIR_VAR: &str = "STRAND_CRASH_DIR";
const ROUNDS: usize = 6;

fn config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Values of batch `n`: its record count and content follow from `n` alone, so the parent can
/// check every byte without being told what was written.
fn batch_values(n: u64) -> Vec<Vec<u8>> {
    let count = 1 + (n % 7) as usize;
    (0..count)
        .map(|j| {
            format!(
                "batch-{n}-record-{j}-{}",
                "v".repeat((n % 13) as usize * 20)
            )
            .into_bytes()
        })
        .collect()
}

#[test]
#[ignore = "run by crash::kill_9_keeps_every_acknowledged_batch as its child process"]
fn child_appender() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (mut log, _) = Log::open(&dir, config()).unwrap();
        let reader = log.reader();
        // Continue numbering after what the previous rounds left.
        let mut n = read_all(&reader, 0)
            .last()
            .map_or(0, |(_, v)| batch_number(v) + 1);
        loop {
            let mut bytes = batch(&batch_values(n), n as i64);
            let info = log.append(&mut bytes).unwrap();
            reader.wait_durable(info.last_offset + 1).await.unwrap();
            println!("ACK {n} {} {}", info.base_offset, info.last_offset);
            n += 1;
        }
    });
}

fn batch_number(value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).unwrap();
    text.split('-').nth(1).unwrap().parse().unwrap()
}

#[test]
fn kill_9_keeps_every_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked_total = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash::child_appender",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let acked: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let collector = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Some(rest) = line.strip_prefix("ACK ") else {
                        continue;
                    };
                    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                    acked.lock().unwrap().push((f[0], f[1], f[2]));
                }
            })
        };
        // Wait for the child to get going, then kill it at a random moment.
        let started = std::time::Instant::now();
        while acked.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child never acknowledged a batch"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(10..300)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        collector.join().unwrap();

        let acked = acked.lock().unwrap().clone();
        let (log, report) = Log::open(dir.path(), config()).unwrap();
        let records = read_all(&log.reader(), 0);
        // Every stored record is where its batch number says, in order, with its content.
        let mut expected_offset = 0i64;
        let mut n = 0u64;
        let mut by_batch = Vec::new();
        while (expected_offset as usize) < records.len() {
            let values = batch_values(n);
            let got: Vec<Vec<u8>> = records[expected_offset as usize..]
                .iter()
                .take(values.len())
                .map(|(_, v)| v.clone())
                .collect();
            assert_eq!(got, values, "round {round}: batch {n} differs");
            by_batch.push((n, expected_offset as u64));
            expected_offset += values.len() as i64;
            n += 1;
        }
        for (offset, (o, _)) in records.iter().enumerate() {
            assert_eq!(*o, offset as i64);
        }
        // Every acknowledged batch is there, at the offsets the child was told.
        for &(batch_n, base, last) in &acked {
            let stored = by_batch.get(batch_n as usize).unwrap_or_else(|| {
                panic!("round {round}: acknowledged batch {batch_n} lost ({report:?})")
            });
            assert_eq!(stored.1, base);
            assert_eq!(base + batch_values(batch_n).len() as u64 - 1, last);
        }
        acked_total += acked.len();
        drop(log);
    }
    assert!(
        acked_total >= ROUNDS,
        "too few acknowledgements to mean anything: {acked_total}"
    );
}
