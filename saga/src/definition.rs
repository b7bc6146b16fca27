//! Saga definitions as users submit them (JSON), and their validation.
//!
//! A definition is an ordered list of steps. Each step has an action and, unless it comes after
//! the pivot, a compensation; each is an HTTP call or a command on a broker topic. Kinds follow
//! the saga literature: steps before the pivot are `compensatable` (they must be undoable), the
//! `pivot` is the point of no return, and steps after it are `retriable` (retried until they
//! succeed, never compensated). A definition without a pivot is all compensatable steps.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::template;

/// Longest step or saga timeout accepted.
pub const TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Most steps in one definition.
pub const STEPS_MAX: usize = 64;
/// Most attempts of one action or compensation.
pub const ATTEMPTS_MAX: u32 = 100;

/// Whether `topic` is internal: the orchestrator's own (`__saga_journal`, `__saga_snapshots`,
/// ...), a broker's (`__consumer_offsets`, `__transaction_state`) or any other `__`-prefixed
/// topic. A definition may not command, reply on, publish to or trigger from one: a record a
/// saga put there could be read back as a journal entry or group offset.
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with("__")
}

/// A field error for `topic` at `path` if it is internal.
fn check_topic(topic: &str, path: &str, err: &mut impl FnMut(String, String)) {
    if is_internal_topic(topic) {
        err(
            path.to_string(),
            format!(
                "{topic:?} is an internal topic (every \"__\"-prefixed topic is: the saga journal, \
                 snapshots and definitions, consumer offsets); sagas may not use it"
            ),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Undone by its compensation when a later step fails.
    Compensatable,
    /// The point of no return: once it succeeds, the saga only goes forward.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
}

/// Exponential backoff between attempts, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    /// Fraction of the delay drawn at random and taken off (0 to 1), so retries spread out.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry); `random_unit` in [0, 1).
    pub fn backoff_ms(&self, retry: u32, random_unit: f64) -> u64 {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let base = (self.initial_backoff_ms as f64 * self.multiplier.powi(exponent))
            .min(self.max_backoff_ms as f64);
        let jittered = base * (1.0 - self.jitter * random_unit.clamp(0.0, 1.0));
        jittered.max(0.0).round() as u64
    }
}

/// Who performs an action or a compensation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Participant {
    /// An HTTP call; URL, header values and every string in the body are templates. A 2xx
    /// answer is success (its JSON body, if any, is the step's output); anything else fails.
    Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        #[schema(value_type = Object)]
        body: Option<serde_json::Value>,
        /// A header whose value is a secret read when the call is sent (from an environment
        /// variable or a file of the orchestrator's), so it is never stored in
        /// `__saga_definitions` nor returned by the API: only where it comes from is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<SecretHeader>,
    },
    /// A command record on a broker topic; the participant answers on `reply_topic` with a
    /// record carrying the same `saga-attempt-id` header and a JSON value
    /// `{"ok": true, "output": ...}` or `{"ok": false, "error": "..."}`.
    Broker {
        topic: String,
        reply_topic: String,
        #[serde(default)]
        #[schema(value_type = Object)]
        body: Option<serde_json::Value>,
    },
}

fn default_method() -> String {
    "POST".into()
}

/// Headers whose values are credentials: a definition may not write them out (they would be
/// stored in `__saga_definitions` and returned by `GET /definitions`); a [`SecretHeader`]
/// names where the value comes from instead.
pub const SECRET_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];
/// Environment variables a [`SecretHeader`] may not name: Strand's own settings, which hold the
/// orchestrator's credentials (a definition could otherwise send them to any participant).
pub const RESERVED_ENV_PREFIX: &str = "STRAND_";
/// Longest environment variable name or file path a [`SecretHeader`] may name.
pub const SECRET_SOURCE_CHARS_MAX: usize = 4096;

/// Where an HTTP participant's secret header value comes from: exactly one of `env` (a
/// variable of the orchestrator's environment, not a `STRAND_*` one) or `file` (an absolute
/// path under the orchestrator's secrets folder, read at each call so a rotated secret is
/// picked up), e.g. `{"env": "PAYMENTS_TOKEN"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretHeader {
    /// The header to set. Default `Authorization`.
    #[serde(default = "default_secret_header")]
    pub header: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Put before the secret, e.g. `"Bearer "` when the secret is a bare token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

fn default_secret_header() -> String {
    "Authorization".into()
}

/// Where a definition writes out a credential header (see [`SECRET_HEADERS`]): the JSON path
/// of each, empty when there is none.
pub fn literal_secret_headers(spec: &DefinitionSpec) -> Vec<String> {
    let mut found = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let participants = [
            ("action", Some(&step.action)),
            ("compensation", step.compensation.as_ref()),
        ];
        for (field, participant) in participants {
            if let Some(Participant::Http { headers, .. }) = participant {
                for name in headers.keys() {
                    if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        found.push(format!("steps[{i}].{field}.headers.{name}"));
                    }
                }
            }
        }
    }
    found
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: StepKind,
    pub action: Participant,
    #[serde(default)]
    pub compensation: Option<Participant>,
    /// How long one attempt may take before it counts as timed out.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_kind() -> StepKind {
    StepKind::Compensatable
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Start one saga per record of a topic, as a member of a consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub topic: String,
    pub group: String,
    /// Field of the record's JSON value that is the saga's idempotency key; without it the
    /// key is `topic/partition/offset`.
    #[serde(default)]
    pub idempotency_field: Option<String>,
}

/// A definition as submitted with `PUT /definitions/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionSpec {
    #[serde(default)]
    pub description: Option<String>,
    pub steps: Vec<StepSpec>,
    /// The whole saga's time limit; past it, a saga that has not passed its pivot compensates.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub trigger: Option<TriggerSpec>,
    /// Topic every finished saga's outcome is published to.
    #[serde(default)]
    pub outcome_topic: Option<String>,
    /// A semantic lock: a template over `input` (`"{{ input.customer_id }}"`). Sagas whose lock
    /// renders to the same key run one at a time, in start order; a saga holds its lock from
    /// its first step until it ends (completed or compensated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
}

/// A stored definition version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Definition {
    pub name: String,
    pub version: u32,
    #[serde(flatten)]
    pub spec: DefinitionSpec,
}

/// What the API shows instead of a credential header's value.
pub const REDACTED: &str = "<redacted>";

impl Definition {
    /// The definition as the API shows it: the value of any credential header written out (in
    /// a version stored before such headers were refused) replaced by [`REDACTED`].
    pub fn redacted(mut self) -> Definition {
        for step in &mut self.spec.steps {
            for participant in std::iter::once(&mut step.action).chain(step.compensation.as_mut()) {
                if let Participant::Http { headers, .. } = participant {
                    for (name, value) in headers.iter_mut() {
                        if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                            *value = REDACTED.into();
                        }
                    }
                }
            }
        }
        self
    }

    /// Index of the pivot step, if any.
    pub fn pivot(&self) -> Option<usize> {
        self.spec
            .steps
            .iter()
            .position(|s| s.kind == StepKind::Pivot)
    }
}

/// One thing wrong with a definition: where (a JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

/// Checks a definition and returns every problem found, not just the first.
pub fn validate(spec: &DefinitionSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |path: String, reason: String| errors.push(FieldError { path, reason });
    if spec.steps.is_empty() {
        err("steps".into(), "at least one step is needed".into());
    }
    if spec.steps.len() > STEPS_MAX {
        err("steps".into(), format!("at most {STEPS_MAX} steps"));
    }
    if let Some(ms) = spec.deadline_ms {
        if ms == 0 || ms > TIMEOUT_MS_MAX {
            err(
                "deadline_ms".into(),
                format!("must be 1..={TIMEOUT_MS_MAX}"),
            );
        }
    }
    let pivots: Vec<usize> = spec
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == StepKind::Pivot)
        .map(|(i, _)| i)
        .collect();
    if pivots.len() > 1 {
        err(
            format!("steps[{}].kind", pivots[1]),
            "a definition has at most one pivot".into(),
        );
    }
    let pivot = pivots.first().copied();
    let mut names = BTreeSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = |field: &str| format!("steps[{i}].{field}");
        if step.name.is_empty()
            || !step
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            err(
                at("name"),
                "must be non-empty letters, digits, '_' or '-'".into(),
            );
        } else if !names.insert(step.name.as_str()) {
            err(
                at("name"),
                format!("{:?} is used by an earlier step", step.name),
            );
        }
        match (step.kind, pivot) {
            (StepKind::Compensatable, Some(p)) if i > p => {
                err(at("kind"), "steps after the pivot must be retriable".into())
            }
            (StepKind::Retriable, None) => err(
                at("kind"),
                "retriable steps come after a pivot; this definition has none".into(),
            ),
            (StepKind::Retriable, Some(p)) if i < p => err(
                at("kind"),
                "steps before the pivot must be compensatable".into(),
            ),
            _ => {}
        }
        match step.kind {
            StepKind::Compensatable if step.compensation.is_none() => err(
                at("compensation"),
                "a compensatable step needs a compensation".into(),
            ),
            StepKind::Retriable | StepKind::Pivot if step.compensation.is_some() => err(
                at("compensation"),
                "only compensatable steps have a compensation".into(),
            ),
            _ => {}
        }
        if step.timeout_ms == 0 || step.timeout_ms > TIMEOUT_MS_MAX {
            err(at("timeout_ms"), format!("must be 1..={TIMEOUT_MS_MAX}"));
        }
        let r = &step.retry;
        if r.max_attempts == 0 || r.max_attempts > ATTEMPTS_MAX {
            err(
                at("retry.max_attempts"),
                format!("must be 1..={ATTEMPTS_MAX}"),
            );
        }
        if r.initial_backoff_ms > r.max_backoff_ms || r.max_backoff_ms > TIMEOUT_MS_MAX {
            err(
                at("retry.max_backoff_ms"),
                format!("must be at least initial_backoff_ms and at most {TIMEOUT_MS_MAX}"),
            );
        }
        if !(r.multiplier.is_finite() && (1.0..=10.0).contains(&r.multiplier)) {
            err(at("retry.multiplier"), "must be 1 to 10".into());
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            err(at("retry.jitter"), "must be 0 to 1".into());
        }
        let earlier: Vec<&str> = spec.steps[..i].iter().map(|s| s.name.as_str()).collect();
        check_participant(&step.action, &at("action"), &earlier, &mut err);
        if let Some(c) = &step.compensation {
            // Not its own step's output: a compensation must run when the action timed out
            // and returned nothing. It names what it undoes by `action_key`.
            check_participant(c, &at("compensation"), &earlier, &mut err);
        }
    }
    if let Some(t) = &spec.trigger {
        if t.topic.is_empty() {
            err("trigger.topic".into(), "must not be empty".into());
        }
        check_topic(&t.topic, "trigger.topic", &mut err);
        if t.group.is_empty() {
            err("trigger.group".into(), "must not be empty".into());
        }
    }
    if let Some(lock) = &spec.lock {
        match template::references(lock) {
            Err(e) => err("lock".into(), format!("bad template: {e}")),
            Ok(refs) if refs.is_empty() => err(
                "lock".into(),
                "must use the input (\"{{ input.customer_id }}\"): a constant would serialize every saga".into(),
            ),
            Ok(refs) => {
                for r in refs.iter().filter(|r| !r.starts_with("input")) {
                    err("lock".into(), format!("{{{{{r}}}}}: a lock may only use input"));
                }
            }
        }
    }
    if spec.outcome_topic.as_deref() == Some("") {
        err("outcome_topic".into(), "must not be empty".into());
    }
    if let Some(topic) = &spec.outcome_topic {
        check_topic(topic, "outcome_topic", &mut err);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_secret_header(
    auth: &SecretHeader,
    headers: &BTreeMap<String, String>,
    path: &str,
    err: &mut impl FnMut(String, String),
) {
    let valid_name = !auth.header.is_empty()
        && auth.header.len() <= 256
        && auth
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        err(
            format!("{path}.header"),
            "must be a valid HTTP header name".into(),
        );
    } else if headers.keys().any(|k| k.eq_ignore_ascii_case(&auth.header)) {
        err(
            format!("{path}.header"),
            format!("{:?} is also in headers; give it once", auth.header),
        );
    }
    match (&auth.env, &auth.file) {
        (Some(_), Some(_)) | (None, None) => err(
            path.to_string(),
            "name exactly one of env (a variable) or file (an absolute path)".into(),
        ),
        (Some(var), None) => {
            if var.is_empty() || var.len() > SECRET_SOURCE_CHARS_MAX || var.contains(['=', '\0']) {
                err(
                    format!("{path}.env"),
                    "must be an environment variable name (no '=' or NUL)".into(),
                );
            } else if var.starts_with(RESERVED_ENV_PREFIX) {
                err(
                    format!("{path}.env"),
                    format!(
                        "{RESERVED_ENV_PREFIX}* variables are the orchestrator's own settings \
                         (broker and Kafka passwords among them) and cannot be sent to participants"
                    ),
                );
            }
        }
        (None, Some(file)) => {
            if !file.starts_with('/') || file.len() > SECRET_SOURCE_CHARS_MAX || file.contains('\0')
            {
                err(format!("{path}.file"), "must be an absolute path".into());
            }
        }
    }
    if let Some(prefix) = &auth.prefix {
        if prefix.len() > 256 || prefix.bytes().any(|b| b.is_ascii_control()) {
            err(
                format!("{path}.prefix"),
                "at most 256 characters, no control characters".into(),
            );
        }
    }
}

fn check_participant(
    p: &Participant,
    path: &str,
    visible_steps: &[&str],
    err: &mut impl FnMut(String, String),
) {
    let mut templates: Vec<(String, &str)> = Vec::new();
    let body = match p {
        Participant::Http {
            method,
            url,
            headers,
            body,
            auth,
        } => {
            if let Some(auth) = auth {
                check_secret_header(auth, headers, &format!("{path}.auth"), err);
            }
            if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                err(
                    format!("{path}.method"),
                    "must be GET, POST, PUT, PATCH or DELETE".into(),
                );
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                err(
                    format!("{path}.url"),
                    "must start with http:// or https://".into(),
                );
            }
            templates.push((format!("{path}.url"), url));
            for (k, v) in headers {
                templates.push((format!("{path}.headers.{k}"), v));
            }
            body
        }
        Participant::Broker {
            topic,
            reply_topic,
            body,
        } => {
            for (field, value) in [("topic", topic), ("reply_topic", reply_topic)] {
                if value.is_empty() {
                    err(format!("{path}.{field}"), "must not be empty".into());
                }
                check_topic(value, &format!("{path}.{field}"), err);
            }
            body
        }
    };
    if let Some(body) = body {
        template::strings(body, &format!("{path}.body"), &mut |at, s| {
            templates.push((at, s))
        });
    }
    for (at, source) in templates {
        if source.len() > template::TEMPLATE_BYTES_MAX {
            err(
                at,
                format!(
                    "{} bytes: a template is at most {} bytes",
                    source.len(),
                    template::TEMPLATE_BYTES_MAX
                ),
            );
            continue;
        }
        match template::references(source) {
            Err(e) => err(at, format!("bad template: {e}")),
            Ok(refs) => {
                for r in refs {
                    match r.split('.').collect::<Vec<_>>().as_slice() {
                        ["input", ..] | ["saga_id"] | ["action_key"] => {}
                        ["steps", name, rest @ ..] => {
                            if !visible_steps.contains(name) {
                                err(
                                    at.clone(),
                                    format!("{{{{{r}}}}} names step {name:?}, which does not run before this one (a compensation cannot use its own step's output, which a timed-out action never returned: name what it undoes by {{{{ action_key }}}}, the action's idempotency key)"),
                                );
                            } else if rest.first() != Some(&"output") {
                                err(at.clone(), format!("{{{{{r}}}}}: use steps.{name}.output"));
                            }
                        }
                        _ => err(
                            at.clone(),
                            format!("{{{{{r}}}}}: templates may use input, saga_id, action_key and steps.<name>.output"),
                        ),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn http(url: &str) -> serde_json::Value {
        json!({"type": "http", "url": url})
    }

    fn spec(steps: serde_json::Value) -> DefinitionSpec {
        serde_json::from_value(json!({ "steps": steps })).unwrap()
    }

    fn paths(spec: &DefinitionSpec) -> Vec<String> {
        validate(spec)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn a_valid_order_saga_passes() {
        let s = spec(json!([
            {"name": "order", "action": http("http://o/orders"), "compensation": http("http://o/cancel")},
            {"name": "charge", "action": {"type": "http", "url": "http://p/charge",
                "body": {"order": "{{ steps.order.output.id }}", "amount": "{{ input.amount }}"}},
             "compensation": {"type": "http", "url": "http://p/refund",
                "body": {"payment": "{{ action_key }}"}}},
            {"name": "ship", "kind": "pivot", "action": http("http://s/ship")},
            {"name": "notify", "kind": "retriable", "action": {"type": "broker", "topic": "mail", "reply_topic": "mail-replies"}}
        ]));
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn internal_topics_are_refused_wherever_a_topic_is_named() {
        let broker = |topic: &str, reply: &str| json!({"type": "broker", "topic": topic, "reply_topic": reply});
        let mut s = spec(json!([
            {"name": "a", "action": broker("__saga_journal", "ok"), "compensation": broker("ok", "__consumer_offsets")},
            {"name": "b", "action": broker("orders", "order-replies"), "compensation": broker("__x", "__saga_snapshots")}
        ]));
        s.outcome_topic = Some("__saga_journal".into());
        s.trigger = Some(TriggerSpec {
            topic: "__transaction_state".into(),
            group: "g".into(),
            idempotency_field: None,
        });
        let errors = validate(&s).unwrap_err();
        let at: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            at,
            vec![
                "steps[0].action.topic",
                "steps[0].compensation.reply_topic",
                "steps[1].compensation.topic",
                "steps[1].compensation.reply_topic",
                "trigger.topic",
                "outcome_topic",
            ]
        );
        assert!(errors[0].reason.contains("internal topic"), "{errors:?}");
        // One underscore is an ordinary name.
        s.steps.truncate(1);
        s.steps[0].action = serde_json::from_value(broker("_private", "replies")).unwrap();
        s.steps[0].compensation = Some(serde_json::from_value(broker("a", "b")).unwrap());
        s.outcome_topic = Some("_outcomes".into());
        s.trigger = None;
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn an_oversized_template_is_a_field_error() {
        let big = format!(
            "{{{{ input.x }}}}{}",
            "y".repeat(template::TEMPLATE_BYTES_MAX)
        );
        let s = spec(json!([
            {"name": "a", "action": {"type": "http", "url": "http://x/a", "body": {"note": big}},
             "compensation": http("http://x/b")}
        ]));
        assert_eq!(paths(&s), vec!["steps[0].action.body.note"]);
    }

    #[test]
    fn pivot_rules_are_enforced_with_paths() {
        // A compensatable step without compensation, a retriable one before the pivot, a pivot
        // with a compensation, a compensatable step after the pivot, a second pivot.
        let s = spec(json!([
            {"name": "a", "action": http("http://x/a")},
            {"name": "b", "kind": "retriable", "action": http("http://x/b")},
            {"name": "c", "kind": "pivot", "action": http("http://x/c"), "compensation": http("http://x/c")},
            {"name": "d", "action": http("http://x/d"), "compensation": http("http://x/d")},
            {"name": "e", "kind": "pivot", "action": http("http://x/e")}
        ]));
        assert_eq!(
            paths(&s),
            vec![
                "steps[4].kind",
                "steps[0].compensation",
                "steps[1].kind",
                "steps[2].compensation",
                "steps[3].kind",
            ]
        );
        let no_pivot =
            spec(json!([{"name": "a", "kind": "retriable", "action": http("http://x/a")}]));
        assert_eq!(paths(&no_pivot), vec!["steps[0].kind"]);
    }

    #[test]
    fn every_field_problem_is_reported() {
        let s = spec(json!([
            {"name": "a b", "action": {"type": "http", "method": "TRACE", "url": "ftp://x"},
             "compensation": http("http://x/c"), "timeout_ms": 0,
             "retry": {"max_attempts": 0, "initial_backoff_ms": 50, "max_backoff_ms": 10, "multiplier": 0.5, "jitter": 2.0}},
            {"name": "b", "action": {"type": "http", "url": "http://x/{{ steps.later.output.id }}"},
             "compensation": {"type": "broker", "topic": "", "reply_topic": "r", "body": {"x": "{{ oops }}"}}},
            {"name": "later", "action": http("http://x/{{ input.id"), "compensation": http("http://x")}
        ]));
        assert_eq!(
            paths(&s),
            vec![
                "steps[0].name",
                "steps[0].timeout_ms",
                "steps[0].retry.max_attempts",
                "steps[0].retry.max_backoff_ms",
                "steps[0].retry.multiplier",
                "steps[0].retry.jitter",
                "steps[0].action.method",
                "steps[0].action.url",
                "steps[1].action.url",
                "steps[1].compensation.topic",
                "steps[1].compensation.body.x",
                "steps[2].action.url",
            ]
        );
        assert_eq!(paths(&spec(json!([]))), vec!["steps"]);
    }

    #[test]
    fn secret_headers_are_references_checked_for_shape() {
        let with_auth = |auth: serde_json::Value, headers: serde_json::Value| {
            spec(json!([{"name": "a", "kind": "pivot",
                "action": {"type": "http", "url": "http://p/a", "headers": headers, "auth": auth}}]))
        };
        let ok = with_auth(
            json!({"env": "PAYMENTS_TOKEN", "prefix": "Bearer "}),
            json!({}),
        );
        assert_eq!(validate(&ok), Ok(()));
        assert_eq!(literal_secret_headers(&ok), Vec::<String>::new());
        let Participant::Http {
            auth: Some(auth), ..
        } = &ok.steps[0].action
        else {
            panic!()
        };
        assert_eq!(auth.header, "Authorization");
        assert_eq!(
            paths(&with_auth(json!({"env": "A", "file": "/b"}), json!({}))),
            vec!["steps[0].action.auth"]
        );
        assert_eq!(
            paths(&with_auth(
                json!({"env": "STRAND_SAGA_BROKER_PASSWORD"}),
                json!({})
            )),
            vec!["steps[0].action.auth.env"]
        );
        assert_eq!(
            paths(&with_auth(json!({}), json!({}))),
            vec!["steps[0].action.auth"]
        );
        assert_eq!(
            paths(&with_auth(
                json!({"file": "relative/path", "header": "bad header"}),
                json!({})
            )),
            vec!["steps[0].action.auth.header", "steps[0].action.auth.file"]
        );
        assert_eq!(
            paths(&with_auth(
                json!({"env": "A=B", "prefix": "x\r\n"}),
                json!({})
            )),
            vec!["steps[0].action.auth.env", "steps[0].action.auth.prefix"]
        );
        assert_eq!(
            paths(&with_auth(
                json!({"env": "T", "header": "X-Api-Key"}),
                json!({"x-api-key": "1"})
            )),
            vec!["steps[0].action.auth.header"]
        );
        assert!(
            serde_json::from_value::<SecretHeader>(json!({"env": "T", "value": "s3cret"})).is_err()
        );

        let literal = spec(json!([{"name": "a", "action": http("http://p/a"),
            "compensation": {"type": "http", "url": "http://p/u", "headers": {"AUTHORIZATION": "Bearer x"}}}]));
        assert_eq!(
            literal_secret_headers(&literal),
            vec!["steps[0].compensation.headers.AUTHORIZATION"]
        );
        // One stored before such headers were refused is shown without the value.
        let shown = Definition {
            name: "d".into(),
            version: 1,
            spec: literal,
        }
        .redacted();
        let text = serde_json::to_string(&shown).unwrap();
        assert!(
            !text.contains("Bearer x") && text.contains(REDACTED),
            "{text}"
        );
        assert_eq!(literal_secret_headers(&shown.spec).len(), 1, "still found");
    }

    #[test]
    fn backoff_grows_caps_and_jitters_down() {
        let r = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.5,
        };
        assert_eq!(r.backoff_ms(1, 0.0), 100);
        assert_eq!(r.backoff_ms(2, 0.0), 200);
        assert_eq!(r.backoff_ms(3, 0.0), 400);
        assert_eq!(r.backoff_ms(5, 0.0), 1_000);
        assert_eq!(r.backoff_ms(50, 0.0), 1_000);
        assert_eq!(r.backoff_ms(2, 1.0), 100);
        assert_eq!(r.backoff_ms(2, 0.5), 150);
    }

    proptest::proptest! {
        #[test]
        fn backoff_stays_within_its_bounds(
            initial in 1u64..5_000,
            extra in 0u64..60_000,
            multiplier in 1.0f64..10.0,
            jitter in 0.0f64..=1.0,
            retry in 1u32..200,
            unit in 0.0f64..1.0,
        ) {
            let r = RetryPolicy { max_attempts: 5, initial_backoff_ms: initial, max_backoff_ms: initial + extra, multiplier, jitter };
            let d = r.backoff_ms(retry, unit);
            proptest::prop_assert!(d <= initial + extra);
            let undelayed = r.backoff_ms(retry, 0.0);
            proptest::prop_assert!(d as f64 >= (undelayed as f64 * (1.0 - jitter)).floor() - 1.0);
        }
    }
}
