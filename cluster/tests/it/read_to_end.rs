//! `Cluster::read_to_end` reads to the high watermark taken at its start: a pause in the
//! middle (a stalled connection, a broker that goes away and comes back) delays it instead of
//! cutting it short, a tail that compaction emptied ends it, and a cluster that never answers
//! fails it with a clear error after its limit.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strand_cluster::{Cluster, ClusterConfig, MirroredRecord, SideError, TopicKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::support::{start_broker, stop};

const RECORDS: usize = 3_000;

/// What the proxy does once `trigger_bytes` went from the broker to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Forwards nothing for `FAULT_FOR`, then goes on.
    Stall,
    /// Closes every connection and refuses new ones for `FAULT_FOR`, as a restarting broker.
    Cut,
}

/// Longer than the quiet spell the old `read_to_end` took for the end.
const FAULT_FOR: Duration = Duration::from_secs(3);

/// A TCP proxy in front of `upstream` that applies `fault` once, in the middle of the stream
/// from the broker. Returns its address and the count of faults applied.
async fn proxy(upstream: String, fault: Fault, trigger_bytes: usize) -> (String, Arc<AtomicU8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let faults = Arc::new(AtomicU8::new(0));
    // 0: not yet, 1: faulting, 2: done.
    let state = Arc::new(AtomicU8::new(0));
    let forwarded = Arc::new(AtomicUsize::new(0));
    let f = faults.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            if state.load(Ordering::SeqCst) == 1 && fault == Fault::Cut {
                drop(client); // refused while "restarting"
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let state = state.clone();
            let forwarded = forwarded.clone();
            let f = f.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let total = forwarded.fetch_add(n, Ordering::SeqCst) + n;
                    if total >= trigger_bytes
                        && state
                            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        f.fetch_add(1, Ordering::SeqCst);
                        let state = state.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(FAULT_FOR).await;
                            state.store(2, Ordering::SeqCst);
                        });
                        if fault == Fault::Cut {
                            return; // drops both halves towards the client
                        }
                    }
                    while state.load(Ordering::SeqCst) == 1 {
                        if fault == Fault::Cut {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, faults)
}

async fn fill(cluster: &Cluster, topic: &str) {
    cluster
        .ensure_topic(topic, 1, TopicKind::Kept)
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..RECORDS {
        let value = format!("{i:06}-{}", "x".repeat(1_000)).into_bytes();
        let record = MirroredRecord::new(Some(format!("k{i}").into_bytes()), value);
        acks.push(cluster.send(topic, Some(0), record).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn check_all(records: &[MirroredRecord]) {
    assert_eq!(
        records.len(),
        RECORDS,
        "every record up to the high watermark"
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert!(r
            .value
            .as_ref()
            .unwrap()
            .starts_with(format!("{i:06}-").as_bytes()));
    }
}

async fn read_through_fault(fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let direct = Cluster::connect(
        "direct",
        &ClusterConfig::Strand {
            address: broker.addr.clone(),
            security: Default::default(),
        },
    )
    .await
    .unwrap();
    fill(&direct, "journal").await;
    // About a third of the topic passes before the fault.
    let (addr, faults) = proxy(broker.addr.clone(), fault, 1_000_000).await;
    let proxied = Cluster::connect(
        "proxied",
        &ClusterConfig::Strand {
            address: addr,
            security: Default::default(),
        },
    )
    .await
    .unwrap();
    let records = proxied
        .read_to_end_within("journal", &[(0, 0)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        faults.load(Ordering::SeqCst),
        1,
        "the fault happened mid-read"
    );
    check_all(&records);
    stop(broker).await;
}

#[tokio::test]
async fn a_read_that_stalls_longer_than_two_seconds_still_returns_everything() {
    read_through_fault(Fault::Stall).await;
}

#[tokio::test]
async fn a_read_across_a_broker_that_goes_away_and_comes_back_returns_everything() {
    read_through_fault(Fault::Cut).await;
}

#[tokio::test]
async fn a_cluster_that_never_answers_fails_the_read_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let direct = Cluster::connect(
        "direct",
        &ClusterConfig::Strand {
            address: broker.addr.clone(),
            security: Default::default(),
        },
    )
    .await
    .unwrap();
    fill(&direct, "journal").await;
    // The proxy stalls for FAULT_FOR, longer than the limit the read is given.
    let (addr, _) = proxy(broker.addr.clone(), Fault::Stall, 1_000_000).await;
    let proxied = Cluster::connect(
        "proxied",
        &ClusterConfig::Strand {
            address: addr,
            security: Default::default(),
        },
    )
    .await
    .unwrap();
    let error = proxied
        .read_to_end_within("journal", &[(0, 0)], Duration::from_secs(1))
        .await
        .unwrap_err();
    match &error {
        SideError::ReadIncomplete { ends, reached, .. } => {
            assert_eq!(ends.get(&0), Some(&(RECORDS as u64)));
            assert!(reached.get(&0).copied().unwrap_or(0) < RECORDS as u64);
        }
        other => panic!("expected ReadIncomplete, got {other}"),
    }
    assert!(
        error.to_string().contains("did not finish within"),
        "{error}"
    );
    stop(broker).await;
}

/// A compacted topic whose last records (tombstones past their retention, and the values they
/// deleted) were cleaned away: the high watermark stays past the last record left. (Neither
/// Strand nor Kafka cleans the active segment, so this needs the explicit roll below; through
/// librdkafka such a tail is not passed, as no fetch returns anything there, and the read fails
/// after its limit instead.)
#[tokio::test]
async fn a_read_ends_at_a_tail_that_compaction_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let strand = Cluster::connect(
        "strand",
        &ClusterConfig::Strand {
            address: broker.addr.clone(),
            security: Default::default(),
        },
    )
    .await
    .unwrap();
    strand
        .ensure_topic("snapshots", 1, TopicKind::Compacted)
        .await
        .unwrap();
    // k0..k9 at offsets 0-9, then tombstones for k5..k9 at 10-14: one batch each.
    for i in 0..15 {
        let key = format!("k{}", if i < 10 { i } else { i - 5 }).into_bytes();
        let mut record = MirroredRecord::new(Some(key), format!("v{i}").into_bytes());
        if i >= 10 {
            record.value = None;
        }
        strand
            .send("snapshots", Some(0), record)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let topic = broker.running.broker.topics.get("snapshots").unwrap();
    topic.partitions[0].writer().roll().unwrap();
    let far_future = strand_broker::log::now_ms() + 30 * 24 * 3600 * 1000;
    let report = broker
        .running
        .broker
        .topics
        .clean_compacted(far_future)
        .unwrap();
    assert!(report.tombstones_removed > 0, "{report:?}");
    let marks = strand.watermarks("snapshots").await.unwrap();
    assert_eq!(
        marks[0].1, 15,
        "the high watermark stays after the cleaning"
    );

    let records = strand
        .read_to_end_within("snapshots", &[(0, 0)], Duration::from_secs(20))
        .await
        .unwrap();
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    stop(broker).await;
}

/// Through librdkafka (here against the broker's Kafka listener) the end is the fetcher's
/// end-of-partition event, which comes once it reaches the broker's high watermark.
#[tokio::test]
async fn a_read_through_librdkafka_returns_everything_up_to_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let kafka = Cluster::connect(
        "kafka",
        &ClusterConfig::Kafka {
            bootstrap: broker.kafka_addr.clone(),
            properties: Default::default(),
        },
    )
    .await
    .unwrap();
    fill(&kafka, "journal").await;
    let records = kafka
        .read_to_end_within("journal", &[(0, 0)], Duration::from_secs(60))
        .await
        .unwrap();
    check_all(&records);
    // From the middle on, and from the end (nothing to read).
    let records = kafka
        .read_to_end_within("journal", &[(0, 2_000)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(records.len(), RECORDS - 2_000);
    assert_eq!(records[0].offset, 2_000);
    let records = kafka
        .read_to_end_within("journal", &[(0, RECORDS as u64)], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(records.is_empty());
    stop(broker).await;
}
