//! CreateAcls, DescribeAcls and DeleteAcls over the broker's one
//! [`Authorizer`](crate::security::acl::Authorizer), so Kafka admin tools and librdkafka's
//! admin API manage Strand's ACLs. As in Kafka, creating and deleting need Alter on the cluster
//! and describing needs Describe on it.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::Context;
use crate::security::acl::{AclBinding, AclError, AclFilter, Operation, ResourcePattern};
use crate::security::Session;

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn message(e: &impl std::fmt::Display) -> Option<StrBytes> {
    Some(str_bytes(e.to_string()))
}

fn binding(c: &AclCreation) -> Result<AclBinding, String> {
    AclBinding::from_codes(
        c.resource_type,
        &c.resource_name,
        c.resource_pattern_type,
        &c.principal,
        &c.host,
        c.operation,
        c.permission_type,
    )
}

fn storage_failed(e: &AclError) -> ResponseError {
    match e {
        AclError::Invalid(_) => ResponseError::InvalidRequest,
        // Kafka has no bound on ACLs; a refusal by the broker's policy is the nearest code.
        AclError::LimitReached { .. } => ResponseError::PolicyViolation,
        _ => {
            tracing::error!(error = %e, "storing ACLs failed");
            ResponseError::UnknownServerError
        }
    }
}

/// Runs a blocking ACL change (it writes and fsyncs the file) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AclError> + Send + 'static,
) -> Result<T, AclError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(AclError::Invalid(format!("ACL task failed: {e}"))))
}

pub(super) async fn create_acls(
    cx: &Context,
    session: &Session,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let result = |code: i16, text: Option<StrBytes>| {
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(text)
    };
    if !cx.allowed_on_cluster(session, Operation::Alter) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        let text = message(&format!(
            "{} is not authorized to Alter the cluster",
            session.principal
        ));
        return CreateAclsResponse::default().with_results(
            request
                .creations
                .iter()
                .map(|_| result(code, text.clone()))
                .collect(),
        );
    }
    let parsed: Vec<Result<AclBinding, String>> = request.creations.iter().map(binding).collect();
    let valid: Vec<AclBinding> = parsed.iter().filter_map(|b| b.clone().ok()).collect();
    let stored = if valid.is_empty() {
        Ok(())
    } else {
        let authorizer = cx.broker.authorizer.clone();
        let n = valid.len();
        let outcome = blocking(move || authorizer.create(valid)).await;
        if outcome.is_ok() {
            tracing::info!(principal = %session.principal, n_acls = n, "created ACLs");
        }
        outcome
    };
    let results = parsed
        .into_iter()
        .map(|b| match (b, &stored) {
            (Err(reason), _) => result(ResponseError::InvalidRequest.code(), message(&reason)),
            (Ok(_), Ok(())) => result(0, None),
            (Ok(_), Err(e)) => result(storage_failed(e).code(), message(e)),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub(super) fn describe_acls(
    cx: &Context,
    session: &Session,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    if !cx.allowed_on_cluster(session, Operation::Describe) {
        return DescribeAclsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(message(&format!(
                "{} is not authorized to Describe the cluster",
                session.principal
            )));
    }
    let parsed = AclFilter::from_codes(
        request.resource_type_filter,
        request.resource_name_filter.as_deref(),
        request.pattern_type_filter,
        request.principal_filter.as_deref(),
        request.host_filter.as_deref(),
        request.operation,
        request.permission_type,
    );
    let bindings = match parsed {
        Err(reason) => {
            return DescribeAclsResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(message(&reason))
        }
        Ok(None) => Vec::new(),
        Ok(Some(f)) => cx.broker.authorizer.describe(&f),
    };
    let mut by_pattern: BTreeMap<ResourcePattern, Vec<AclDescription>> = BTreeMap::new();
    for b in bindings {
        by_pattern.entry(b.pattern).or_default().push(
            AclDescription::default()
                .with_principal(str_bytes(b.entry.principal.to_string()))
                .with_host(str_bytes(b.entry.host))
                .with_operation(b.entry.operation.code())
                .with_permission_type(b.entry.permission.code()),
        );
    }
    let resources = by_pattern
        .into_iter()
        .map(|(pattern, acls)| {
            DescribeAclsResource::default()
                .with_resource_type(pattern.resource_type.code())
                .with_resource_name(str_bytes(pattern.name))
                .with_pattern_type(pattern.pattern_type.code())
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}

pub(super) async fn delete_acls(
    cx: &Context,
    session: &Session,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let failed = |code: ResponseError, text: Option<StrBytes>| {
        DeleteAclsFilterResult::default()
            .with_error_code(code.code())
            .with_error_message(text)
    };
    if !cx.allowed_on_cluster(session, Operation::Alter) {
        let text = message(&format!(
            "{} is not authorized to Alter the cluster",
            session.principal
        ));
        return DeleteAclsResponse::default().with_filter_results(
            request
                .filters
                .iter()
                .map(|_| failed(ResponseError::ClusterAuthorizationFailed, text.clone()))
                .collect(),
        );
    }
    let parsed: Vec<Result<Option<AclFilter>, String>> = request
        .filters
        .iter()
        .map(|f: &DeleteAclsFilter| {
            AclFilter::from_codes(
                f.resource_type_filter,
                f.resource_name_filter.as_deref(),
                f.pattern_type_filter,
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let filters: Vec<AclFilter> = parsed
        .iter()
        .filter_map(|f| f.as_ref().ok().cloned().flatten())
        .collect();
    let deleted = if filters.is_empty() {
        Ok(Vec::new())
    } else {
        let authorizer = cx.broker.authorizer.clone();
        blocking(move || authorizer.delete(&filters)).await
    };
    if let Ok(deleted) = &deleted {
        let n: usize = deleted.iter().map(Vec::len).sum();
        if n > 0 {
            tracing::info!(principal = %session.principal, n_acls = n, "deleted ACLs");
        }
    }
    let mut matched = match &deleted {
        Ok(d) => d.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let results = parsed
        .into_iter()
        .map(|f| match (f, &deleted) {
            (Err(reason), _) => failed(ResponseError::InvalidRequest, message(&reason)),
            (Ok(None), _) => DeleteAclsFilterResult::default(),
            (Ok(Some(_)), Err(e)) => failed(storage_failed(e), message(e)),
            (Ok(Some(_)), Ok(_)) => DeleteAclsFilterResult::default().with_matching_acls(
                matched
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|b| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.pattern.resource_type.code())
                            .with_resource_name(str_bytes(b.pattern.name))
                            .with_pattern_type(b.pattern.pattern_type.code())
                            .with_principal(str_bytes(b.entry.principal.to_string()))
                            .with_host(str_bytes(b.entry.host))
                            .with_operation(b.entry.operation.code())
                            .with_permission_type(b.entry.permission.code())
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

/// The Kafka handlers under principals other than `User:ANONYMOUS` (which authentication
/// gives connections; here sessions are built directly): what one user may do another may not,
/// and super users may do everything.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use kafka_protocol::messages::create_acls_request::AclCreation;
    use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        GroupId, HeartbeatRequest, ProduceRequest, RequestHeader, RequestKind, ResponseKind,
        TopicName,
    };

    use super::*;
    use crate::group::CoordinatorConfig;
    use crate::kafka::{handle, KafkaConfig};
    use crate::log::LogConfig;
    use crate::metrics::Metrics;
    use crate::security::acl::{Authorizer, AuthorizerConfig};
    use crate::security::{Principal, SecurityProtocol};
    use crate::service::Broker;
    use crate::topics::{TopicConfig, Topics};

    async fn context(dir: &std::path::Path) -> Context {
        let (topics, _) = Topics::open(dir, LogConfig::default()).unwrap();
        let mut broker = Broker::new(
            Arc::new(topics),
            Arc::new(Metrics::default()),
            CoordinatorConfig::default(),
            Duration::from_secs(1),
        )
        .unwrap();
        let config = AuthorizerConfig {
            enabled: true,
            super_users: vec![Principal::user("admin")],
            ..AuthorizerConfig::default()
        };
        broker.authorizer = Arc::new(Authorizer::open(dir, config).unwrap());
        broker
            .create_topic(
                "orders".into(),
                TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                },
            )
            .await
            .unwrap();
        Context {
            broker,
            config: KafkaConfig::default(),
            advertised: ("127.0.0.1".into(), 9092),
        }
    }

    fn session(user: &str) -> Session {
        let mut s = Session::new(
            SecurityProtocol::SaslPlaintext,
            "10.0.0.7:4000".parse().unwrap(),
        );
        s.principal = Principal::user(user);
        s.sasl_authenticated = true;
        s
    }

    async fn call(cx: &Context, user: &str, request: RequestKind, version: i16) -> ResponseKind {
        let mut session = session(user);
        handle(
            cx,
            &mut session,
            &RequestHeader::default(),
            request,
            version,
        )
        .await
        .expect("an answer")
    }

    fn produce() -> RequestKind {
        let mut batch = strand_client::batch::BatchBuilder::new();
        batch.push(1_700_000_000_000, None, Some(b"v"), &[]);
        RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch.finish())))]),
            ]))
    }

    fn produce_code(response: ResponseKind) -> i16 {
        match response {
            ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
            other => panic!("{other:?}"),
        }
    }

    fn grant(user: &str, resource_type: i8, name: &str, operation: i8) -> RequestKind {
        RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![
            AclCreation::default()
                .with_resource_type(resource_type)
                .with_resource_name(StrBytes::from_string(name.into()))
                .with_resource_pattern_type(3)
                .with_principal(StrBytes::from_string(format!("User:{user}")))
                .with_host(StrBytes::from_static_str("10.0.0.7"))
                .with_operation(operation)
                .with_permission_type(3),
        ]))
    }

    fn create_code(response: ResponseKind) -> i16 {
        match response {
            ResponseKind::CreateAcls(r) => r.results[0].error_code,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn what_alice_is_granted_bob_is_refused_and_admin_needs_no_grant() {
        let dir = tempfile::tempdir().unwrap();
        let cx = context(dir.path()).await;
        let topic_denied = ResponseError::TopicAuthorizationFailed.code();
        assert_eq!(
            produce_code(call(&cx, "alice", produce(), 9).await),
            topic_denied
        );
        // Only a principal with Alter on the cluster manages ACLs: alice cannot grant herself.
        assert_eq!(
            create_code(call(&cx, "alice", grant("alice", 2, "orders", 4), 1).await),
            ResponseError::ClusterAuthorizationFailed.code()
        );
        assert_eq!(
            create_code(call(&cx, "admin", grant("alice", 2, "orders", 4), 1).await),
            0
        );
        assert_eq!(produce_code(call(&cx, "alice", produce(), 9).await), 0);
        assert_eq!(
            produce_code(call(&cx, "bob", produce(), 9).await),
            topic_denied
        );
        assert_eq!(produce_code(call(&cx, "admin", produce(), 9).await), 0);
        assert_eq!(
            cx.broker
                .partition_info("orders", 0)
                .unwrap()
                .high_watermark,
            2
        );
        // Group rights are per group and per principal too.
        let heartbeat = || {
            RequestKind::Heartbeat(
                HeartbeatRequest::default().with_group_id(GroupId(StrBytes::from_static_str("g"))),
            )
        };
        let code = |r: ResponseKind| match r {
            ResponseKind::Heartbeat(r) => r.error_code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(call(&cx, "alice", heartbeat(), 4).await),
            ResponseError::GroupAuthorizationFailed.code()
        );
        assert_eq!(
            create_code(call(&cx, "admin", grant("alice", 3, "g", 3), 1).await),
            0
        );
        // Allowed now: the coordinator answers (it does not know the member).
        assert_eq!(
            code(call(&cx, "alice", heartbeat(), 4).await),
            ResponseError::UnknownMemberId.code()
        );
        // The grants were bound to alice's host: from elsewhere she is refused.
        let mut elsewhere = session("alice");
        elsewhere.peer = "10.0.0.8:4000".parse().unwrap();
        let response = handle(&cx, &mut elsewhere, &RequestHeader::default(), produce(), 9)
            .await
            .unwrap();
        assert_eq!(produce_code(response), topic_denied);
    }

    #[tokio::test]
    async fn invalid_filters_are_refused_alone_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cx = context(dir.path()).await;
        assert_eq!(
            create_code(call(&cx, "admin", grant("alice", 2, "orders", 3), 1).await),
            0
        );
        let filter = |resource_type: i8, pattern_type: i8, operation: i8| {
            DeleteAclsFilter::default()
                .with_resource_type_filter(resource_type)
                .with_resource_name_filter(None)
                .with_pattern_type_filter(pattern_type)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_operation(operation)
                .with_permission_type(1)
        };
        let request = RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
            filter(0, 1, 1),  // UNKNOWN resource type
            filter(2, 0, 1),  // UNKNOWN pattern type
            filter(2, 1, 99), // no such operation
            filter(6, 1, 1),  // delegation tokens: valid, matches nothing of Strand's
        ]));
        let ResponseKind::DeleteAcls(response) = call(&cx, "admin", request, 1).await else {
            panic!("not a DeleteAcls answer")
        };
        let codes: Vec<i16> = response
            .filter_results
            .iter()
            .map(|r| r.error_code)
            .collect();
        let invalid = ResponseError::InvalidRequest.code();
        assert_eq!(codes, vec![invalid, invalid, invalid, 0]);
        assert_eq!(cx.broker.authorizer.describe(&AclFilter::any()).len(), 1);
        // DescribeAcls with an invalid filter says so; a wildcard one lists the binding.
        let describe = |pattern_type: i8| {
            RequestKind::DescribeAcls(
                DescribeAclsRequest::default()
                    .with_resource_type_filter(1)
                    .with_resource_name_filter(None)
                    .with_pattern_type_filter(pattern_type)
                    .with_principal_filter(None)
                    .with_host_filter(None)
                    .with_operation(1)
                    .with_permission_type(1),
            )
        };
        let ResponseKind::DescribeAcls(bad) = call(&cx, "admin", describe(9), 1).await else {
            panic!("not a DescribeAcls answer")
        };
        assert_eq!(bad.error_code, invalid);
        let ResponseKind::DescribeAcls(all) = call(&cx, "admin", describe(1), 1).await else {
            panic!("not a DescribeAcls answer")
        };
        assert_eq!(all.resources.len(), 1);
        assert_eq!(all.resources[0].acls[0].host.as_str(), "10.0.0.7");
        // Bob may not even look.
        let ResponseKind::DescribeAcls(bobs) = call(&cx, "bob", describe(1), 1).await else {
            panic!("not a DescribeAcls answer")
        };
        assert_eq!(
            bobs.error_code,
            ResponseError::ClusterAuthorizationFailed.code()
        );
        assert!(bobs.resources.is_empty());
    }
}
