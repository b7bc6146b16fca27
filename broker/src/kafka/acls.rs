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
use crate::security::acl::{
    AclBinding, AclEntry, AclError, AclFilter, Operation, PatternFilter, PatternType, Permission,
    ResourcePattern, ResourceType,
};
use crate::security::{Principal, Session};

/// Kafka's wire codes for "any" in a filter, and for the resource types and operations Kafka
/// knows that Strand has no use for (delegation tokens, users): valid in a filter, they match
/// no binding; in a binding they are refused.
const ANY: i8 = 1;
const FOREIGN_RESOURCE_TYPES: [i8; 2] = [6, 7];
const FOREIGN_OPERATIONS: [i8; 2] = [13, 14];

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn message(e: &impl std::fmt::Display) -> Option<StrBytes> {
    Some(str_bytes(e.to_string()))
}

/// The binding a creation asks for, or why it is invalid.
fn binding(c: &AclCreation) -> Result<AclBinding, String> {
    let resource_type = ResourceType::from_code(c.resource_type)
        .ok_or_else(|| format!("resource type {} cannot carry ACLs", c.resource_type))?;
    let pattern_type = match c.resource_pattern_type {
        3 => PatternType::Literal,
        4 => PatternType::Prefixed,
        other => {
            return Err(format!(
                "pattern type {other} is not LITERAL (3) or PREFIXED (4)"
            ))
        }
    };
    let operation = Operation::from_code(c.operation)
        .ok_or_else(|| format!("operation {} is not one a binding may have", c.operation))?;
    let permission = match c.permission_type {
        2 => Permission::Deny,
        3 => Permission::Allow,
        other => return Err(format!("permission {other} is not DENY (2) or ALLOW (3)")),
    };
    let principal: Principal = c.principal.parse()?;
    AclBinding {
        pattern: ResourcePattern {
            resource_type,
            name: c.resource_name.to_string(),
            pattern_type,
        },
        entry: AclEntry {
            principal,
            host: c.host.to_string(),
            operation,
            permission,
        },
    }
    .validated()
    .map_err(|e| e.to_string())
}

/// A filter's fields off the wire.
struct WireFilter<'a> {
    resource_type: i8,
    name: Option<&'a StrBytes>,
    pattern_type: i8,
    principal: Option<&'a StrBytes>,
    host: Option<&'a StrBytes>,
    operation: i8,
    permission: i8,
}

/// The filter, `Ok(None)` for a valid filter that can match no binding of Strand's, or why it
/// is invalid.
fn filter(f: WireFilter<'_>) -> Result<Option<AclFilter>, String> {
    let resource_type = match f.resource_type {
        ANY => None,
        code if FOREIGN_RESOURCE_TYPES.contains(&code) => return Ok(None),
        code => Some(
            ResourceType::from_code(code)
                .ok_or_else(|| format!("resource type filter {code} is not valid"))?,
        ),
    };
    let pattern = PatternFilter::from_code(f.pattern_type)
        .ok_or_else(|| format!("pattern type filter {} is not valid", f.pattern_type))?;
    let operation = match f.operation {
        ANY => None,
        code if FOREIGN_OPERATIONS.contains(&code) => return Ok(None),
        code => Some(
            Operation::from_code(code)
                .ok_or_else(|| format!("operation filter {code} is not valid"))?,
        ),
    };
    let permission = match f.permission {
        ANY => None,
        2 => Some(Permission::Deny),
        3 => Some(Permission::Allow),
        other => return Err(format!("permission filter {other} is not valid")),
    };
    let principal = match f.principal {
        None => None,
        Some(p) => match p.parse::<Principal>() {
            Ok(p) => Some(p),
            // Kafka compares principals as strings: one no binding can have matches none.
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(AclFilter {
        resource_type,
        name: f.name.map(|n| n.to_string()),
        pattern,
        principal,
        host: f.host.map(|h| h.to_string()),
        operation,
        permission,
    }))
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
    let parsed = filter(WireFilter {
        resource_type: request.resource_type_filter,
        name: request.resource_name_filter.as_ref(),
        pattern_type: request.pattern_type_filter,
        principal: request.principal_filter.as_ref(),
        host: request.host_filter.as_ref(),
        operation: request.operation,
        permission: request.permission_type,
    });
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
            filter(WireFilter {
                resource_type: f.resource_type_filter,
                name: f.resource_name_filter.as_ref(),
                pattern_type: f.pattern_type_filter,
                principal: f.principal_filter.as_ref(),
                host: f.host_filter.as_ref(),
                operation: f.operation,
                permission: f.permission_type,
            })
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
