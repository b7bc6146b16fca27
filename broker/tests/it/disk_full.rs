//! A real full disk: the broker's data folder on a 32 MiB tmpfs that the test mounts (as root;
//! skipped with a message where it cannot). Producers get errors once it is full, the broker
//! stays up, nothing acknowledged is lost or corrupted, and writes resume by themselves once a
//! topic is deleted, without a restart; a restart then finds everything acknowledged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strand_client::{
    Acks, Client, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicSettings,
};

use super::broker_process::{client, start_broker_with, stop, BrokerProcess};

/// A size-limited tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "strand-test"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const RECORD_BYTES: usize = 4096;

fn value(n: u64) -> Vec<u8> {
    let mut v = format!("order-{n}-").into_bytes();
    v.resize(RECORD_BYTES, b'a' + (n % 26) as u8);
    v
}

/// Sends `count` records numbered from `first`, acks=durable without client retries; returns
/// the numbers acknowledged and the first error seen.
async fn produce(c: &Client, topic: &str, first: u64, count: u64) -> (Vec<u64>, Option<String>) {
    let producer = Producer::new(
        c.clone(),
        ProducerConfig {
            acks: Acks::Durable,
            retries: 0,
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for n in first..first + count {
        let record = ProducerRecord::new(topic, value(n)).key(n.to_string());
        match producer.send(record).await {
            Ok(d) => deliveries.push((n, d)),
            Err(e) => return (Vec::new(), Some(e.to_string())),
        }
    }
    let (mut acked, mut error) = (Vec::new(), None);
    for (n, d) in deliveries {
        match d.await {
            Ok(_) => acked.push(n),
            Err(e) => {
                error.get_or_insert(e.to_string());
            }
        }
    }
    (acked, error)
}

/// Reads the whole topic and checks that every acknowledged record is there, whole.
async fn check_acked(c: &Client, topic: &str, acked: &[u64]) {
    let total: u64 = c
        .admin()
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .sum();
    let mut consumer = Consumer::new(c.clone(), topic, None, ConsumerConfig::default())
        .await
        .unwrap();
    let mut stored: HashMap<u64, usize> = HashMap::new();
    for _ in 0..total {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("the stored records could not all be read")
            .unwrap();
        let key: u64 = std::str::from_utf8(&record.key.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            record.value.as_deref(),
            Some(&value(key)[..]),
            "record {key} is corrupted"
        );
        *stored.entry(key).or_default() += 1;
    }
    let lost: Vec<_> = acked.iter().filter(|n| !stored.contains_key(n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path(), "32m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // Small segments, so that rolls (new files and index reservations) happen while full.
    let extra = ["--segment-bytes-max", "1048576", "--fsync", "never"];
    let mut broker: BrokerProcess = start_broker_with(dir.path(), &extra);
    let c = client(&broker.addr).await;
    for topic in ["ballast", "orders"] {
        c.admin()
            .create_topic(
                topic,
                TopicSettings {
                    partitions: 1,
                    ..TopicSettings::default()
                },
            )
            .await
            .unwrap();
    }
    let (ballast, error) = produce(&c, "ballast", 0, 2_000).await;
    assert_eq!(ballast.len(), 2_000, "8 MiB of ballast: {error:?}");

    // Fill the disk: windows of 100 records until three windows in a row are refused.
    let (mut acked, mut next, mut refused_windows, mut first_error) = (Vec::new(), 0u64, 0, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused_windows < 3 {
        assert!(Instant::now() < deadline, "the disk never filled");
        assert!(next < 20_000, "80 MB acknowledged on a 32 MiB disk");
        let (ok, error) = produce(&c, "orders", next, 100).await;
        next += 100;
        if ok.is_empty() {
            refused_windows += 1;
        } else {
            refused_windows = 0;
        }
        acked.extend(ok);
        if let Some(e) = error {
            first_error.get_or_insert(e);
        }
    }
    let first_error = first_error.unwrap();
    eprintln!(
        "disk full after {} acknowledged records; first error: {first_error}",
        acked.len()
    );
    assert!(
        first_error.contains("space"),
        "the error says what is wrong: {first_error}"
    );
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker died on a full disk"
    );
    check_acked(&c, "orders", &acked).await;

    // Free space: writes resume by themselves, through a roll that failed while full.
    c.admin().delete_topic("ballast").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, error) = produce(&c, "orders", next, 100).await;
        next += 100;
        acked.extend(&ok);
        if ok.len() == 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume after space was freed: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_acked(&c, "orders", &acked).await;
    drop(c);
    assert!(stop(broker).success());

    // A restart on the same disk finds every acknowledged record.
    broker = start_broker_with(dir.path(), &extra);
    let c = client(&broker.addr).await;
    check_acked(&c, "orders", &acked).await;
    drop(c);
    assert!(stop(broker).success());
    drop(disk);
}
