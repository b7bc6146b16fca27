//! The bridge: mirrors topics between a Strand broker and a Kafka-protocol cluster (or two of
//! either), which is how Strand reaches past one machine without replication of its own.
//!
//! Each route copies one topic one way (a `both` route is two). Records keep key, value,
//! headers and timestamp, and their partition when both topics have as many; otherwise the
//! key decides with Kafka's murmur2. Every copy carries provenance headers (source cluster,
//! topic, partition, offset), and a record that already has them is never copied again, so a
//! two-way route does not loop.
//!
//! Delivery is at least once without gaps: the source position of a route is checkpointed on
//! the destination cluster (compacted topic `strand-bridge-checkpoints`) only after the
//! destination acknowledged, durably, every record before it; a restarted bridge resumes there,
//! so duplicates after a crash are bounded by the checkpoint interval and recognisable by their
//! provenance. The Kafka side uses `rdkafka` (idempotent producer, acks=all), the Strand side
//! `strand-client` (acks=durable). In-flight records are bounded (backpressure).
//!
//! - `config`: the TOML file. Reading and writing either kind of cluster is `crate::cluster`.

pub mod config;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::{self as side, Cluster, MirroredRecord, SideError, TopicKind};
use config::{BridgeConfig, Route};

/// Header names of provenance.
pub const PROVENANCE_CLUSTER: &str = "strand-bridge-source-cluster";
pub const PROVENANCE_TOPIC: &str = "strand-bridge-source-topic";
pub const PROVENANCE_PARTITION: &str = "strand-bridge-source-partition";
pub const PROVENANCE_OFFSET: &str = "strand-bridge-source-offset";

/// Where checkpoints live on each destination cluster.
pub const CHECKPOINT_TOPIC: &str = "strand-bridge-checkpoints";

/// Counters of one route, shown on `/health` and `/metrics`.
#[derive(Debug, Default, Serialize)]
pub struct RouteStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped_loops: AtomicU64,
    pub errors: AtomicU64,
    /// Source records read but not yet checkpointed.
    pub lag: AtomicU64,
}

/// Runs every route until shutdown; a route that fails is retried with backoff.
pub async fn run(
    config: BridgeConfig,
    stats: BTreeMap<String, Arc<RouteStats>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SideError> {
    let mut clusters = BTreeMap::new();
    for (name, c) in &config.clusters {
        clusters.insert(name.clone(), Arc::new(Cluster::connect(name, c).await?));
    }
    let mut tasks = Vec::new();
    for route in config.routes() {
        let from = clusters[&route.from.cluster].clone();
        let to = clusters[&route.to.cluster].clone();
        let stats = stats[&route.id()].clone();
        let config = config.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match mirror(&config, &route, &from, &to, &stats, shutdown.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(route = %route.id(), error = %e, ?backoff, "route failed; retrying");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Mirrors one route until shutdown (Ok) or an error (the caller retries).
async fn mirror(
    config: &BridgeConfig,
    route: &Route,
    from: &Cluster,
    to: &Cluster,
    stats: &RouteStats,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SideError> {
    let route_id = route.id();
    let n_source = from.partitions(&route.from.topic).await?;
    let n_dest = match to.partitions(&route.to.topic).await {
        Ok(n) => n,
        Err(SideError::UnknownTopic(_)) if config.create_topics => {
            to.create_topic(&route.to.topic, n_source).await?;
            n_source
        }
        Err(e) => return Err(e),
    };
    to.ensure_topic(CHECKPOINT_TOPIC, 1, TopicKind::Compacted)
        .await?;
    let mut positions = read_checkpoint(to, &route_id).await?;
    positions.resize(n_source as usize, 0);
    tracing::info!(route = %route_id, ?positions, "route resuming");
    let mut source = from.reader(&route.from.topic, &positions).await?;
    let mut in_flight = FuturesOrdered::new();
    let mut checkpoint =
        tokio::time::interval(Duration::from_millis(config.checkpoint_interval_ms.max(10)));
    let mut acked = positions.clone();
    let mut unsaved = 0u64;
    let mut rr = 0u32;
    loop {
        let full = in_flight.len() >= config.in_flight_max;
        tokio::select! {
            // Acknowledgements come back in send order.
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (partition, offset): (u32, u64) = done?;
                acked[partition as usize] = offset + 1;
                unsaved += 1;
            }
            record = source.next(), if !full => {
                let record: MirroredRecord = record?;
                if record.header(PROVENANCE_CLUSTER).is_some() {
                    // A copy made by a bridge: never copied again (no loops).
                    stats.skipped_loops.fetch_add(1, Ordering::Relaxed);
                    let (p, o) = (record.partition, record.offset);
                    in_flight.push_back(Box::pin(async move { Ok((p, o)) }) as side::Ack);
                    continue;
                }
                let partition = if n_dest == n_source {
                    record.partition
                } else {
                    match &record.key {
                        Some(k) => strand_client::partitioner::partition_for_key(k, n_dest),
                        None => {
                            rr = rr.wrapping_add(1);
                            rr % n_dest
                        }
                    }
                };
                stats.records.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(record.value.as_ref().map_or(0, |v| v.len()) as u64, Ordering::Relaxed);
                let (p, o) = (record.partition, record.offset);
                let mut copy = record;
                copy.headers.push((PROVENANCE_CLUSTER.into(), Some(route.from.cluster.clone().into_bytes())));
                copy.headers.push((PROVENANCE_TOPIC.into(), Some(route.from.topic.clone().into_bytes())));
                copy.headers.push((PROVENANCE_PARTITION.into(), Some(p.to_string().into_bytes())));
                copy.headers.push((PROVENANCE_OFFSET.into(), Some(o.to_string().into_bytes())));
                let ack = to.send(&route.to.topic, Some(partition), copy).await?;
                in_flight.push_back(Box::pin(async move { ack.await.map(|_| (p, o)) }) as side::Ack);
            }
            _ = checkpoint.tick() => {
                if unsaved > 0 {
                    // Queued behind the records it covers, and not waited for here: mirroring
                    // goes on while it travels. Checkpoints of a route stay in order.
                    tracing::debug!(route = %route_id, positions = ?acked, "checkpoint queued");
                    let sent = queue_checkpoint(to, &route_id, &acked).await?;
                    let route_id = route_id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = sent.await {
                            tracing::warn!(route = %route_id, error = %e, "a checkpoint was not stored");
                        }
                    });
                    unsaved = 0;
                }
                stats.lag.store(in_flight.len() as u64, Ordering::Relaxed);
            }
            _ = stopped(&mut shutdown) => {
                while let Some(done) = in_flight.next().await {
                    let (partition, offset) = done?;
                    acked[partition as usize] = offset + 1;
                }
                queue_checkpoint(to, &route_id, &acked).await?.await?;
                return Ok(());
            }
        }
    }
}

/// The source positions saved for a route (empty when none).
async fn read_checkpoint(cluster: &Cluster, route: &str) -> Result<Vec<u64>, SideError> {
    let records = cluster.read_to_end(CHECKPOINT_TOPIC, &[(0, 0)]).await?;
    let latest = records
        .into_iter()
        .rfind(|r| r.key.as_deref() == Some(route.as_bytes()))
        .and_then(|r| r.value);
    match latest {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_slice(&v)
            .map_err(|e| SideError::BadCheckpoint(route.to_string(), e.to_string())),
    }
}

/// Queues a route's source positions; the future resolves once they are durable.
async fn queue_checkpoint(
    cluster: &Cluster,
    route: &str,
    positions: &[u64],
) -> Result<side::Sent, SideError> {
    let value = serde_json::to_vec(positions).expect("positions serialize");
    let record = MirroredRecord::new(Some(route.as_bytes().to_vec()), value);
    cluster.send(CHECKPOINT_TOPIC, Some(0), record).await
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
