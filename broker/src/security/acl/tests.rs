use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::security::SecurityProtocol;

fn session(principal: &str, ip: &str) -> Session {
    let mut s = Session::new(
        SecurityProtocol::Plaintext,
        SocketAddr::new(ip.parse().unwrap(), 5000),
    );
    s.principal = principal.parse().unwrap();
    s
}

fn binding(
    permission: Permission,
    principal: &str,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
    pattern_type: PatternType,
) -> AclBinding {
    AclBinding {
        pattern: ResourcePattern {
            resource_type,
            name: name.into(),
            pattern_type,
        },
        entry: AclEntry {
            principal: principal.parse().unwrap(),
            host: "*".into(),
            operation,
            permission,
        },
    }
}

fn allow(principal: &str, op: Operation, t: ResourceType, name: &str) -> AclBinding {
    binding(
        Permission::Allow,
        principal,
        op,
        t,
        name,
        PatternType::Literal,
    )
}

fn deny(principal: &str, op: Operation, t: ResourceType, name: &str) -> AclBinding {
    binding(
        Permission::Deny,
        principal,
        op,
        t,
        name,
        PatternType::Literal,
    )
}

fn enabled() -> AuthorizerConfig {
    AuthorizerConfig {
        enabled: true,
        ..AuthorizerConfig::default()
    }
}

fn authorizer(config: AuthorizerConfig, bindings: Vec<AclBinding>) -> Authorizer {
    let a = Authorizer {
        config,
        ..Authorizer::disabled()
    };
    a.create(bindings).unwrap();
    a
}

const ALICE: &str = "User:alice";
use ResourceType::{Cluster, Group, Topic};

#[test]
fn disabled_allows_everything_and_enabled_denies_without_acls() {
    let alice = session(ALICE, "10.0.0.1");
    let off = Authorizer::disabled();
    assert!(off.authorize(&alice, Operation::Delete, Topic, "orders"));
    let on = authorizer(enabled(), vec![]);
    assert!(!on.authorize(&alice, Operation::Read, Topic, "orders"));
    assert!(!on.authorize_cluster(&alice, Operation::Create));
}

#[test]
fn literal_wildcard_and_prefixed_patterns_match_as_kafka() {
    let alice = session(ALICE, "10.0.0.1");
    let a = authorizer(
        enabled(),
        vec![
            allow(ALICE, Operation::Read, Topic, "orders"),
            allow(ALICE, Operation::Write, Topic, "*"),
            binding(
                Permission::Allow,
                ALICE,
                Operation::Delete,
                Topic,
                "tmp-",
                PatternType::Prefixed,
            ),
        ],
    );
    assert!(a.authorize(&alice, Operation::Read, Topic, "orders"));
    assert!(!a.authorize(&alice, Operation::Read, Topic, "orders2"));
    assert!(a.authorize(&alice, Operation::Write, Topic, "anything"));
    assert!(a.authorize(&alice, Operation::Delete, Topic, "tmp-1"));
    assert!(!a.authorize(&alice, Operation::Delete, Topic, "tm"));
    // The same names as another resource type are another resource.
    assert!(!a.authorize(&alice, Operation::Read, Group, "orders"));
    // A prefixed `*` is a prefix, not a wildcard.
    let b = authorizer(
        enabled(),
        vec![binding(
            Permission::Allow,
            ALICE,
            Operation::Read,
            Topic,
            "*",
            PatternType::Prefixed,
        )],
    );
    assert!(!b.authorize(&alice, Operation::Read, Topic, "orders"));
    assert!(b.authorize(&alice, Operation::Read, Topic, "*x"));
}

#[test]
fn deny_wins_over_any_allow() {
    let alice = session(ALICE, "10.0.0.1");
    let a = authorizer(
        enabled(),
        vec![
            allow(ALICE, Operation::All, Topic, "*"),
            allow("User:*", Operation::Read, Topic, "orders"),
            deny(ALICE, Operation::Read, Topic, "orders"),
        ],
    );
    assert!(!a.authorize(&alice, Operation::Read, Topic, "orders"));
    assert!(a.authorize(&alice, Operation::Write, Topic, "orders"));
    // A Deny of Read does not deny Describe, which Read would imply (as in Kafka).
    assert!(a.authorize(&alice, Operation::Describe, Topic, "orders"));
    let b = authorizer(
        enabled(),
        vec![
            allow(ALICE, Operation::Read, Topic, "orders"),
            deny("User:*", Operation::All, Topic, "*"),
        ],
    );
    assert!(!b.authorize(&alice, Operation::Read, Topic, "orders"));
}

#[test]
fn implied_operations() {
    let alice = session(ALICE, "10.0.0.1");
    for op in [
        Operation::Read,
        Operation::Write,
        Operation::Delete,
        Operation::Alter,
    ] {
        let a = authorizer(enabled(), vec![allow(ALICE, op, Topic, "t")]);
        assert!(
            a.authorize(&alice, Operation::Describe, Topic, "t"),
            "{op:?}"
        );
        assert!(
            !a.authorize(&alice, Operation::Create, Topic, "t"),
            "{op:?}"
        );
    }
    let a = authorizer(
        enabled(),
        vec![allow(ALICE, Operation::AlterConfigs, Topic, "t")],
    );
    assert!(a.authorize(&alice, Operation::DescribeConfigs, Topic, "t"));
    assert!(!a.authorize(&alice, Operation::Describe, Topic, "t"));
    let a = authorizer(
        enabled(),
        vec![allow(ALICE, Operation::Describe, Topic, "t")],
    );
    assert!(!a.authorize(&alice, Operation::Read, Topic, "t"));
    let a = authorizer(enabled(), vec![allow(ALICE, Operation::All, Topic, "t")]);
    for op in Operation::ALL {
        assert!(a.authorize(&alice, op, Topic, "t"), "{op:?}");
    }
}

#[test]
fn principals_and_hosts_match_exactly_or_by_wildcard() {
    let mut from_host = allow(ALICE, Operation::Read, Topic, "t");
    from_host.entry.host = "10.0.0.1".into();
    let a = authorizer(
        enabled(),
        vec![from_host, allow("User:*", Operation::Write, Topic, "t")],
    );
    assert!(a.authorize(&session(ALICE, "10.0.0.1"), Operation::Read, Topic, "t"));
    assert!(!a.authorize(&session(ALICE, "10.0.0.2"), Operation::Read, Topic, "t"));
    assert!(!a.authorize(
        &session("User:bob", "10.0.0.1"),
        Operation::Read,
        Topic,
        "t"
    ));
    assert!(a.authorize(
        &session("User:bob", "10.0.0.9"),
        Operation::Write,
        Topic,
        "t"
    ));
    // An IPv4 peer reached over an IPv6 socket is the same host.
    assert!(a.authorize(
        &session(ALICE, "::ffff:10.0.0.1"),
        Operation::Read,
        Topic,
        "t"
    ));
    // `User:*` is not `Group:*`.
    assert!(!a.authorize(
        &session("Group:x", "10.0.0.9"),
        Operation::Write,
        Topic,
        "t"
    ));
}

#[test]
fn super_users_and_allow_everyone_if_no_acl_found() {
    let config = AuthorizerConfig {
        super_users: vec![Principal::user("admin")],
        allow_everyone_if_no_acl_found: true,
        ..enabled()
    };
    let a = authorizer(
        config,
        vec![deny("User:*", Operation::All, Topic, "secret")],
    );
    let admin = session("User:admin", "10.0.0.1");
    let bob = session("User:bob", "10.0.0.1");
    assert!(a.authorize(&admin, Operation::Read, Topic, "secret"));
    assert!(!a.authorize(&bob, Operation::Read, Topic, "secret"));
    // No binding applies to this topic: allowed for everyone.
    assert!(a.authorize(&bob, Operation::Read, Topic, "public"));
    // A binding for someone else applies to the resource: no longer "no ACL found".
    let b = authorizer(
        AuthorizerConfig {
            allow_everyone_if_no_acl_found: true,
            ..enabled()
        },
        vec![allow(ALICE, Operation::Read, Topic, "t")],
    );
    assert!(!b.authorize(&bob, Operation::Read, Topic, "t"));
}

#[test]
fn internal_topics_need_explicit_rights() {
    let alice = session(ALICE, "10.0.0.1");
    let config = AuthorizerConfig {
        allow_everyone_if_no_acl_found: true,
        ..enabled()
    };
    let a = authorizer(config, vec![allow(ALICE, Operation::All, Topic, "*")]);
    assert!(a.authorize(&alice, Operation::Read, Topic, "orders"));
    assert!(!a.authorize(&alice, Operation::Read, Topic, "__consumer_offsets"));
    assert!(!a.authorize(&alice, Operation::Read, Topic, "__saga_journal"));
    assert!(!a.authorize(
        &session("User:bob", "10.0.0.1"),
        Operation::Read,
        Topic,
        "__saga_x"
    ));
    a.create(vec![binding(
        Permission::Allow,
        ALICE,
        Operation::Read,
        Topic,
        "__saga_",
        PatternType::Prefixed,
    )])
    .unwrap();
    assert!(a.authorize(&alice, Operation::Read, Topic, "__saga_journal"));
    assert!(!a.authorize(&alice, Operation::Write, Topic, "__saga_journal"));
}

#[test]
fn authorize_any_follows_kafka_by_resource_type() {
    let alice = session(ALICE, "10.0.0.1");
    let a = authorizer(
        enabled(),
        vec![allow(ALICE, Operation::Write, Topic, "orders")],
    );
    assert!(a.authorize_any(&alice, Operation::Write, Topic));
    assert!(!a.authorize_any(&alice, Operation::Write, Group));
    a.create(vec![deny(ALICE, Operation::Write, Topic, "orders")])
        .unwrap();
    assert!(!a.authorize_any(&alice, Operation::Write, Topic));
    let b = authorizer(
        enabled(),
        vec![
            binding(
                Permission::Allow,
                ALICE,
                Operation::Write,
                Topic,
                "orders-eu",
                PatternType::Literal,
            ),
            binding(
                Permission::Deny,
                ALICE,
                Operation::Write,
                Topic,
                "orders-",
                PatternType::Prefixed,
            ),
        ],
    );
    assert!(!b.authorize_any(&alice, Operation::Write, Topic));
}

#[test]
fn invalid_bindings_are_refused_and_change_nothing() {
    let a = authorizer(enabled(), vec![]);
    let mut bad_host = allow(ALICE, Operation::Read, Topic, "t");
    bad_host.entry.host = "example.com".into();
    let cases = vec![
        allow(ALICE, Operation::Read, Topic, ""),
        allow(ALICE, Operation::Read, Cluster, "my-cluster"),
        allow(
            ALICE,
            Operation::Read,
            Topic,
            &"x".repeat(RESOURCE_NAME_BYTES_MAX + 1),
        ),
        bad_host,
    ];
    for bad in cases {
        let shown = bad.to_string();
        let e = a
            .create(vec![allow(ALICE, Operation::Read, Topic, "ok"), bad])
            .unwrap_err();
        assert!(matches!(e, AclError::Invalid(_)), "{shown}: {e}");
        assert!(a.describe(&AclFilter::any()).is_empty(), "{shown}");
    }
    let mut v6 = allow(ALICE, Operation::Read, Topic, "t");
    v6.entry.host = "0:0::1".into();
    a.create(vec![v6]).unwrap();
    assert_eq!(a.describe(&AclFilter::any())[0].entry.host, "::1");
}

#[test]
fn the_binding_limit_refuses_and_changes_nothing() {
    let a = authorizer(
        AuthorizerConfig {
            acl_bindings_max: 2,
            ..enabled()
        },
        vec![allow(ALICE, Operation::Read, Topic, "a")],
    );
    let e = a
        .create(vec![
            allow(ALICE, Operation::Read, Topic, "b"),
            allow(ALICE, Operation::Read, Topic, "c"),
        ])
        .unwrap_err();
    assert!(matches!(e, AclError::LimitReached { n: 3, max: 2 }), "{e}");
    assert_eq!(a.describe(&AclFilter::any()).len(), 1);
    // Re-adding what exists is fine at the limit.
    a.create(vec![allow(ALICE, Operation::Read, Topic, "b")])
        .unwrap();
    a.create(vec![allow(ALICE, Operation::Read, Topic, "b")])
        .unwrap();
    assert_eq!(a.describe(&AclFilter::any()).len(), 2);
}

#[test]
fn filters_select_as_kafka() {
    let a = authorizer(
        enabled(),
        vec![
            allow(ALICE, Operation::Read, Topic, "orders"),
            allow(ALICE, Operation::Read, Topic, "*"),
            binding(
                Permission::Allow,
                ALICE,
                Operation::Read,
                Topic,
                "ord",
                PatternType::Prefixed,
            ),
            deny("User:bob", Operation::Write, Topic, "orders"),
            allow(ALICE, Operation::Read, Group, "orders"),
        ],
    );
    let filter = |name: &str, pattern| AclFilter {
        resource_type: Some(Topic),
        name: Some(name.into()),
        pattern,
        ..AclFilter::any()
    };
    assert_eq!(
        a.describe(&filter("orders", PatternFilter::Literal)).len(),
        2
    );
    assert_eq!(a.describe(&filter("orders", PatternFilter::Any)).len(), 2);
    assert_eq!(a.describe(&filter("orders", PatternFilter::Match)).len(), 4);
    assert_eq!(a.describe(&filter("ord", PatternFilter::Prefixed)).len(), 1);
    assert_eq!(a.describe(&AclFilter::any()).len(), 5);
    let bob = AclFilter {
        principal: Some(Principal::user("bob")),
        ..AclFilter::any()
    };
    let removed = a.delete(&[bob.clone(), bob]).unwrap();
    assert_eq!(removed[0].len(), 1);
    assert_eq!(
        removed[1].len(),
        1,
        "listed under each filter that matched it"
    );
    assert_eq!(a.describe(&AclFilter::any()).len(), 4);
}

#[test]
fn bindings_survive_reopening_and_a_corrupt_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authorizer::open(dir.path(), enabled()).unwrap();
    a.create(vec![
        allow(ALICE, Operation::Read, Topic, "orders"),
        deny("User:*", Operation::All, Group, "g"),
    ])
    .unwrap();
    let reopened = Authorizer::open(dir.path(), enabled()).unwrap();
    assert_eq!(reopened.describe(&AclFilter::any()).len(), 2);
    assert!(reopened.authorize(&session(ALICE, "1.2.3.4"), Operation::Read, Topic, "orders"));
    let path = dir.path().join("security/acls.json");
    assert!(!dir.path().join("security/acls.json.tmp").exists());
    std::fs::write(&path, b"{\"version\":1,\"bindings\":[").unwrap();
    let e = Authorizer::open(dir.path(), enabled()).unwrap_err();
    assert!(matches!(e, AclError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("acls.json"), "{e}");
    std::fs::write(
        &path,
        br#"{"version":1,"bindings":[{"pattern":{"resource_type":"Cluster","name":"x","pattern_type":"Literal"},"entry":{"principal":"User:a","host":"*","operation":"All","permission":"Allow"}}]}"#,
    )
    .unwrap();
    let e = Authorizer::open(dir.path(), enabled()).unwrap_err();
    assert!(e.to_string().contains("kafka-cluster"), "{e}");
}

#[test]
fn a_change_that_cannot_be_stored_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authorizer::open(dir.path(), enabled()).unwrap();
    a.create(vec![allow(ALICE, Operation::Read, Topic, "orders")])
        .unwrap();
    // The temporary file's name taken by a folder: the write fails.
    std::fs::create_dir(dir.path().join("security/acls.json.tmp")).unwrap();
    assert!(a
        .create(vec![allow(ALICE, Operation::Write, Topic, "orders")])
        .is_err());
    assert!(a.delete(&[AclFilter::any()]).is_err());
    assert_eq!(a.describe(&AclFilter::any()).len(), 1);
    let alice = session(ALICE, "1.2.3.4");
    assert!(!a.authorize(&alice, Operation::Write, Topic, "orders"));
}

#[test]
fn operations_parse_by_kafka_names() {
    assert_eq!("read".parse::<Operation>(), Ok(Operation::Read));
    assert_eq!(
        "DESCRIBE_CONFIGS".parse::<Operation>(),
        Ok(Operation::DescribeConfigs)
    );
    assert_eq!(
        "IdempotentWrite".parse::<Operation>(),
        Ok(Operation::IdempotentWrite)
    );
    assert!("frobnicate".parse::<Operation>().is_err());
    for op in Operation::ALL {
        assert_eq!(Operation::from_code(op.code()), Some(op));
    }
}

fn arb_binding() -> impl Strategy<Value = AclBinding> {
    (
        prop::sample::select(vec![Permission::Allow, Permission::Deny]),
        prop::sample::select(vec!["User:alice", "User:bob", "User:*"]),
        prop::sample::select(Operation::ALL.to_vec()),
        prop::sample::select(vec![Topic, Group]),
        prop::sample::select(vec!["orders", "ord", "o", "*", "payments", "__saga_"]),
        prop::sample::select(vec![PatternType::Literal, PatternType::Prefixed]),
    )
        .prop_map(|(perm, who, op, t, name, pattern)| binding(perm, who, op, t, name, pattern))
}

fn arb_request() -> impl Strategy<Value = (&'static str, Operation, ResourceType, &'static str)> {
    (
        prop::sample::select(vec!["User:alice", "User:bob", "User:carol"]),
        prop::sample::select(Operation::ALL.to_vec()),
        prop::sample::select(vec![Topic, Group]),
        prop::sample::select(vec!["orders", "ord", "payments", "x", "__saga_journal"]),
    )
}

proptest! {
    /// Adding a Deny that applies to the request always refuses it; adding an Allow never
    /// turns an allowed request into a refused one; a Deny never turns a refused one into an
    /// allowed one (with allow_everyone_if_no_acl_found off).
    #[test]
    fn deny_wins_and_decisions_are_monotonic(
        bindings in prop::collection::vec(arb_binding(), 0..12),
        extra in arb_binding(),
        (who, op, t, name) in arb_request(),
    ) {
        let s = session(who, "10.1.1.1");
        let before = authorizer(enabled(), bindings.clone());
        let was = before.authorize(&s, op, t, name);
        let after = authorizer(enabled(), bindings.iter().cloned().chain([extra.clone()]).collect());
        let is = after.authorize(&s, op, t, name);
        let applies = extra.pattern.matches(t, name) && extra.entry.applies_to(&s.principal, s.peer.ip());
        match extra.entry.permission {
            Permission::Allow => prop_assert!(!was || is),
            Permission::Deny => {
                prop_assert!(was || !is);
                if applies && (extra.entry.operation == op || extra.entry.operation == Operation::All) {
                    prop_assert!(!is);
                }
            }
        }
        // A super user is allowed whatever the bindings say.
        let su = authorizer(
            AuthorizerConfig { super_users: vec![s.principal.clone()], ..enabled() },
            bindings,
        );
        prop_assert!(su.authorize(&s, op, t, name));
    }

    /// An Allow naming exactly the request allows it unless a Deny applies (or the topic is
    /// internal and the Allow is the `*` literal).
    #[test]
    fn an_exact_allow_allows_unless_denied(
        bindings in prop::collection::vec(arb_binding(), 0..12),
        (who, op, t, name) in arb_request(),
    ) {
        let s = session(who, "10.1.1.1");
        let a = authorizer(enabled(), bindings.iter().cloned().chain([allow(who, op, t, name)]).collect());
        let denied = bindings.iter().any(|b| {
            b.entry.permission == Permission::Deny
                && b.pattern.matches(t, name)
                && b.entry.applies_to(&s.principal, s.peer.ip())
                && (b.entry.operation == op || b.entry.operation == Operation::All)
        });
        prop_assert_eq!(a.authorize(&s, op, t, name), !denied);
    }
}
