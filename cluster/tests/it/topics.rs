//! Topic creation: the replication factor asked for reaches a Kafka cluster's CreateTopics
//! (here the broker's Kafka listener, which as a single node refuses more than one copy, so
//! its answer shows what the request carried); a Strand broker ignores it.

use strand_cluster::{Cluster, ClusterConfig, TopicKind};

use super::support::{start_broker, stop};

#[tokio::test]
async fn the_replication_factor_reaches_create_topics_and_defaults_to_the_clusters() {
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
    let error = kafka
        .ensure_topic_replicated("three", 2, TopicKind::Kept, Some(3))
        .await
        .unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("replication"),
        "{error}"
    );
    assert!(kafka.watermarks("three").await.is_err(), "nothing created");
    // The cluster's default (-1 on the wire) and an explicit 1 are accepted.
    kafka
        .ensure_topic("default", 2, TopicKind::Compacted)
        .await
        .unwrap();
    kafka
        .ensure_topic_replicated("one", 2, TopicKind::Kept, Some(1))
        .await
        .unwrap();
    assert_eq!(kafka.partitions("default").await.unwrap(), 2);
    assert_eq!(kafka.partitions("one").await.unwrap(), 2);

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
        .ensure_topic_replicated("native", 3, TopicKind::Kept, Some(3))
        .await
        .unwrap();
    assert_eq!(strand.partitions("native").await.unwrap(), 3);
    stop(broker).await;
}
