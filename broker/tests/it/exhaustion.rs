//! Out of file descriptors: `strand-broker` under a low `RLIMIT_NOFILE` (set with `prlimit`),
//! asked for one topic after another. Creates fail with a clear error once descriptors run out
//! and leave nothing behind, the broker keeps serving the topics it has, frees descriptors when
//! topics go, and restarts under the same limit with every topic it acknowledged.

use std::time::Duration;

use strand_client::{
    Acks, Client, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicSettings,
};

use super::broker_process::{client, start_broker_under, stop};

const LIMIT: &str = "--nofile=256:256";

async fn create(c: &Client, name: &str) -> Result<(), String> {
    c.admin()
        .create_topic(
            name,
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
}

async fn round_trip(c: &Client, topic: &str, value: &str) {
    let producer = Producer::new(
        c.clone(),
        ProducerConfig {
            acks: Acks::Durable,
            ..ProducerConfig::default()
        },
    );
    let offset = producer
        .send(ProducerRecord::new(topic, value.to_string()))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut consumer = Consumer::new(c.clone(), topic, None, ConsumerConfig::default())
        .await
        .unwrap();
    loop {
        let record = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap();
        if record.offset == offset.offset {
            assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_topic_creates_fail_cleanly_and_the_broker_restarts() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_under(&["prlimit", LIMIT, "--"], dir.path(), &[]);
    let c = client(&broker.addr).await;
    let mut created = Vec::new();
    let error = loop {
        let name = format!("t{}", created.len());
        match create(&c, &name).await {
            Ok(()) => created.push(name),
            Err(e) => break e,
        }
        assert!(
            created.len() < 256,
            "256 topics under a limit of 256 descriptors"
        );
    };
    eprintln!("{} topics created, then: {error}", created.len());
    assert!(created.len() > 10, "only {} topics", created.len());
    assert!(
        error.contains("Too many open files"),
        "the error says what is wrong: {error}"
    );
    // Still out of descriptors: the same clear error, and no crash.
    assert!(create(&c, "one-more").await.is_err());
    assert!(broker.child.id() > 0);
    // Nothing half-made was left behind.
    let on_disk = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .count();
    assert!(
        on_disk <= created.len() + 2,
        "{on_disk} topic folders for {} topics (+ __consumer_offsets, __transaction_state)",
        created.len()
    );
    // Deleting topics gives descriptors back: the existing topics are served.
    for name in created.drain(..4) {
        c.admin().delete_topic(&name).await.unwrap();
    }
    round_trip(&c, &created[0], "still served").await;
    round_trip(&c, created.last().unwrap(), "the newest one too").await;
    drop(c);
    assert!(stop(broker).success());

    // A restart under the same limit opens every topic it acknowledged.
    let broker = start_broker_under(&["prlimit", LIMIT, "--"], dir.path(), &[]);
    let c = client(&broker.addr).await;
    let listed = c.admin().list_topics().await.unwrap();
    for name in &created {
        assert!(
            listed.iter().any(|t| &t.name == name),
            "{name} is gone after the restart"
        );
    }
    round_trip(&c, &created[1], "after the restart").await;
    drop(c);
    assert!(stop(broker).success());
}
