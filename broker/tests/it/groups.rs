//! Consumer groups driven through `Groups`: joins wait for their rebalance, commits are fenced
//! and durable, and committed offsets come back after a restart.

use std::sync::Arc;
use std::time::Duration;

use strand_broker::group::{
    Assignor, CommittedOffset, CoordinatorConfig, GroupError, Groups, JoinRequest,
};
use strand_broker::log::LogConfig;
use strand_broker::topics::{TopicConfig, Topics};

fn open(dir: &std::path::Path) -> (Arc<Topics>, Arc<Groups>) {
    let (topics, _) = Topics::open(
        dir,
        LogConfig {
            retention_ms: None,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let topics = Arc::new(topics);
    let config = CoordinatorConfig {
        session_timeout_ms_min: 10,
        ..CoordinatorConfig::default()
    };
    let groups = Arc::new(Groups::open(topics.clone(), config).unwrap());
    (topics, groups)
}

fn join(group: &str, member: Option<String>) -> JoinRequest {
    JoinRequest {
        group: group.into(),
        member_id: member,
        client_id: "test".into(),
        topics: ["t".to_string()].into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 5_000,
        assignor: Assignor::CooperativeSticky,
        client_protocol: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_commits_are_fenced_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (topics, groups) = open(dir.path());
    topics
        .create(
            "t",
            TopicConfig {
                partitions: 6,
                ..TopicConfig::default()
            },
        )
        .unwrap();

    let a = groups.join(join("g", None)).await.unwrap();
    assert_eq!(a.assignment.len(), 6);
    // b's join waits until a rejoins; a learns of the rebalance from its heartbeat.
    let b_join = {
        let groups = groups.clone();
        tokio::spawn(async move { groups.join(join("g", None)).await })
    };
    let mut tries = 0;
    while groups.heartbeat("g", &a.member_id, a.generation) == Ok(()) {
        tries += 1;
        assert!(tries < 200, "the rebalance never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a2 = groups
        .join(join("g", Some(a.member_id.clone())))
        .await
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), b_join)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((a2.generation, b.generation), (2, 2));
    assert_eq!(a2.assignment.len() + b.assignment.len(), 6);

    let offset = |o| {
        vec![(
            ("t".to_string(), 0),
            CommittedOffset {
                offset: o,
                metadata: "m".into(),
            },
        )]
    };
    groups
        .commit("g", &a2.member_id, 2, offset(42))
        .await
        .unwrap();
    let stale = groups
        .commit("g", &a.member_id, 1, offset(7))
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            strand_broker::group::CommitError::Fenced(GroupError::IllegalGeneration)
        ),
        "{stale:?}"
    );
    // A second group on the same topic is independent.
    let other = groups.join(join("other", None)).await.unwrap();
    groups
        .commit("other", &other.member_id, other.generation, offset(3))
        .await
        .unwrap();
    assert_eq!(groups.committed("g", &("t".into(), 0)).unwrap().offset, 42);
    assert_eq!(
        groups.committed("other", &("t".into(), 0)).unwrap().offset,
        3
    );
    let described = groups.describe("g").unwrap();
    assert_eq!(described.members.len(), 2);
    assert_eq!(groups.list(), vec!["g".to_string(), "other".to_string()]);

    drop(groups);
    topics.close().unwrap();
    drop(topics);
    let (_topics, groups) = open(dir.path());
    assert_eq!(
        groups.committed("g", &("t".into(), 0)),
        Some(CommittedOffset {
            offset: 42,
            metadata: "m".into()
        })
    );
    assert_eq!(
        groups.committed("other", &("t".into(), 0)).unwrap().offset,
        3
    );
}
