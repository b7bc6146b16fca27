//! Authorization end to end, with the authorizer on: `User:ANONYMOUS` (every connection on a
//! PLAINTEXT listener) is refused with each protocol's own error until ACLs allow it, and a
//! refused request changes nothing. ACLs are managed with Kafka's CreateAcls, DescribeAcls and
//! DeleteAcls (raw `kafka-protocol` requests: the `rdkafka` crate has no ACL admin API) and
//! with the native client, and they survive a restart. Produce and consume go through
//! librdkafka, a client nobody here wrote.

use std::time::Duration;

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, CreateAclsRequest, CreateAclsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest, DescribeAclsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse, GroupId,
    InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest, JoinGroupResponse,
    ListGroupsRequest, ListGroupsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig as KafkaClientConfig, Message as _};
use strand_broker::config::BrokerConfig;
use strand_broker::run::RunningBroker;
use strand_broker::security::acl::{
    AclBinding, AclEntry, AclFilter, Operation, PatternType, Permission, ResourcePattern,
    ResourceType,
};
use strand_broker::security::Principal;
use strand_broker::topics::TopicConfig;
use strand_client::native::messages::{AclBinding as WireAcl, AclBindingFilter};
use strand_client::native::{ErrorCode, OffsetQuery};
use strand_client::{Client, ClientConfig, ClientError, TopicSettings};
use tokio::net::TcpStream;

use super::kafka_clients::kafka_call;

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const INVALID_REQUEST: i16 = 42;

// Kafka's ACL codes on the wire.
const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const CLUSTER: i8 = 4;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const MATCH: i8 = 2;
const ANY: i8 = 1;
const READ: i8 = 3;
const WRITE: i8 = 4;
const DESCRIBE: i8 = 8;
const ALLOW: i8 = 3;

const ANONYMOUS: &str = "User:ANONYMOUS";

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

async fn start(dir: &std::path::Path, authorizer_enabled: bool) -> RunningBroker {
    let any = "127.0.0.1:0".parse().unwrap();
    RunningBroker::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: any,
        kafka_listen: any,
        http_listen: any,
        authorizer_enabled,
        shutdown_timeout_ms: 2_000,
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

fn binding(op: Operation, resource_type: ResourceType, name: &str) -> AclBinding {
    AclBinding {
        pattern: ResourcePattern {
            resource_type,
            name: name.into(),
            pattern_type: PatternType::Literal,
        },
        entry: AclEntry {
            principal: Principal::anonymous(),
            host: "*".into(),
            operation: op,
            permission: Permission::Allow,
        },
    }
}

/// Lets the anonymous principal manage ACLs (Alter and Describe on the cluster), and nothing
/// else: the state an operator leaves a test broker in.
fn let_anonymous_manage_acls(broker: &RunningBroker) {
    broker
        .broker
        .authorizer
        .create(vec![
            binding(Operation::Alter, ResourceType::Cluster, "kafka-cluster"),
            binding(Operation::Describe, ResourceType::Cluster, "kafka-cluster"),
        ])
        .unwrap();
}

async fn create_topic(broker: &RunningBroker, name: &str) {
    broker
        .broker
        .create_topic(
            name.into(),
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
}

fn high_watermark(broker: &RunningBroker, topic: &str) -> u64 {
    broker
        .broker
        .partition_info(topic, 0)
        .unwrap()
        .high_watermark
}

fn creation(resource_type: i8, name: &str, pattern: i8, principal: &str, op: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(resource_type)
        .with_resource_name(str_bytes(name))
        .with_resource_pattern_type(pattern)
        .with_principal(str_bytes(principal))
        .with_host(str_bytes("*"))
        .with_operation(op)
        .with_permission_type(ALLOW)
}

async fn create_acls(socket: &mut TcpStream, creations: Vec<AclCreation>) -> Vec<i16> {
    let response: CreateAclsResponse = kafka_call(
        socket,
        ApiKey::CreateAcls,
        1,
        &CreateAclsRequest::default().with_creations(creations),
    )
    .await;
    response.results.iter().map(|r| r.error_code).collect()
}

/// A DescribeAcls request matching every binding (the crate's defaults are empty strings,
/// which match only bindings with empty fields).
fn describe_any() -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(ANY)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_operation(ANY)
        .with_permission_type(ANY)
}

fn delete_any() -> DeleteAclsFilter {
    DeleteAclsFilter::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(ANY)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_operation(ANY)
        .with_permission_type(ANY)
}

fn producer(bootstrap: &str) -> FutureProducer {
    KafkaClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "5000")
        .set("log_level", "3")
        .create()
        .expect("producer")
}

async fn produce(producer: &FutureProducer, topic: &str) -> Result<(), KafkaError> {
    producer
        .send(
            FutureRecord::to(topic).key("k").payload("v"),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_produce_is_refused_until_create_acls_allows_it_and_delete_acls_refuses_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    let_anonymous_manage_acls(&broker);
    create_topic(&broker, "orders").await;
    let bootstrap = broker.kafka_addr.to_string();
    let refused = produce(&producer(&bootstrap), "orders").await.unwrap_err();
    assert_eq!(
        refused.rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "{refused}"
    );
    assert_eq!(high_watermark(&broker, "orders"), 0, "nothing appended");

    // Describe lets the client see the topic; the Produce itself is then refused.
    let mut admin = TcpStream::connect(broker.kafka_addr).await.unwrap();
    let codes = create_acls(
        &mut admin,
        vec![creation(TOPIC, "orders", LITERAL, ANONYMOUS, DESCRIBE)],
    )
    .await;
    assert_eq!(codes, vec![0]);
    // A new producer each time: librdkafka treats an authorization failure as permanent for
    // the topic until its next metadata refresh.
    let refused = produce(&producer(&bootstrap), "orders").await.unwrap_err();
    assert_eq!(
        refused.rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "{refused}"
    );
    assert_eq!(high_watermark(&broker, "orders"), 0, "nothing appended");

    let codes = create_acls(
        &mut admin,
        vec![creation(TOPIC, "orders", LITERAL, ANONYMOUS, WRITE)],
    )
    .await;
    assert_eq!(codes, vec![0]);
    produce(&producer(&bootstrap), "orders").await.unwrap();
    assert_eq!(high_watermark(&broker, "orders"), 1);

    // DescribeAcls with a MATCH filter finds what applies to the topic.
    let described: DescribeAclsResponse = kafka_call(
        &mut admin,
        ApiKey::DescribeAcls,
        1,
        &describe_any()
            .with_resource_type_filter(TOPIC)
            .with_resource_name_filter(Some(str_bytes("orders")))
            .with_pattern_type_filter(MATCH)
            .with_operation(ANY)
            .with_permission_type(ANY),
    )
    .await;
    assert_eq!(described.error_code, 0);
    assert_eq!(described.resources.len(), 1);
    let mut acls: Vec<_> = described.resources[0]
        .acls
        .iter()
        .map(|a| (a.principal.to_string(), a.operation, a.permission_type))
        .collect();
    acls.sort();
    assert_eq!(
        acls,
        vec![
            (ANONYMOUS.to_string(), WRITE, ALLOW),
            (ANONYMOUS.to_string(), DESCRIBE, ALLOW)
        ]
    );

    let deleted: DeleteAclsResponse = kafka_call(
        &mut admin,
        ApiKey::DeleteAcls,
        1,
        &DeleteAclsRequest::default().with_filters(vec![delete_any()
            .with_resource_type_filter(TOPIC)
            .with_pattern_type_filter(ANY)
            .with_operation(ANY)
            .with_permission_type(ANY)]),
    )
    .await;
    assert_eq!(deleted.filter_results.len(), 1);
    assert_eq!(deleted.filter_results[0].matching_acls.len(), 2);
    assert_eq!(
        deleted.filter_results[0].matching_acls[0]
            .resource_name
            .as_str(),
        "orders"
    );
    // A fresh producer (no cached metadata) is refused again.
    let refused = produce(&producer(&bootstrap), "orders").await.unwrap_err();
    assert_eq!(
        refused.rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "{refused}"
    );
    assert_eq!(high_watermark(&broker, "orders"), 1);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_requests_need_cluster_rights_and_bad_bindings_are_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    let mut socket = TcpStream::connect(broker.kafka_addr).await.unwrap();
    // No rights at all yet.
    let codes = create_acls(
        &mut socket,
        vec![creation(TOPIC, "orders", LITERAL, ANONYMOUS, WRITE)],
    )
    .await;
    assert_eq!(codes, vec![CLUSTER_AUTHORIZATION_FAILED]);
    let described: DescribeAclsResponse = kafka_call(
        &mut socket,
        ApiKey::DescribeAcls,
        1,
        &describe_any()
            .with_resource_type_filter(ANY)
            .with_pattern_type_filter(ANY)
            .with_operation(ANY)
            .with_permission_type(ANY),
    )
    .await;
    assert_eq!(described.error_code, CLUSTER_AUTHORIZATION_FAILED);
    let deleted: DeleteAclsResponse = kafka_call(
        &mut socket,
        ApiKey::DeleteAcls,
        1,
        &DeleteAclsRequest::default().with_filters(vec![delete_any()
            .with_resource_type_filter(ANY)
            .with_pattern_type_filter(ANY)
            .with_operation(ANY)
            .with_permission_type(ANY)]),
    )
    .await;
    assert_eq!(
        deleted.filter_results[0].error_code,
        CLUSTER_AUTHORIZATION_FAILED
    );
    assert!(broker
        .broker
        .authorizer
        .describe(&AclFilter::any())
        .is_empty());

    let_anonymous_manage_acls(&broker);
    let codes = create_acls(
        &mut socket,
        vec![
            creation(TOPIC, "orders", LITERAL, ANONYMOUS, WRITE),
            creation(TOPIC, "orders", LITERAL, "no-colon", WRITE),
            creation(CLUSTER, "my-cluster", LITERAL, ANONYMOUS, WRITE),
            creation(TOPIC, "orders", MATCH, ANONYMOUS, WRITE),
            creation(TOPIC, "orders", LITERAL, ANONYMOUS, 99),
            creation(TOPIC, "", PREFIXED, ANONYMOUS, READ),
        ],
    )
    .await;
    assert_eq!(
        codes,
        vec![
            0,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST
        ]
    );
    // The two cluster bindings and the one valid creation.
    assert_eq!(
        broker.broker.authorizer.describe(&AclFilter::any()).len(),
        3
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_hides_what_may_not_be_described_and_creating_needs_create() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    create_topic(&broker, "visible").await;
    create_topic(&broker, "hidden").await;
    broker
        .broker
        .authorizer
        .create(vec![binding(
            Operation::Read,
            ResourceType::Topic,
            "visible",
        )])
        .unwrap();
    let mut socket = TcpStream::connect(broker.kafka_addr).await.unwrap();
    let all: MetadataResponse = kafka_call(
        &mut socket,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    )
    .await;
    let names: Vec<_> = all
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.to_string())
        .collect();
    assert_eq!(names, vec!["visible"]);
    let named = |names: &[&str]| {
        MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(n))))
                    })
                    .collect(),
            ))
    };
    let answer: MetadataResponse = kafka_call(
        &mut socket,
        ApiKey::Metadata,
        12,
        &named(&["visible", "hidden", "new-topic"]),
    )
    .await;
    let codes: Vec<i16> = answer.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        codes,
        vec![0, TOPIC_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED]
    );
    assert!(broker.broker.topics.get("new-topic").is_none());
    // Describe alone does not let a client create; Create on the topic does.
    broker
        .broker
        .authorizer
        .create(vec![binding(
            Operation::Describe,
            ResourceType::Topic,
            "new-topic",
        )])
        .unwrap();
    let answer: MetadataResponse =
        kafka_call(&mut socket, ApiKey::Metadata, 12, &named(&["new-topic"])).await;
    assert_eq!(answer.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    assert!(broker.broker.topics.get("new-topic").is_none());
    broker
        .broker
        .authorizer
        .create(vec![binding(
            Operation::Create,
            ResourceType::Topic,
            "new-topic",
        )])
        .unwrap();
    let answer: MetadataResponse =
        kafka_call(&mut socket, ApiKey::Metadata, 12, &named(&["new-topic"])).await;
    assert_eq!(answer.topics[0].error_code, 0);
    assert!(broker.broker.topics.get("new-topic").is_some());

    // CreateTopics: refused without Create, and nothing is created.
    let created: CreateTopicsResponse = kafka_call(
        &mut socket,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![
            kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                .with_name(TopicName(str_bytes("other")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]),
    )
    .await;
    assert_eq!(created.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    assert!(broker.broker.topics.get("other").is_none());
    // InitProducerId: an idempotent producer needs Write somewhere (or IdempotentWrite).
    let init: InitProducerIdResponse = kafka_call(
        &mut socket,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
    )
    .await;
    assert_eq!(init.error_code, CLUSTER_AUTHORIZATION_FAILED);
    broker
        .broker
        .authorizer
        .create(vec![binding(
            Operation::Write,
            ResourceType::Topic,
            "visible",
        )])
        .unwrap();
    let init: InitProducerIdResponse = kafka_call(
        &mut socket,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
    )
    .await;
    assert_eq!(init.error_code, 0);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_is_refused_until_allowed_then_librdkafka_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    let_anonymous_manage_acls(&broker);
    create_topic(&broker, "events").await;
    broker
        .broker
        .authorizer
        .create(vec![
            binding(Operation::Write, ResourceType::Topic, "events"),
            binding(Operation::Read, ResourceType::Topic, "events"),
        ])
        .unwrap();
    let bootstrap = broker.kafka_addr.to_string();
    produce(&producer(&bootstrap), "events").await.unwrap();

    let mut socket = TcpStream::connect(broker.kafka_addr).await.unwrap();
    let join: JoinGroupResponse = kafka_call(
        &mut socket,
        ApiKey::JoinGroup,
        5,
        &JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes("readers")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![
                kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(str_bytes("range")),
            ]),
    )
    .await;
    assert_eq!(join.error_code, GROUP_AUTHORIZATION_FAILED);
    let commit: OffsetCommitResponse = kafka_call(
        &mut socket,
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes("readers")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes("events")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1)])]),
    )
    .await;
    assert_eq!(
        commit.topics[0].partitions[0].error_code,
        GROUP_AUTHORIZATION_FAILED
    );
    assert!(broker.broker.groups.describe("readers").is_none());
    let described: DescribeGroupsResponse = kafka_call(
        &mut socket,
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("readers"))]),
    )
    .await;
    assert_eq!(described.groups[0].error_code, GROUP_AUTHORIZATION_FAILED);

    let codes = create_acls(
        &mut socket,
        vec![creation(GROUP, "read", PREFIXED, ANONYMOUS, READ)],
    )
    .await;
    assert_eq!(codes, vec![0]);
    let consumer: StreamConsumer = KafkaClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "readers")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .set("log_level", "3")
        .create()
        .unwrap();
    consumer.subscribe(&["events"]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .unwrap();
    assert_eq!(message.payload(), Some(&b"v"[..]));
    let (partition, offset) = (message.partition(), message.offset());
    drop(message);
    // librdkafka's synchronous calls block their thread; the broker serves on this runtime.
    let consumer = tokio::task::spawn_blocking(move || {
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset("events", partition, rdkafka::Offset::Offset(offset + 1))
            .unwrap();
        consumer
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
        consumer
    })
    .await
    .unwrap();
    assert!(broker.broker.groups.describe("readers").is_some());
    // ListGroups without Describe on the cluster lists only groups the principal may Describe.
    let listed: ListGroupsResponse = kafka_call(
        &mut socket,
        ApiKey::ListGroups,
        4,
        &ListGroupsRequest::default(),
    )
    .await;
    let names: Vec<_> = listed
        .groups
        .iter()
        .map(|g| g.group_id.0.to_string())
        .collect();
    assert_eq!(names, vec!["readers"]);
    // Closing the consumer (LeaveGroup) blocks its thread too.
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_topics_need_rights_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    create_topic(&broker, "orders").await;
    broker
        .broker
        .authorizer
        .create(vec![binding(Operation::All, ResourceType::Topic, "*")])
        .unwrap();
    let mut socket = TcpStream::connect(broker.kafka_addr).await.unwrap();
    let fetch = |topic: &str| {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_partition_max_bytes(1 << 20)])])
    };
    let answer: FetchResponse = kafka_call(&mut socket, ApiKey::Fetch, 12, &fetch("orders")).await;
    assert_eq!(answer.responses[0].partitions[0].error_code, 0);
    let answer: FetchResponse =
        kafka_call(&mut socket, ApiKey::Fetch, 12, &fetch("__consumer_offsets")).await;
    assert_eq!(
        answer.responses[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    broker
        .broker
        .authorizer
        .create(vec![binding(
            Operation::Read,
            ResourceType::Topic,
            "__consumer_offsets",
        )])
        .unwrap();
    let answer: FetchResponse =
        kafka_call(&mut socket, ApiKey::Fetch, 12, &fetch("__consumer_offsets")).await;
    assert_eq!(answer.responses[0].partitions[0].error_code, 0);
    broker.stop().await.unwrap();
}

fn refused_code(e: ClientError) -> (ErrorCode, String) {
    match e {
        ClientError::Broker { code, message } => (code, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

fn wire_allow(resource_type: u8, name: &str, operation: u8) -> WireAcl {
    WireAcl {
        resource_type,
        resource_name: name.into(),
        pattern_type: 3,
        principal: ANONYMOUS.into(),
        host: "*".into(),
        operation,
        permission: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_client_is_refused_until_allowed_and_acls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    let_anonymous_manage_acls(&broker);
    let c = Client::connect(broker.native_addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let (code, message) = refused_code(
        c.admin()
            .create_topic(
                "payments",
                TopicSettings {
                    partitions: 1,
                    ..TopicSettings::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::AuthorizationFailed);
    assert!(
        message.contains("User:ANONYMOUS")
            && message.contains("Create")
            && message.contains("payments"),
        "{message}"
    );
    assert!(broker.broker.topics.get("payments").is_none());

    c.admin()
        .create_acls(vec![
            wire_allow(2, "payments", 5),
            wire_allow(2, "payments", 3),
        ])
        .await
        .unwrap();
    c.admin()
        .create_topic(
            "payments",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    // Read implies Describe: listing offsets works; producing needs Write.
    c.admin()
        .list_offset("payments", 0, OffsetQuery::Latest)
        .await
        .unwrap();
    let producer = strand_client::Producer::new(c.clone(), Default::default());
    let delivery = producer
        .send(strand_client::ProducerRecord::new("payments", "p1"))
        .await
        .unwrap()
        .await;
    let (code, message) = refused_code(delivery.unwrap_err());
    assert_eq!(code, ErrorCode::AuthorizationFailed);
    assert!(message.contains("Write"), "{message}");
    assert_eq!(high_watermark(&broker, "payments"), 0);
    let listed = c
        .admin()
        .describe_acls(AclBindingFilter::any())
        .await
        .unwrap();
    assert_eq!(listed.len(), 4);
    broker.stop().await.unwrap();

    // The same ACLs after a restart, and still enforced.
    let broker = start(dir.path(), true).await;
    let c = Client::connect(broker.native_addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let listed_again = c
        .admin()
        .describe_acls(AclBindingFilter::any())
        .await
        .unwrap();
    assert_eq!(listed_again, listed);
    let (code, _) = refused_code(c.admin().delete_topic("payments").await.unwrap_err());
    assert_eq!(code, ErrorCode::AuthorizationFailed);
    let removed = c
        .admin()
        .delete_acls(vec![AclBindingFilter {
            resource_type: 2,
            resource_name: Some("payments".into()),
            ..AclBindingFilter::any()
        }])
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    let (code, _) = refused_code(
        c.admin()
            .list_offset("payments", 0, OffsetQuery::Latest)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::AuthorizationFailed);
    // Invalid bindings are refused whole.
    let (code, _) = refused_code(
        c.admin()
            .create_acls(vec![
                wire_allow(2, "ok", 3),
                wire_allow(4, "not-the-cluster", 3),
            ])
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert_eq!(
        c.admin()
            .describe_acls(AclBindingFilter::any())
            .await
            .unwrap()
            .len(),
        2
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_authorizer_off_everything_is_allowed_and_acls_are_kept_for_later() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), false).await;
    let c = Client::connect(broker.native_addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
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
    c.admin()
        .create_acls(vec![wire_allow(2, "t", 2)])
        .await
        .unwrap();
    broker.stop().await.unwrap();
    let broker = start(dir.path(), true).await;
    let c = Client::connect(broker.native_addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    c.admin().describe_topic("t").await.unwrap();
    let (code, _) = refused_code(c.admin().describe_topic("u").await.unwrap_err());
    assert_eq!(code, ErrorCode::AuthorizationFailed);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_subscription_ends_when_read_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    create_topic(&broker, "feed").await;
    broker
        .broker
        .authorizer
        .create(vec![
            binding(Operation::Read, ResourceType::Topic, "feed"),
            binding(Operation::Write, ResourceType::Topic, "feed"),
        ])
        .unwrap();
    let c = Client::connect(broker.native_addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    let connection = c.connection().await.unwrap();
    let (_, mut pushes) = connection.subscribe("feed", 0, 0, 1 << 20).await.unwrap();
    let producer = strand_client::Producer::new(c.clone(), Default::default());
    let send = |value: &'static str| {
        let record = strand_client::ProducerRecord::new("feed", value);
        let producer = &producer;
        async move { producer.send(record).await.unwrap().await.unwrap() }
    };
    send("first").await;
    let first = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_ok(), "{first:?}");
    broker
        .broker
        .authorizer
        .delete(&[AclFilter {
            operation: Some(Operation::Read),
            ..AclFilter::any()
        }])
        .unwrap();
    send("second").await;
    let ended = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .unwrap()
        .unwrap();
    let (code, message) = refused_code(ended.unwrap_err());
    assert_eq!(code, ErrorCode::AuthorizationFailed);
    assert!(message.contains("Read"), "{message}");
    broker.stop().await.unwrap();
}

#[test]
fn the_cli_adds_lists_and_removes_acls_that_the_broker_binary_enforces() {
    use super::broker_process::{run_cli, start_broker, start_broker_with, stop, strand_cli};
    let dir = tempfile::tempdir().unwrap();
    let cli = strand_cli();
    let lines = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).lines().count();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // The authorizer is off: ACLs are stored for later.
    let broker = start_broker(dir.path());
    ok(run_cli(
        &cli,
        &broker.addr,
        &["topic", "create", "orders"],
        b"",
    ));
    let added = ok(run_cli(
        &cli,
        &broker.addr,
        &[
            "acl",
            "add",
            "--allow-principal",
            ANONYMOUS,
            "--operation",
            "Read",
            "--operation",
            "describe",
            "--topic",
            "orders",
        ],
        b"",
    ));
    assert_eq!(lines(&added), 2);
    ok(run_cli(
        &cli,
        &broker.addr,
        &[
            "acl",
            "add",
            "--allow-principal",
            ANONYMOUS,
            "--operation",
            "Alter",
            "--operation",
            "Describe",
            "--cluster",
        ],
        b"",
    ));
    // Bad flags are refused before anything is sent.
    for bad in [
        &[
            "acl",
            "add",
            "--allow-principal",
            ANONYMOUS,
            "--operation",
            "Frobnicate",
            "--topic",
            "t",
        ][..],
        &[
            "acl",
            "add",
            "--allow-principal",
            ANONYMOUS,
            "--operation",
            "Read",
        ][..],
        &["acl", "add", "--operation", "Read", "--topic", "t"][..],
        &[
            "acl",
            "add",
            "--allow-principal",
            "alice",
            "--operation",
            "Read",
            "--topic",
            "t",
        ][..],
    ] {
        let out = run_cli(&cli, &broker.addr, bad, b"");
        assert!(!out.status.success(), "{bad:?}");
    }
    assert!(stop(broker).success());

    let broker = start_broker_with(dir.path(), &["--authorizer-enabled", "true"]);
    assert_eq!(
        lines(&ok(run_cli(&cli, &broker.addr, &["acl", "list"], b""))),
        4
    );
    let matching = ok(run_cli(
        &cli,
        &broker.addr,
        &[
            "acl",
            "list",
            "--topic",
            "orders",
            "--resource-pattern-type",
            "match",
        ],
        b"",
    ));
    assert_eq!(lines(&matching), 2);
    let refused = run_cli(&cli, &broker.addr, &["produce", "orders"], b"one\n");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("AuthorizationFailed") && stderr.contains("Write"),
        "{stderr}"
    );
    ok(run_cli(
        &cli,
        &broker.addr,
        &["topic", "describe", "orders"],
        b"",
    ));
    let removed = ok(run_cli(
        &cli,
        &broker.addr,
        &[
            "acl",
            "remove",
            "--allow-principal",
            ANONYMOUS,
            "--topic",
            "orders",
        ],
        b"",
    ));
    assert_eq!(lines(&removed), 2);
    assert_eq!(
        lines(&ok(run_cli(&cli, &broker.addr, &["acl", "list"], b""))),
        2
    );
    let refused = run_cli(&cli, &broker.addr, &["topic", "describe", "orders"], b"");
    assert!(!refused.status.success());
    assert!(stop(broker).success());
}

/// Transactions need Write on the TransactionalId, as in Kafka: InitProducerId is refused
/// without it; with it (and Write on the topic) AddPartitionsToTxn goes through, and a topic
/// without Write is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_ids_need_write_on_the_transactional_id() {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::{
        AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, TransactionalId,
    };
    const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), true).await;
    create_topic(&broker, "allowed").await;
    create_topic(&broker, "refused").await;
    let mut socket = TcpStream::connect(broker.kafka_addr).await.unwrap();
    let init_request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(str_bytes("tx"))))
        .with_transaction_timeout_ms(60_000);
    let init: InitProducerIdResponse =
        kafka_call(&mut socket, ApiKey::InitProducerId, 4, &init_request).await;
    assert_eq!(init.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    broker
        .broker
        .authorizer
        .create(vec![
            binding(Operation::Write, ResourceType::TransactionalId, "tx"),
            binding(Operation::Write, ResourceType::Topic, "allowed"),
        ])
        .unwrap();
    let init: InitProducerIdResponse =
        kafka_call(&mut socket, ApiKey::InitProducerId, 4, &init_request).await;
    assert_eq!(init.error_code, 0);
    let add = |topic: &str| {
        AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(str_bytes("tx")))
            .with_v3_and_below_producer_id(init.producer_id)
            .with_v3_and_below_producer_epoch(init.producer_epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(vec![0])])
    };
    let added: AddPartitionsToTxnResponse =
        kafka_call(&mut socket, ApiKey::AddPartitionsToTxn, 3, &add("refused")).await;
    assert_eq!(
        added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    let added: AddPartitionsToTxnResponse =
        kafka_call(&mut socket, ApiKey::AddPartitionsToTxn, 3, &add("allowed")).await;
    assert_eq!(
        added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
        0
    );
    broker.stop().await.unwrap();
}
