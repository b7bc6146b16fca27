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
