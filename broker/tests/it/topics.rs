//! The topic registry persists topics and their settings across restarts.

use strand_broker::log::LogConfig;
use strand_broker::topics::{TopicConfig, TopicError, Topics};

use super::support::{batch, read_all, values};

fn defaults() -> LogConfig {
    LogConfig {
        retention_ms: None,
        ..LogConfig::default()
    }
}

#[test]
fn topics_and_their_data_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (topics, _) = Topics::open(dir.path(), defaults()).unwrap();
    let config = TopicConfig {
        partitions: 3,
        compact: true,
        retention_ms: Some(-1),
        retention_bytes: Some(1 << 20),
        segment_bytes_max: Some(1 << 20),
    };
    let orders = topics.create("orders", config.clone()).unwrap();
    topics
        .create(
            "payments.v1",
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    for p in &orders.partitions {
        p.writer()
            .append(&mut batch(&values(&format!("p{}", p.index), 2, 10), 0))
            .unwrap();
    }
    topics.close().unwrap();

    let (topics, reports) = Topics::open(dir.path(), defaults()).unwrap();
    assert_eq!(reports.len(), 4);
    assert!(reports.iter().all(|r| r.report.clean_shutdown));
    let names: Vec<String> = topics.list().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, vec!["orders", "payments.v1"]);
    let orders = topics.get("orders").unwrap();
    assert_eq!(orders.config, config);
    assert_eq!(
        orders.partitions[0].writer().config().retention_bytes,
        Some(1 << 20)
    );
    assert_eq!(orders.partitions[0].writer().config().retention_ms, None);
    for p in &orders.partitions {
        let records = read_all(p.reader(), 0);
        assert_eq!(records.len(), 2);
        assert!(records[0]
            .1
            .starts_with(format!("p{}-0", p.index).as_bytes()));
    }
}

#[test]
fn delete_is_durable_and_frees_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let (topics, _) = Topics::open(dir.path(), defaults()).unwrap();
    topics
        .create(
            "t",
            TopicConfig {
                partitions: 2,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    topics.delete("t").unwrap();
    assert!(matches!(topics.delete("t"), Err(TopicError::NotFound(_))));
    drop(topics);
    let (topics, _) = Topics::open(dir.path(), defaults()).unwrap();
    assert!(topics.get("t").is_none());
    let again = topics
        .create(
            "t",
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    assert_eq!(again.partitions[0].reader().high_watermark(), 0);
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (topics, _) = Topics::open(dir.path(), defaults()).unwrap();
    let one = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    for name in ["", ".", "..", "a/b", "white space", &"x".repeat(250)] {
        assert!(
            matches!(
                topics.create(name, one.clone()),
                Err(TopicError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        topics.create(
            "z",
            TopicConfig {
                partitions: 0,
                ..one.clone()
            }
        ),
        Err(TopicError::InvalidConfig(_))
    ));
    assert!(matches!(
        topics.create(
            "z",
            TopicConfig {
                retention_ms: Some(-5),
                ..one.clone()
            }
        ),
        Err(TopicError::InvalidConfig(_))
    ));
    topics.create("z", one.clone()).unwrap();
    assert!(matches!(
        topics.create("z", one),
        Err(TopicError::AlreadyExists(_))
    ));
    assert_eq!(topics.list().len(), 1);
    let on_disk: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .collect();
    assert_eq!(on_disk.len(), 1);
}

#[test]
fn a_create_interrupted_before_its_metadata_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("topics/half/0")).unwrap();
    let (topics, _) = Topics::open(dir.path(), defaults()).unwrap();
    assert!(topics.list().is_empty());
    assert!(!dir.path().join("topics/half").exists());
}

#[test]
fn only_compacted_topics_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let (topics, _) = Topics::open(dir.path(), defaults()).unwrap();
    let small = |compact| TopicConfig {
        partitions: 1,
        compact,
        segment_bytes_max: Some(2048),
        ..TopicConfig::default()
    };
    topics.create("kept", small(false)).unwrap();
    topics.create("compacted", small(true)).unwrap();
    for name in ["kept", "compacted"] {
        let topic = topics.get(name).unwrap();
        for i in 0..100 {
            // The same key over and over ("key-0" from the support encoder).
            topic.partitions[0]
                .writer()
                .append(&mut batch(&values(&format!("v{i}"), 1, 100), i))
                .unwrap();
        }
    }
    let report = topics.clean_compacted(1_000_000).unwrap();
    assert!(
        report.segments_rewritten > 0 && report.records_removed > 0,
        "{report:?}"
    );
    assert_eq!(
        read_all(topics.get("kept").unwrap().partitions[0].reader(), 0).len(),
        100
    );
    let left = read_all(topics.get("compacted").unwrap().partitions[0].reader(), 0);
    assert!(
        left.len() < 20,
        "{} records left after compaction",
        left.len()
    );
    assert_eq!(
        left.last().unwrap().0,
        99,
        "the newest record keeps its offset"
    );
}
