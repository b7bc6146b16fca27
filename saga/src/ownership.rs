//! Which instance drives which journal partitions.
//!
//! On a Strand broker (native protocol) one instance owns every partition. On a Kafka cluster
//! several instances share them through a consumer group on the journal topic: librdkafka's
//! rebalance callbacks become [`Ownership`] messages, and a revocation waits until the
//! orchestrator has made everything of those partitions durable and let go of their sagas, so
//! the next owner starts from a complete journal. A dead instance's partitions move when its
//! session times out.
//!
//! Each owner publishes its partitions and API address on `__saga_instances`; every instance
//! follows that topic in [`Routes`], so a request for a saga of another instance's partition is
//! forwarded there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use serde::{Deserialize, Serialize};
use strand_cluster::{Cluster, MirroredRecord};
use tokio::sync::{mpsc, watch};

use crate::journal::{INSTANCES_TOPIC, JOURNAL_TOPIC};

/// How long a revocation waits for the orchestrator to let go of its partitions: less than
/// librdkafka's `max.poll.interval.ms` (5 minutes), past which the group would move them anyway.
/// An orchestrator whose journal stalls that long stops (the journal failed) and lets go then.
const REVOKE_WAIT: Duration = Duration::from_secs(240);

/// A change of the partitions this instance drives.
#[derive(Debug)]
pub enum Ownership {
    Assigned(Vec<u32>),
    /// Answer on the sender once the partitions' state is durable and their sagas dropped.
    Revoked(Vec<u32>, std::sync::mpsc::SyncSender<()>),
}

/// One owner of every partition (a single instance on a Strand broker).
pub fn all(partitions: u32) -> mpsc::UnboundedReceiver<Ownership> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Ownership::Assigned((0..partitions).collect()));
    // The sender goes: nothing else ever changes.
    rx
}

struct Rebalancing {
    tx: mpsc::UnboundedSender<Ownership>,
}

impl ClientContext for Rebalancing {}

fn journal_partitions(tpl: &TopicPartitionList) -> Vec<u32> {
    tpl.elements_for_topic(JOURNAL_TOPIC)
        .iter()
        .map(|e| e.partition() as u32)
        .collect()
}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = journal_partitions(tpl);
                if partitions.is_empty() {
                    return;
                }
                let (ack, done) = std::sync::mpsc::sync_channel(1);
                if self.tx.send(Ownership::Revoked(partitions, ack)).is_ok() {
                    // Blocking the group thread is the point: the partitions are not given to
                    // another instance before this one let go of them.
                    match done.recv_timeout(REVOKE_WAIT) {
                        Ok(()) => {}
                        // The orchestrator stopped: what it had is checkpointed or in the
                        // journal, and it drives nothing any more.
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                            "the orchestrator did not release its partitions in time"
                        ),
                    }
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "journal group rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Membership only: the journal is read where it is needed, not through this group.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "pausing the journal group's partitions failed");
            }
            let partitions = journal_partitions(tpl);
            tracing::info!(?partitions, "journal partitions assigned");
            let _ = self.tx.send(Ownership::Assigned(partitions));
        }
    }
}

/// Joins `group` on the journal topic of a Kafka cluster; ownership changes arrive on the
/// receiver until shutdown, when the instance leaves the group (the thread ends once it has).
pub fn kafka(
    config: &ClientConfig,
    group: &str,
    instance: &str,
    session_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<
    (
        mpsc::UnboundedReceiver<Ownership>,
        std::thread::JoinHandle<()>,
    ),
    rdkafka::error::KafkaError,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut c = config.clone();
    c.set("group.id", group)
        .set("client.id", format!("strand-saga-{instance}"))
        .set("enable.auto.commit", "false")
        // Incremental rebalancing: a joining or leaving instance moves only the partitions
        // that change hands; the others keep driving theirs without a pause.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 3).max(100).to_string(),
        );
    let consumer: BaseConsumer<Rebalancing> = c.create_with_context(Rebalancing { tx })?;
    consumer.subscribe(&[JOURNAL_TOPIC])?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = stop.clone();
    tokio::spawn(async move {
        crate::stopped(&mut shutdown).await;
        stop.store(true, Ordering::Relaxed);
    });
    let thread = std::thread::Builder::new()
        .name("saga-journal-group".into())
        .spawn(move || {
            while !stop_thread.load(Ordering::Relaxed) {
                // Drives heartbeats and rebalance callbacks; partitions are paused, so no
                // records arrive.
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                    tracing::warn!(error = %e, "journal group");
                }
            }
            // Leaving now lets the others take the partitions at once, not after a timeout.
            consumer.unsubscribe();
            drop(consumer);
        })
        .expect("a thread starts");
    Ok((rx, thread))
}

/// What an instance publishes about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announcement {
    api: String,
    partitions: Vec<u32>,
}

/// The owner of each journal partition, as the instances announced.
#[derive(Debug, Default)]
pub struct Routes {
    owners: RwLock<BTreeMap<u32, (String, String)>>,
}

impl Routes {
    /// The API address of the instance that announced `partition` last, with its id.
    pub fn owner(&self, partition: u32) -> Option<(String, String)> {
        self.owners
            .read()
            .expect("routes lock")
            .get(&partition)
            .cloned()
    }

    fn apply(&self, instance: &str, announcement: &Announcement) {
        let mut owners = self.owners.write().expect("routes lock");
        owners.retain(|p, (owner, _)| owner != instance || announcement.partitions.contains(p));
        for p in &announcement.partitions {
            owners.insert(*p, (instance.to_string(), announcement.api.clone()));
        }
    }

    /// Follows `__saga_instances` from its start until shutdown.
    pub async fn follow(self: Arc<Self>, cluster: Arc<Cluster>, shutdown: watch::Receiver<bool>) {
        crate::journal::follow(&cluster, INSTANCES_TOPIC, 0, shutdown, |r| {
            if let (Some(key), Some(value)) = (&r.key, &r.value) {
                match serde_json::from_slice::<Announcement>(value) {
                    Ok(a) => self.apply(&String::from_utf8_lossy(key), &a),
                    Err(e) => tracing::warn!(offset = r.offset, error = %e, "bad instance record"),
                }
            }
            std::future::ready(true)
        })
        .await
    }
}

/// Announces that `instance` (API at `api`) owns `partitions` now.
pub async fn announce(cluster: &Cluster, instance: &str, api: &str, partitions: Vec<u32>) {
    let value = serde_json::to_vec(&Announcement {
        api: api.to_string(),
        partitions,
    })
    .expect("announcements serialize");
    let record = MirroredRecord::new(Some(instance.as_bytes().to_vec()), value);
    let sent = match cluster.send(INSTANCES_TOPIC, Some(0), record).await {
        Ok(sent) => sent.await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "announcing this instance's partitions failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_announcement_of_a_partition_wins() {
        let routes = Routes::default();
        let a = |api: &str, partitions: Vec<u32>| Announcement {
            api: api.into(),
            partitions,
        };
        routes.apply("a", &a("http://a", vec![0, 1, 2]));
        routes.apply("b", &a("http://b", vec![2, 3]));
        assert_eq!(routes.owner(1).unwrap().0, "a");
        assert_eq!(routes.owner(2).unwrap().0, "b");
        // a lets go of 1: it has no owner until someone announces it.
        routes.apply("a", &a("http://a", vec![0]));
        assert!(routes.owner(1).is_none());
        assert_eq!(routes.owner(2).unwrap().1, "http://b");
        // a's late announcement of fewer partitions does not take 2 from b.
        routes.apply("a", &a("http://a", vec![]));
        assert_eq!(routes.owner(2).unwrap().0, "b");
    }
}
