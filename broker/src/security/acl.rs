//! Authorization: Kafka's ACL model, its matching rules, and the durable store of bindings.
//!
//! A binding pairs a resource pattern (type, name, literal or prefixed) with an entry
//! (principal, host, operation, allow or deny). [`Authorizer::authorize`] decides as Kafka's
//! `AclAuthorizer`/`StandardAuthorizer` do:
//!
//! - super users may do everything;
//! - a binding applies when its pattern matches the resource (a literal name equal to it, the
//!   literal `*`, or a prefix of it), its principal is the session's or `User:*`, and its host
//!   is the peer's address or `*`;
//! - a matching Deny for the operation (or for All) refuses, whatever allows it;
//! - else a matching Allow for the operation (or for All) allows; Describe is also allowed by
//!   Read, Write, Delete and Alter, and DescribeConfigs by AlterConfigs;
//! - else, when no binding at all applies to the resource, `allow_everyone_if_no_acl_found`
//!   decides (default false: refused).
//!
//! Strand adds one rule: the broker's internal topics ([`is_protected_topic`]) need explicit
//! rights. An Allow on the literal `*` does not reach them and neither does
//! `allow_everyone_if_no_acl_found`; a binding naming them (literally or by a prefix) does.
//!
//! Bindings live in `<data_dir>/security/acls.json`, replaced atomically (temporary file,
//! fsync, rename, fsync of the folder) before a change is visible; a change that cannot be
//! stored changes nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::{Principal, Session};
use crate::topics::is_internal_topic;

/// The one name a Cluster resource has, as in Kafka.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The literal resource name that matches every name, and the principal name and host that
/// match every principal and host.
pub const WILDCARD: &str = "*";
/// Bindings stored at most by default ([`AuthorizerConfig::acl_bindings_max`]).
pub const ACL_BINDINGS_MAX_DEFAULT: usize = 10_000;
/// Longest resource name a binding may have, in bytes.
pub const RESOURCE_NAME_BYTES_MAX: usize = 1024;
/// Longest principal a binding may have (`User:name`), in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 512;

const FILE_NAME: &str = "acls.json";
const FILE_VERSION: u32 = 1;

/// Topics that only a binding naming them can grant: the broker's own (`__consumer_offsets`)
/// and the saga orchestrator's (`__saga_*`), whose records steer sagas.
pub fn is_protected_topic(name: &str) -> bool {
    is_internal_topic(name) || name.starts_with("__saga_")
}

/// Kind of resource, with Kafka's wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::TransactionalId,
    ];

    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    pub fn from_code(code: i8) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "Topic",
            ResourceType::Group => "Group",
            ResourceType::Cluster => "Cluster",
            ResourceType::TransactionalId => "TransactionalId",
        }
    }
}

/// How a binding's resource name is matched, with Kafka's wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PatternType {
    /// The name itself; `*` matches every name.
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

impl PatternType {
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PatternType::Literal => "Literal",
            PatternType::Prefixed => "Prefixed",
        }
    }
}

/// What a request does to a resource, with Kafka's wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    /// Every operation.
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl Operation {
    pub const ALL: [Operation; 11] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
    ];

    pub fn code(self) -> i8 {
        match self {
            Operation::All => 2,
            Operation::Read => 3,
            Operation::Write => 4,
            Operation::Create => 5,
            Operation::Delete => 6,
            Operation::Alter => 7,
            Operation::Describe => 8,
            Operation::ClusterAction => 9,
            Operation::DescribeConfigs => 10,
            Operation::AlterConfigs => 11,
            Operation::IdempotentWrite => 12,
        }
    }

    pub fn from_code(code: i8) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "All",
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Delete => "Delete",
            Operation::Alter => "Alter",
            Operation::Describe => "Describe",
            Operation::ClusterAction => "ClusterAction",
            Operation::DescribeConfigs => "DescribeConfigs",
            Operation::AlterConfigs => "AlterConfigs",
            Operation::IdempotentWrite => "IdempotentWrite",
        }
    }

    /// The operations whose Allow also allows this one (Kafka's implied operations).
    fn allowed_by(self) -> &'static [Operation] {
        match self {
            Operation::Describe => &[
                Operation::Describe,
                Operation::Read,
                Operation::Write,
                Operation::Delete,
                Operation::Alter,
                Operation::All,
            ],
            Operation::DescribeConfigs => &[
                Operation::DescribeConfigs,
                Operation::AlterConfigs,
                Operation::All,
            ],
            Operation::All => &[Operation::All],
            Operation::Read => &[Operation::Read, Operation::All],
            Operation::Write => &[Operation::Write, Operation::All],
            Operation::Create => &[Operation::Create, Operation::All],
            Operation::Delete => &[Operation::Delete, Operation::All],
            Operation::Alter => &[Operation::Alter, Operation::All],
            Operation::ClusterAction => &[Operation::ClusterAction, Operation::All],
            Operation::AlterConfigs => &[Operation::AlterConfigs, Operation::All],
            Operation::IdempotentWrite => &[Operation::IdempotentWrite, Operation::All],
        }
    }
}

impl FromStr for Operation {
    type Err = String;

    /// Kafka's names, in any case, with or without underscores (`describe_configs`).
    fn from_str(s: &str) -> Result<Operation, String> {
        let wanted: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        Operation::ALL
            .into_iter()
            .find(|o| o.name().to_ascii_lowercase() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Operation::ALL.iter().map(|o| o.name()).collect();
                format!("operation {s:?} is not one of {}", names.join(", "))
            })
    }
}

/// Allow or deny, with Kafka's wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    Deny,
    Allow,
}

impl Permission {
    pub fn from_code(code: i8) -> Option<Permission> {
        match code {
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            _ => None,
        }
    }

    pub fn code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Permission::Deny => "Deny",
            Permission::Allow => "Allow",
        }
    }
}

/// The resources a binding covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourcePattern {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern_type: PatternType,
}

impl ResourcePattern {
    /// Whether this pattern covers the resource named `name` of type `resource_type`.
    pub fn matches(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => self.name == WILDCARD || self.name == name,
                PatternType::Prefixed => name.starts_with(&self.name),
            }
    }

    fn is_wildcard(&self) -> bool {
        self.pattern_type == PatternType::Literal && self.name == WILDCARD
    }
}

/// Who may (or may not) do what from where.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclEntry {
    /// `User:alice`, or `User:*` for every user.
    #[serde(with = "principal_string")]
    pub principal: Principal,
    /// An IP address, or `*` for every host.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclEntry {
    fn applies_to(&self, principal: &Principal, host: IpAddr) -> bool {
        let principal_matches = self.principal == *principal
            || (self.principal.kind == principal.kind && self.principal.name == WILDCARD);
        let host_matches = self.host == WILDCARD
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|h| h.to_canonical() == host.to_canonical());
        principal_matches && host_matches
    }
}

/// One ACL: a resource pattern and an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    pub pattern: ResourcePattern,
    pub entry: AclEntry,
}

impl AclBinding {
    /// Checks what Kafka's CreateAcls checks, plus Strand's bounds; returns the binding with
    /// its host in canonical form.
    pub fn validated(mut self) -> Result<AclBinding, AclError> {
        let invalid = |reason: String| Err(AclError::Invalid(reason));
        let name = &self.pattern.name;
        if name.is_empty() {
            return invalid("the resource name is empty".into());
        }
        if name.len() > RESOURCE_NAME_BYTES_MAX {
            return invalid(format!(
                "the resource name is {} bytes, over the limit of {RESOURCE_NAME_BYTES_MAX}",
                name.len()
            ));
        }
        if self.pattern.resource_type == ResourceType::Cluster && name != CLUSTER_NAME {
            return invalid(format!(
                "the only valid name for the Cluster resource is {CLUSTER_NAME}, not {name:?}"
            ));
        }
        let principal = &self.entry.principal;
        if principal.kind.is_empty() || principal.name.is_empty() {
            return invalid(format!("principal {principal} is not <type>:<name>"));
        }
        if principal.to_string().len() > PRINCIPAL_BYTES_MAX {
            return invalid(format!(
                "the principal is over the limit of {PRINCIPAL_BYTES_MAX} bytes"
            ));
        }
        if self.entry.host != WILDCARD {
            match self.entry.host.parse::<IpAddr>() {
                Ok(ip) => self.entry.host = ip.to_string(),
                Err(_) => {
                    return invalid(format!(
                        "host {:?} is neither * nor an IP address",
                        self.entry.host
                    ))
                }
            }
        }
        Ok(self)
    }
}

impl AclBinding {
    /// The binding Kafka's wire codes describe (as CreateAcls carries them), validated.
    pub fn from_codes(
        resource_type: i8,
        name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<AclBinding, String> {
        let resource_type = ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("resource type {resource_type} cannot carry ACLs"))?;
        let pattern_type = match pattern_type {
            3 => PatternType::Literal,
            4 => PatternType::Prefixed,
            other => {
                return Err(format!(
                    "pattern type {other} is not LITERAL (3) or PREFIXED (4)"
                ))
            }
        };
        let operation = Operation::from_code(operation)
            .ok_or_else(|| format!("operation {operation} is not one a binding may have"))?;
        let permission = Permission::from_code(permission)
            .ok_or_else(|| format!("permission {permission} is not DENY (2) or ALLOW (3)"))?;
        AclBinding {
            pattern: ResourcePattern {
                resource_type,
                name: name.to_string(),
                pattern_type,
            },
            entry: AclEntry {
                principal: principal.parse()?,
                host: host.to_string(),
                operation,
                permission,
            },
        }
        .validated()
        .map_err(|e| e.to_string())
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {} {}:{:?} from {}",
            self.entry.permission.name(),
            self.entry.principal,
            self.entry.operation.name(),
            self.pattern.pattern_type.name(),
            self.pattern.resource_type.name(),
            self.pattern.name,
            self.entry.host
        )
    }
}

/// How a filter matches the pattern type of bindings (Kafka's `PatternType` in filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternFilter {
    /// Any pattern type; a name, if given, must be the binding's name.
    Any,
    /// The bindings that would apply to the named resource: its literal name, the literal
    /// `*`, and the prefixes of the name.
    Match,
    Literal,
    Prefixed,
}

impl PatternFilter {
    pub fn from_code(code: i8) -> Option<PatternFilter> {
        match code {
            1 => Some(PatternFilter::Any),
            2 => Some(PatternFilter::Match),
            3 => Some(PatternFilter::Literal),
            4 => Some(PatternFilter::Prefixed),
            _ => None,
        }
    }
}

/// Selects bindings (DescribeAcls, DeleteAcls): `None` matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<Principal>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// Matches every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// The filter Kafka's wire codes describe (as DescribeAcls and DeleteAcls carry them):
    /// `Ok(None)` for a valid filter that can match none of Strand's bindings (delegation
    /// tokens, users, token operations, a principal that is not `<type>:<name>`), `Err` with
    /// the reason for an invalid one.
    pub fn from_codes(
        resource_type: i8,
        name: Option<&str>,
        pattern_type: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<Option<AclFilter>, String> {
        const ANY: i8 = 1;
        const FOREIGN_RESOURCE_TYPES: [i8; 2] = [6, 7];
        const FOREIGN_OPERATIONS: [i8; 2] = [13, 14];
        let resource_type = match resource_type {
            ANY => None,
            code if FOREIGN_RESOURCE_TYPES.contains(&code) => return Ok(None),
            code => Some(
                ResourceType::from_code(code)
                    .ok_or_else(|| format!("resource type filter {code} is not valid"))?,
            ),
        };
        let pattern = PatternFilter::from_code(pattern_type)
            .ok_or_else(|| format!("pattern type filter {pattern_type} is not valid"))?;
        let operation = match operation {
            ANY => None,
            code if FOREIGN_OPERATIONS.contains(&code) => return Ok(None),
            code => Some(
                Operation::from_code(code)
                    .ok_or_else(|| format!("operation filter {code} is not valid"))?,
            ),
        };
        let permission = match permission {
            ANY => None,
            code => Some(
                Permission::from_code(code)
                    .ok_or_else(|| format!("permission filter {code} is not valid"))?,
            ),
        };
        let principal = match principal {
            None => None,
            Some(p) => match p.parse::<Principal>() {
                Ok(p) => Some(p),
                // Kafka compares principals as strings: one no binding can have matches none.
                Err(_) => return Ok(None),
            },
        };
        Ok(Some(AclFilter {
            resource_type,
            name: name.map(str::to_string),
            pattern,
            principal,
            host: host.map(str::to_string),
            operation,
            permission,
        }))
    }

    /// Kafka's `AclBindingFilter.matches`.
    pub fn matches(&self, binding: &AclBinding) -> bool {
        let pattern = &binding.pattern;
        let entry = &binding.entry;
        if self
            .resource_type
            .is_some_and(|t| t != pattern.resource_type)
        {
            return false;
        }
        let type_matches = match self.pattern {
            PatternFilter::Any | PatternFilter::Match => true,
            PatternFilter::Literal => pattern.pattern_type == PatternType::Literal,
            PatternFilter::Prefixed => pattern.pattern_type == PatternType::Prefixed,
        };
        if !type_matches {
            return false;
        }
        let name_matches = match &self.name {
            None => true,
            Some(name) if self.pattern == PatternFilter::Match => {
                pattern.matches(pattern.resource_type, name)
            }
            Some(name) => *name == pattern.name,
        };
        name_matches
            && self
                .principal
                .as_ref()
                .is_none_or(|p| *p == entry.principal)
            && self.host.as_ref().is_none_or(|h| {
                *h == entry.host
                    || h.parse::<IpAddr>()
                        .is_ok_and(|ip| ip.to_string() == entry.host)
            })
            && self.operation.is_none_or(|o| o == entry.operation)
            && self.permission.is_none_or(|p| p == entry.permission)
    }
}

/// The authorizer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// Whether requests are authorized at all. Off (the default), everything is allowed and
    /// ACLs are only stored, to take effect once it is turned on.
    pub enabled: bool,
    /// Principals allowed everything, as Kafka's `super.users`.
    pub super_users: Vec<Principal>,
    /// Allow what no binding applies to, as Kafka's `allow.everyone.if.no.acl.found`
    /// (default false). Never applies to internal topics.
    pub allow_everyone_if_no_acl_found: bool,
    /// Bindings stored at most; CreateAcls past it is refused. Default 10,000.
    pub acl_bindings_max: usize,
}

impl Default for AuthorizerConfig {
    fn default() -> Self {
        AuthorizerConfig {
            enabled: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
            acl_bindings_max: ACL_BINDINGS_MAX_DEFAULT,
        }
    }
}

/// Why an ACL change or the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    #[error("invalid ACL: {0}")]
    Invalid(String),
    #[error("{n} ACL bindings would pass the limit of {max} (acl_bindings_max)")]
    LimitReached { n: usize, max: usize },
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACL file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A refusal: who was not allowed to do what to which resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} is not authorized to {} {} {name:?}", operation.name(), resource_type.name())]
pub struct Denied {
    pub principal: Principal,
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub name: String,
}

/// The stored form of the bindings.
#[derive(Debug, Serialize, Deserialize)]
struct AclFile {
    version: u32,
    bindings: Vec<AclBinding>,
}

/// Decides requests against the bindings and keeps them on disk.
#[derive(Debug)]
pub struct Authorizer {
    config: AuthorizerConfig,
    /// The folder of `acls.json`; `None` for an authorizer that stores nothing.
    dir: Option<PathBuf>,
    /// The bindings in force, swapped whole after each stored change, so a check reads a
    /// consistent set without holding a lock.
    bindings: RwLock<Arc<BTreeSet<AclBinding>>>,
    /// Held while a change is computed and stored, so changes apply one at a time.
    changing: Mutex<()>,
}

impl Authorizer {
    /// The authorizer of a broker that authorizes nothing and stores no ACLs.
    pub fn disabled() -> Authorizer {
        Authorizer {
            config: AuthorizerConfig::default(),
            dir: None,
            bindings: RwLock::default(),
            changing: Mutex::new(()),
        }
    }

    /// Opens the bindings stored in `<data_dir>/security/acls.json` (none if the file does not
    /// exist). A file that cannot be read or parsed, or holds an invalid binding, is an error:
    /// starting with fewer ACLs than were stored could allow what a Deny refused.
    pub fn open(data_dir: &Path, config: AuthorizerConfig) -> Result<Authorizer, AclError> {
        let dir = data_dir.join("security");
        let path = dir.join(FILE_NAME);
        let bindings = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(AclError::Io {
                    operation: "read",
                    path,
                    source,
                })
            }
            Ok(bytes) => {
                let corrupt = |reason: String| AclError::Corrupt {
                    path: path.clone(),
                    reason,
                };
                let file: AclFile =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.version != FILE_VERSION {
                    return Err(corrupt(format!(
                        "version {} is not {FILE_VERSION}",
                        file.version
                    )));
                }
                let mut bindings = BTreeSet::new();
                for b in file.bindings {
                    let shown = b.to_string();
                    bindings.insert(
                        b.validated()
                            .map_err(|e| corrupt(format!("binding {shown}: {e}")))?,
                    );
                }
                bindings
            }
        };
        if bindings.len() > config.acl_bindings_max {
            tracing::warn!(
                n = bindings.len(),
                max = config.acl_bindings_max,
                "more ACL bindings are stored than acl_bindings_max allows; new ones are refused"
            );
        }
        Ok(Authorizer {
            config,
            dir: Some(dir),
            bindings: RwLock::new(Arc::new(bindings)),
            changing: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &AuthorizerConfig {
        &self.config
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn snapshot(&self) -> Arc<BTreeSet<AclBinding>> {
        self.bindings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `session` may do `operation` to the resource.
    pub fn authorize(
        &self,
        session: &Session,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if !self.config.enabled {
            return true;
        }
        let allowed = decide(
            &self.config,
            &self.snapshot(),
            &session.principal,
            session.peer.ip(),
            operation,
            resource_type,
            name,
        );
        if !allowed {
            tracing::debug!(principal = %session.principal, host = %session.peer.ip(), operation = operation.name(), resource_type = resource_type.name(), name, "denied");
        }
        allowed
    }

    /// [`Authorizer::authorize`] as a `Result`, with the refusal naming what was refused.
    pub fn check(
        &self,
        session: &Session,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), Denied> {
        if self.authorize(session, operation, resource_type, name) {
            Ok(())
        } else {
            Err(Denied {
                principal: session.principal.clone(),
                operation,
                resource_type,
                name: name.to_string(),
            })
        }
    }

    /// Whether `session` may do `operation` to the cluster.
    pub fn authorize_cluster(&self, session: &Session, operation: Operation) -> bool {
        self.authorize(session, operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Whether `session` may do `operation` to at least one resource of the type (Kafka's
    /// `authorizeByResourceType`, used for InitProducerId: Write on any topic is enough for
    /// an idempotent producer).
    pub fn authorize_any(
        &self,
        session: &Session,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if !self.config.enabled {
            return true;
        }
        decide_any(
            &self.config,
            &self.snapshot(),
            &session.principal,
            session.peer.ip(),
            operation,
            resource_type,
        )
    }

    /// The bindings `filter` matches, in a stable order.
    pub fn describe(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.snapshot()
            .iter()
            .filter(|b| filter.matches(b))
            .cloned()
            .collect()
    }

    /// Adds bindings (validated beforehand by the caller or here); those already stored are
    /// accepted as they are. All are stored together, or none is (the error says why).
    /// Blocking: it writes and fsyncs the file.
    pub fn create(&self, bindings: Vec<AclBinding>) -> Result<(), AclError> {
        let mut valid = Vec::with_capacity(bindings.len());
        for b in bindings {
            valid.push(b.validated()?);
        }
        self.change(|current| {
            let mut next = current.clone();
            next.extend(valid);
            if next.len() > self.config.acl_bindings_max && next.len() > current.len() {
                return Err(AclError::LimitReached {
                    n: next.len(),
                    max: self.config.acl_bindings_max,
                });
            }
            Ok((next, ()))
        })
    }

    /// Removes the bindings each filter matches and returns them, per filter (a binding two
    /// filters match is listed under both, as Kafka does). Blocking: it writes and fsyncs the
    /// file when anything was removed.
    pub fn delete(&self, filters: &[AclFilter]) -> Result<Vec<Vec<AclBinding>>, AclError> {
        self.change(|current| {
            let matched: Vec<Vec<AclBinding>> = filters
                .iter()
                .map(|f| current.iter().filter(|b| f.matches(b)).cloned().collect())
                .collect();
            let mut next = current.clone();
            for b in matched.iter().flatten() {
                next.remove(b);
            }
            Ok((next, matched))
        })
    }

    /// Computes the next set of bindings from the current one, stores it if it differs, and
    /// only then makes it the one in force.
    fn change<T>(
        &self,
        f: impl FnOnce(&BTreeSet<AclBinding>) -> Result<(BTreeSet<AclBinding>, T), AclError>,
    ) -> Result<T, AclError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let (next, out) = f(&current)?;
        if next == *current {
            return Ok(out);
        }
        if let Some(dir) = &self.dir {
            store(dir, &next)?;
        }
        *self.bindings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(out)
    }
}

/// Kafka's decision for one resource.
fn decide(
    config: &AuthorizerConfig,
    bindings: &BTreeSet<AclBinding>,
    principal: &Principal,
    host: IpAddr,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    if config.super_users.contains(principal) {
        return true;
    }
    let protected = resource_type == ResourceType::Topic && is_protected_topic(name);
    let on_resource = || {
        bindings
            .iter()
            .filter(move |b| b.pattern.matches(resource_type, name))
    };
    let applying = || on_resource().filter(|b| b.entry.applies_to(principal, host));
    let denied = applying().any(|b| {
        b.entry.permission == Permission::Deny
            && (b.entry.operation == operation || b.entry.operation == Operation::All)
    });
    if denied {
        return false;
    }
    let allowed = applying().any(|b| {
        b.entry.permission == Permission::Allow
            && operation.allowed_by().contains(&b.entry.operation)
            && !(protected && b.pattern.is_wildcard())
    });
    if allowed {
        return true;
    }
    config.allow_everyone_if_no_acl_found && !protected && on_resource().next().is_none()
}

/// Kafka's `authorizeByResourceType`: allowed when some Allow binding for the operation
/// applies to the principal and is not cancelled by a Deny covering everything it covers (a
/// Deny on `*`, on the same literal name, or on a prefix of its name).
fn decide_any(
    config: &AuthorizerConfig,
    bindings: &BTreeSet<AclBinding>,
    principal: &Principal,
    host: IpAddr,
    operation: Operation,
    resource_type: ResourceType,
) -> bool {
    if config.super_users.contains(principal) {
        return true;
    }
    let of_type = || {
        bindings
            .iter()
            .filter(move |b| b.pattern.resource_type == resource_type)
    };
    let applying = || of_type().filter(|b| b.entry.applies_to(principal, host));
    let denies: Vec<&ResourcePattern> = applying()
        .filter(|b| {
            b.entry.permission == Permission::Deny
                && (b.entry.operation == operation || b.entry.operation == Operation::All)
        })
        .map(|b| &b.pattern)
        .collect();
    if denies.iter().any(|d| d.is_wildcard()) {
        return false;
    }
    let cancelled = |allow: &ResourcePattern| {
        denies.iter().any(|d| match d.pattern_type {
            PatternType::Literal => {
                allow.pattern_type == PatternType::Literal && allow.name == d.name
            }
            PatternType::Prefixed => allow.name.starts_with(&d.name),
        })
    };
    let allowed = applying().any(|b| {
        b.entry.permission == Permission::Allow
            && operation.allowed_by().contains(&b.entry.operation)
            && !cancelled(&b.pattern)
    });
    allowed || (config.allow_everyone_if_no_acl_found && of_type().next().is_none())
}

/// Replaces `acls.json` so that a crash leaves the old or the new set, never a mix.
fn store(dir: &Path, bindings: &BTreeSet<AclBinding>) -> Result<(), AclError> {
    let io = |operation: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| AclError::Io {
            operation,
            path,
            source,
        }
    };
    let file = AclFile {
        version: FILE_VERSION,
        bindings: bindings.iter().cloned().collect(),
    };
    let content = serde_json::to_vec_pretty(&file).map_err(|e| AclError::Io {
        operation: "serialize",
        path: dir.join(FILE_NAME),
        source: e.into(),
    })?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io("create folder", dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    crate::log::replace_file(dir, FILE_NAME, &content, false).map_err(|e| match e {
        crate::log::LogError::Io { op, path, source } => AclError::Io {
            operation: op,
            path,
            source,
        },
        other => AclError::Io {
            operation: "replace",
            path: dir.join(FILE_NAME),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

fn sync_dir(dir: &Path) -> Result<(), AclError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AclError::Io {
            operation: "fsync folder",
            path: dir.to_path_buf(),
            source,
        })
}

/// Principals as `User:alice` in the file.
mod principal_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Principal;

    pub fn serialize<S: Serializer>(p: &Principal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Principal, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
