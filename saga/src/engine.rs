//! One saga instance as a pure, event-sourced state machine.
//!
//! [`Saga::decide`] looks at the state and an [`Input`] (a reply, time passing, an operator's
//! abort or retry) and returns the [`Event`]s that follow, without changing anything;
//! [`Saga::apply`] changes the state by one event. The driver journals the events durably
//! *before* it acts on them (calls the participant a `Dispatched` event announces, publishes
//! the outcome of a terminal one), and replaying a saga's journal through `apply` rebuilds
//! exactly the state it had. Time and randomness are passed in; nothing here does IO.
//!
//! Rules:
//! - Steps run in order. A failed or timed-out attempt is retried with the step's backoff until
//!   its attempts are spent; a failure the participant calls permanent is not retried.
//! - When a step before the pivot (or the pivot) finally fails, the saga compensates: every step
//!   whose action succeeded or *may* have happened (timed out, or in flight when the saga was
//!   aborted or passed its deadline) is compensated, last first. A step whose last attempt
//!   failed with an answer did not happen and is not compensated.
//! - A compensation is retried the same way; when its attempts are spent the saga is `failed`:
//!   held, visible, and resumed by an operator's retry, which grants a fresh budget.
//! - After the pivot succeeded the saga only goes forward: abort and the deadline no longer
//!   apply, and a retriable step that spends its attempts holds the saga in `failed` as well.
//! - A reply counts only for the attempt in flight; replies of superseded attempts are ignored.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::definition::{Definition, Participant};
use crate::template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Action,
    Compensation,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    /// A compensation (or a step past the pivot) spent its attempts: held for an operator.
    Failed,
}

impl SagaState {
    /// Completed and compensated sagas never change again.
    pub fn is_finished(self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Compensated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for SagaState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => SagaState::Running,
            "compensating" => SagaState::Compensating,
            "completed" => SagaState::Completed,
            "compensated" => SagaState::Compensated,
            "failed" => SagaState::Failed,
            other => return Err(format!("unknown saga state {other:?}")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    /// The action is in flight.
    Dispatched,
    Succeeded,
    /// The last action attempt was answered with an error (a retry may be scheduled).
    Failed,
    /// The last action attempt got no answer in time: it may have happened.
    TimedOut,
    /// The compensation is in flight or waiting for its retry.
    Compensating,
    Compensated,
    /// The compensation spent its attempts.
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub phase: Phase,
    pub attempt: u32,
    pub attempt_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// succeeded, failed, timed_out or abandoned (superseded by compensation or a restart).
    pub outcome: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    pub attempts: Vec<Attempt>,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<String>,
    /// When the next attempt is due, while one is scheduled.
    pub retry_at_ms: Option<i64>,
    /// When the attempt in flight times out.
    pub timeout_at_ms: Option<i64>,
    /// Attempts made in the current phase since the budget was last granted.
    pub budget_used: u32,
    /// Whether an action attempt may have happened without saying so (it timed out, or was in
    /// flight when it was abandoned): such a step is compensated even if a later attempt was
    /// answered with a failure or never sent.
    #[serde(default)]
    pub may_have_happened: bool,
}

/// One journal record: what happened to which saga, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    pub saga_id: String,
    pub at_ms: i64,
    /// The owner epoch of the instance that wrote it (see `recovery`): an entry counts only
    /// when it is the epoch of the last owner marker before it in its journal partition.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// A transition of a saga, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started {
        definition: String,
        version: u32,
        #[schema(value_type = Object)]
        input: Value,
        idempotency_key: Option<String>,
        deadline_at_ms: Option<i64>,
        /// The semantic lock key the saga runs under, rendered from its input.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock: Option<String>,
    },
    Dispatched {
        step: usize,
        phase: Phase,
        attempt: u32,
        timeout_at_ms: i64,
    },
    Succeeded {
        step: usize,
        phase: Phase,
        attempt: u32,
        #[schema(value_type = Object)]
        output: Value,
    },
    Failed {
        step: usize,
        phase: Phase,
        attempt: u32,
        error: String,
        retry_at_ms: Option<i64>,
        /// A compensation's attempt that was never sent (an open breaker refused it): it gives
        /// its attempt back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refunded: bool,
    },
    TimedOut {
        step: usize,
        phase: Phase,
        attempt: u32,
        retry_at_ms: Option<i64>,
    },
    CompensationStarted {
        reason: String,
    },
    Completed,
    Compensated,
    /// Attempts spent: the saga is held in `failed` for an operator.
    Stuck {
        step: usize,
        phase: Phase,
        error: String,
    },
    /// An operator's retry: a fresh budget for the stuck step.
    Resumed,
    /// The outcome of a finished saga was published to the definition's outcome topic.
    OutcomePublished,
    /// The saga holds its semantic lock from here until it ends.
    Acquired,
    /// Not a saga's: an instance took its journal partition over with the entry's epoch
    /// (`saga_id` is empty). Entries of older epochs after it are a stale owner's.
    Owner {
        instance: String,
    },
}

impl Event {
    /// Whether this event ends the saga for good (its outcome is published).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Completed | Event::Compensated)
    }
}

/// A participant's refusal: what went wrong, and whether trying again may help (a 4xx answer
/// such as "out of stock" will not; a 503 or a lost connection may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub retriable: bool,
    /// The earliest the participant may be tried again (an open circuit breaker says when it
    /// lets a trial call through); the retry waits at least this long.
    pub retry_after_ms: u64,
    /// Never sent: an open circuit breaker refused the call. A compensation's refused attempt
    /// is given back, so a breaker that other calls keep open cannot spend a compensation's
    /// budget without it ever reaching its participant; the trial calls that do go through
    /// still count, so one that keeps failing is still held in `failed` for an operator.
    pub refused: bool,
}

impl Failure {
    pub fn retriable(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retriable: true,
            retry_after_ms: 0,
            refused: false,
        }
    }

    pub fn permanent(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retriable: false,
            retry_after_ms: 0,
            refused: false,
        }
    }

    /// An open breaker's refusal: nothing was sent, and a trial call may go at `retry_after_ms`.
    pub fn refused(error: impl Into<String>, retry_after_ms: u64) -> Failure {
        Failure {
            error: error.into(),
            retriable: true,
            retry_after_ms,
            refused: true,
        }
    }
}

/// What drives a saga forward.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Dispatch the first step (right after `Started`).
    Start,
    /// A participant answered an attempt.
    Reply {
        step: usize,
        phase: Phase,
        attempt: u32,
        result: Result<Value, Failure>,
    },
    /// Time passed: timeouts, due retries, the deadline.
    Tick,
    /// An operator asks to compensate now.
    Abort,
    /// An operator resumes a `failed` saga.
    Retry,
    /// After a restart: send every attempt that was in flight again, as a new attempt.
    Redispatch,
    /// The saga's semantic lock is its now: run.
    Acquire,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("saga {id} is {state}: {reason}")]
    Conflict {
        id: String,
        state: &'static str,
        reason: &'static str,
    },
}

/// A call to make: the participant with every template rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub saga_id: String,
    /// The W3C `traceparent` sent with the call (the attempt's span), set by the orchestrator.
    pub traceparent: Option<String>,
    pub step: usize,
    pub step_name: String,
    pub phase: Phase,
    pub attempt: u32,
    /// The same for every attempt of this step's action (or compensation).
    pub idempotency_key: String,
    /// Unique per attempt: replies carry it back.
    pub attempt_id: String,
    pub timeout_at_ms: i64,
    /// The participant with templates rendered, or why they could not be.
    pub participant: Result<Participant, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Saga {
    pub id: String,
    pub definition: String,
    pub version: u32,
    #[schema(value_type = Object)]
    pub input: Value,
    pub idempotency_key: Option<String>,
    /// The semantic lock key it runs under, if its definition names one.
    #[serde(default)]
    pub lock: Option<String>,
    /// Whether it holds its lock (a saga under a lock waits until it does).
    #[serde(default)]
    pub holds_lock: bool,
    pub state: SagaState,
    pub steps: Vec<StepRecord>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub deadline_at_ms: Option<i64>,
    /// Why compensation started, when it did.
    pub compensation_reason: Option<String>,
    /// What holds a `failed` saga.
    pub error: Option<String>,
    /// Whether the outcome of a finished saga reached its outcome topic.
    #[serde(default)]
    pub outcome_published: bool,
    /// The latest transitions (at most [`HISTORY_KEPT`]), oldest first.
    pub history: Vec<Entry>,
    /// Older transitions left out of `history` (they stay in the journal).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub history_dropped: u64,
    #[serde(skip)]
    #[schema(ignore)]
    def: Option<Arc<Definition>>,
}

impl PartialEq for Saga {
    fn eq(&self, other: &Saga) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// Transitions a saga keeps in `history`.
pub const HISTORY_KEPT: usize = 1_000;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn idempotency_key(saga_id: &str, step_name: &str, phase: Phase) -> String {
    format!("{saga_id}:{step_name}:{}", phase.as_str())
}

pub fn attempt_id(saga_id: &str, step_name: &str, phase: Phase, attempt: u32) -> String {
    format!("{saga_id}:{step_name}:{}:{attempt}", phase.as_str())
}

impl Saga {
    /// A saga before its first event; `Started` fills it in.
    pub fn new(id: String, definition: Arc<Definition>) -> Saga {
        Saga {
            id,
            definition: definition.name.clone(),
            version: definition.version,
            input: Value::Null,
            idempotency_key: None,
            lock: None,
            holds_lock: false,
            state: SagaState::Running,
            steps: Vec::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            deadline_at_ms: None,
            compensation_reason: None,
            error: None,
            outcome_published: false,
            history: Vec::new(),
            history_dropped: 0,
            def: Some(definition),
        }
    }

    /// The events that start a saga: `Started`, then the first dispatch unless the saga must
    /// `wait` for its lock (an `Input::Start` dispatches it once the lock is its).
    pub fn start(
        id: String,
        definition: Arc<Definition>,
        input: Value,
        idempotency_key: Option<String>,
        lock: Option<String>,
        wait: bool,
        now_ms: i64,
    ) -> (Saga, Vec<Entry>) {
        let mut saga = Saga::new(id, definition.clone());
        let started = Event::Started {
            definition: definition.name.clone(),
            version: definition.version,
            input,
            idempotency_key,
            deadline_at_ms: definition.spec.deadline_ms.map(|d| now_ms + d as i64),
            lock,
        };
        let mut entries = vec![saga.entry(started, now_ms)];
        saga.apply(&entries[0]);
        if !wait {
            let go = if saga.lock.is_some() {
                Input::Acquire
            } else {
                Input::Start
            };
            entries.extend(saga.handle(go, now_ms, 0.0).expect("start"));
        }
        (saga, entries)
    }

    /// Rebuilds a saga from its journal.
    pub fn replay<'a>(
        id: String,
        definition: Arc<Definition>,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Saga {
        let mut saga = Saga::new(id, definition);
        for e in entries {
            saga.apply(e);
        }
        saga
    }

    pub fn definition(&self) -> &Definition {
        self.def.as_ref().expect("definition attached")
    }

    /// Attaches the definition after deserializing a snapshot.
    pub fn attach(&mut self, definition: Arc<Definition>) {
        self.def = Some(definition);
    }

    fn entry(&self, event: Event, now_ms: i64) -> Entry {
        Entry {
            saga_id: self.id.clone(),
            at_ms: now_ms,
            epoch: 0,
            event,
        }
    }

    /// `decide`, then `apply` each event; returns the events to journal.
    pub fn handle(
        &mut self,
        input: Input,
        now_ms: i64,
        random_unit: f64,
    ) -> Result<Vec<Entry>, EngineError> {
        let mut out = Vec::new();
        // Decisions are made one event at a time against the state as it becomes, so a
        // decision never has to predict the effect of the ones before it.
        let mut next = Some(input);
        while let Some(input) = next.take() {
            for event in self.decide(input, now_ms, random_unit)? {
                let entry = self.entry(event, now_ms);
                self.apply(&entry);
                out.push(entry);
            }
            // After a step finished or compensation began, move on.
            if let Some(last) = out.last() {
                if self.needs_advance(&last.event) {
                    next = Some(Input::Tick);
                }
            }
        }
        Ok(out)
    }

    fn needs_advance(&self, event: &Event) -> bool {
        !self.state.is_finished()
            && self.in_flight().is_none()
            && matches!(
                event,
                Event::Succeeded { .. }
                    | Event::CompensationStarted { .. }
                    | Event::Failed {
                        retry_at_ms: None,
                        ..
                    }
                    | Event::TimedOut {
                        retry_at_ms: None,
                        ..
                    }
                    | Event::Resumed
                    | Event::Acquired
            )
    }

    /// The step and phase with an attempt in flight, if any.
    pub fn in_flight(&self) -> Option<(usize, Phase, u32)> {
        self.steps.iter().enumerate().find_map(|(i, s)| {
            let a = s.attempts.last()?;
            (a.outcome.is_none()).then_some((i, a.phase, a.attempt))
        })
    }

    fn pivot_passed(&self) -> bool {
        self.definition()
            .pivot()
            .is_some_and(|p| self.steps.get(p).map(|s| s.state) == Some(StepState::Succeeded))
    }

    /// Whether the pivot may have happened without the saga knowing: it is in flight, or an
    /// attempt of it timed out or was abandoned and no later one succeeded. Such a saga cannot
    /// compensate (the pivot cannot be undone) and waits for the pivot's outcome instead.
    pub fn pivot_uncertain(&self) -> bool {
        self.definition().pivot().is_some_and(|p| {
            self.steps.get(p).is_some_and(|s| {
                s.state != StepState::Succeeded
                    && (s.may_have_happened
                        || s.state == StepState::Dispatched
                        || s.state == StepState::TimedOut)
            })
        })
    }

    /// Whether the saga waits for its semantic lock (it has not started a step).
    pub fn waiting_for_lock(&self) -> bool {
        self.lock.is_some() && !self.holds_lock && self.state == SagaState::Running
    }

    /// Whether the deadline applies now: before the pivot, and only while its outcome is known.
    fn deadline_applies(&self) -> bool {
        self.state == SagaState::Running && !self.pivot_passed() && !self.pivot_uncertain()
    }

    /// The next step to compensate: the last one whose action may have happened.
    fn next_compensation(&self) -> Option<usize> {
        let def = self.definition();
        (0..self.steps.len()).rev().find(|&i| {
            def.spec.steps[i].compensation.is_some()
                && match self.steps[i].state {
                    StepState::Succeeded | StepState::TimedOut | StepState::Dispatched => true,
                    StepState::Failed => self.steps[i].may_have_happened,
                    _ => false,
                }
        })
    }

    fn dispatch(&self, step: usize, phase: Phase, now_ms: i64) -> Event {
        let attempt = self.steps[step].attempts.len() as u32 + 1;
        Event::Dispatched {
            step,
            phase,
            attempt,
            timeout_at_ms: now_ms + self.definition().spec.steps[step].timeout_ms as i64,
        }
    }

    /// When a failed attempt of `step` may be retried, or `None` when its attempts are spent.
    fn retry_at(&self, step: usize, now_ms: i64, random_unit: f64) -> Option<i64> {
        let policy = &self.definition().spec.steps[step].retry;
        let used = self.steps[step].budget_used;
        (used < policy.max_attempts).then(|| now_ms + policy.backoff_ms(used, random_unit) as i64)
    }

    /// What follows once `step`'s `phase` spent its attempts; `timed_out` when the last
    /// attempt got no answer.
    fn exhausted(&self, step: usize, phase: Phase, error: String, timed_out: bool) -> Vec<Event> {
        let pivot_maybe = self.definition().pivot() == Some(step)
            && (timed_out || self.steps[step].may_have_happened);
        match phase {
            // A pivot that may have happened cannot be compensated around: held for an
            // operator, whose retry asks it again (with the same idempotency key).
            Phase::Action if pivot_maybe => vec![Event::Stuck {
                step,
                phase,
                error: format!("{error}; the pivot may have happened, so the saga cannot compensate: retry it to learn its outcome"),
            }],
            Phase::Action if !self.pivot_passed() => vec![Event::CompensationStarted {
                reason: format!("step {} failed: {error}", self.steps[step].name),
            }],
            _ => vec![Event::Stuck { step, phase, error }],
        }
    }

    /// The events that follow `input`; changes nothing.
    pub fn decide(
        &self,
        input: Input,
        now_ms: i64,
        random_unit: f64,
    ) -> Result<Vec<Event>, EngineError> {
        let conflict = |reason| EngineError::Conflict {
            id: self.id.clone(),
            state: self.state.as_str(),
            reason,
        };
        let mut events = Vec::new();
        match input {
            Input::Acquire => {
                if self.lock.is_some() && !self.holds_lock && !self.state.is_finished() {
                    events.push(Event::Acquired);
                }
            }
            Input::Start => {
                if !self.waiting_for_lock()
                    && self.state == SagaState::Running
                    && self.steps.first().is_some_and(|s| s.attempts.is_empty())
                {
                    events.push(self.dispatch(0, Phase::Action, now_ms));
                }
            }
            Input::Reply {
                step,
                phase,
                attempt,
                result,
            } => {
                if self.in_flight() != Some((step, phase, attempt)) {
                    return Ok(events); // superseded or unknown attempt
                }
                match result {
                    Ok(output) => events.push(Event::Succeeded {
                        step,
                        phase,
                        attempt,
                        output,
                    }),
                    Err(Failure {
                        error,
                        retriable,
                        retry_after_ms,
                        refused,
                    }) => {
                        // A compensation has no way out but through its participant: a call
                        // the breaker kept back spends nothing and waits for the breaker.
                        let refunded = refused && retriable && phase == Phase::Compensation;
                        let retry_at_ms = if refunded {
                            // Backs off by the attempts made, refused or not, so sagas waiting
                            // on a half-open breaker's trial do not poll it.
                            let policy = &self.definition().spec.steps[step].retry;
                            let backoff = policy.backoff_ms(attempt, random_unit);
                            Some(now_ms + backoff.max(retry_after_ms) as i64)
                        } else if retriable {
                            self.retry_at(step, now_ms, random_unit)
                                .map(|t| t.max(now_ms + retry_after_ms as i64))
                        } else {
                            None
                        };
                        events.push(Event::Failed {
                            step,
                            phase,
                            attempt,
                            error: error.clone(),
                            retry_at_ms,
                            refunded,
                        });
                        if retry_at_ms.is_none() {
                            events.extend(self.exhausted(step, phase, error, false));
                        }
                    }
                }
            }
            Input::Tick => events = self.tick(now_ms, random_unit),
            Input::Abort => {
                if self.state != SagaState::Running {
                    return Err(conflict("only a running saga can be aborted"));
                }
                if self.pivot_passed() {
                    return Err(conflict("past its pivot, a saga only goes forward"));
                }
                if self.pivot_uncertain() {
                    return Err(conflict(
                        "its pivot is in flight or its outcome is unknown; it cannot be undone",
                    ));
                }
                events.push(Event::CompensationStarted {
                    reason: "aborted by an operator".into(),
                });
            }
            Input::Retry => {
                if self.state != SagaState::Failed {
                    return Err(conflict("only a failed saga can be retried"));
                }
                events.push(Event::Resumed);
            }
            Input::Redispatch => {
                if self.deadline_applies() && self.deadline_at_ms.is_some_and(|d| now_ms >= d) {
                    // Past the deadline after a restart: compensate now rather than send the
                    // action again and its compensation right after it.
                    events.push(Event::CompensationStarted {
                        reason: "the saga's deadline passed".into(),
                    });
                } else if let Some((step, phase, _)) = self.in_flight() {
                    events.push(self.dispatch(step, phase, now_ms));
                }
            }
        }
        Ok(events)
    }

    fn tick(&self, now_ms: i64, random_unit: f64) -> Vec<Event> {
        let mut events = Vec::new();
        if self.state.is_finished() || self.state == SagaState::Failed {
            return events;
        }
        if self.deadline_applies() && self.deadline_at_ms.is_some_and(|d| now_ms >= d) {
            events.push(Event::CompensationStarted {
                reason: "the saga's deadline passed".into(),
            });
            return events;
        }
        if self.waiting_for_lock() {
            return events;
        }
        if let Some((step, phase, attempt)) = self.in_flight() {
            if self.steps[step].timeout_at_ms.is_some_and(|t| now_ms >= t) {
                let retry_at_ms = self.retry_at(step, now_ms, random_unit);
                events.push(Event::TimedOut {
                    step,
                    phase,
                    attempt,
                    retry_at_ms,
                });
                if retry_at_ms.is_none() {
                    events.extend(self.exhausted(step, phase, "timed out".into(), true));
                }
            }
            return events;
        }
        if let Some((step, s)) = self
            .steps
            .iter()
            .enumerate()
            .find(|(_, s)| s.retry_at_ms.is_some())
        {
            if s.retry_at_ms.is_some_and(|t| now_ms >= t) {
                let phase = s.attempts.last().map_or(Phase::Action, |a| a.phase);
                events.push(self.dispatch(step, phase, now_ms));
            }
            return events;
        }
        // A step whose attempts are spent without what follows in the journal: a crash kept
        // only part of the batch that said so. Decide it again.
        let spent = |state| {
            self.steps
                .iter()
                .position(|s| s.state == state && s.retry_at_ms.is_none())
        };
        match self.state {
            SagaState::Running => {
                if let Some(step) = spent(StepState::TimedOut).or(spent(StepState::Failed)) {
                    let s = &self.steps[step];
                    let error = s.error.clone().unwrap_or_else(|| "failed".into());
                    let timed_out = s.state == StepState::TimedOut;
                    events.extend(self.exhausted(step, Phase::Action, error, timed_out));
                    return events;
                }
                // The next pending step, or done.
                match self
                    .steps
                    .iter()
                    .position(|s| s.state == StepState::Pending)
                {
                    Some(next) => events.push(self.dispatch(next, Phase::Action, now_ms)),
                    None if self.steps.iter().all(|s| s.state == StepState::Succeeded) => {
                        events.push(Event::Completed)
                    }
                    None => {}
                }
            }
            SagaState::Compensating => {
                if let Some(step) = spent(StepState::CompensationFailed) {
                    let error = self.steps[step].error.clone().unwrap_or_default();
                    events.push(Event::Stuck {
                        step,
                        phase: Phase::Compensation,
                        error,
                    });
                    return events;
                }
                match self.next_compensation() {
                    Some(step) => events.push(self.dispatch(step, Phase::Compensation, now_ms)),
                    None => events.push(Event::Compensated),
                }
            }
            _ => {}
        }
        events
    }

    /// Changes the state by one journaled event.
    pub fn apply(&mut self, entry: &Entry) {
        if matches!(entry.event, Event::Owner { .. }) {
            return; // the partition's, not the saga's
        }
        let now = entry.at_ms;
        self.updated_at_ms = now;
        match &entry.event {
            Event::Started {
                definition,
                version,
                input,
                idempotency_key,
                deadline_at_ms,
                lock,
            } => {
                self.lock = lock.clone();
                self.definition = definition.clone();
                self.version = *version;
                self.input = input.clone();
                self.idempotency_key = idempotency_key.clone();
                self.deadline_at_ms = *deadline_at_ms;
                self.created_at_ms = now;
                self.state = SagaState::Running;
                self.steps = self
                    .definition()
                    .spec
                    .steps
                    .iter()
                    .map(|s| StepRecord {
                        name: s.name.clone(),
                        state: StepState::Pending,
                        attempts: Vec::new(),
                        output: None,
                        error: None,
                        retry_at_ms: None,
                        timeout_at_ms: None,
                        budget_used: 0,
                        may_have_happened: false,
                    })
                    .collect();
            }
            Event::Dispatched {
                step,
                phase,
                attempt,
                timeout_at_ms,
            } => {
                let id = self.id.clone();
                let s = &mut self.steps[*step];
                if let Some(last) = s.attempts.last_mut() {
                    if last.outcome.is_none() {
                        last.outcome = Some("abandoned".into());
                        last.ended_at_ms = Some(now);
                        // Sent before a restart and never answered: it may have happened.
                        if last.phase == Phase::Action {
                            s.may_have_happened = true;
                        }
                    }
                    if last.phase != *phase {
                        s.budget_used = 0;
                    }
                }
                s.budget_used += 1;
                s.state = match phase {
                    Phase::Action => StepState::Dispatched,
                    Phase::Compensation => StepState::Compensating,
                };
                s.retry_at_ms = None;
                s.timeout_at_ms = Some(*timeout_at_ms);
                s.attempts.push(Attempt {
                    phase: *phase,
                    attempt: *attempt,
                    attempt_id: attempt_id(&id, &s.name, *phase, *attempt),
                    started_at_ms: now,
                    ended_at_ms: None,
                    outcome: None,
                    error: None,
                });
            }
            Event::Succeeded {
                step,
                phase,
                output,
                ..
            } => {
                let s = &mut self.steps[*step];
                end_attempt(s, now, "succeeded", None);
                s.timeout_at_ms = None;
                s.error = None;
                match phase {
                    Phase::Action => {
                        s.state = StepState::Succeeded;
                        s.output = Some(output.clone());
                    }
                    Phase::Compensation => s.state = StepState::Compensated,
                }
            }
            Event::Failed {
                step,
                phase,
                error,
                retry_at_ms,
                refunded,
                ..
            } => {
                let s = &mut self.steps[*step];
                end_attempt(s, now, "failed", Some(error.clone()));
                if *refunded {
                    s.budget_used = s.budget_used.saturating_sub(1);
                }
                s.timeout_at_ms = None;
                s.error = Some(error.clone());
                s.retry_at_ms = *retry_at_ms;
                s.state = match (phase, retry_at_ms) {
                    (Phase::Action, _) => StepState::Failed,
                    (Phase::Compensation, Some(_)) => StepState::Compensating,
                    (Phase::Compensation, None) => StepState::CompensationFailed,
                };
            }
            Event::TimedOut {
                step,
                phase,
                retry_at_ms,
                ..
            } => {
                let s = &mut self.steps[*step];
                end_attempt(s, now, "timed_out", Some("timed out".into()));
                if *phase == Phase::Action {
                    s.may_have_happened = true;
                }
                s.timeout_at_ms = None;
                s.error = Some("timed out".into());
                s.retry_at_ms = *retry_at_ms;
                s.state = match (phase, retry_at_ms) {
                    (Phase::Action, _) => StepState::TimedOut,
                    (Phase::Compensation, Some(_)) => StepState::Compensating,
                    (Phase::Compensation, None) => StepState::CompensationFailed,
                };
            }
            Event::CompensationStarted { reason } => {
                self.state = SagaState::Compensating;
                self.compensation_reason = Some(reason.clone());
                for s in &mut self.steps {
                    // An action in flight may still happen: it is compensated like one that
                    // timed out. Scheduled retries of actions are dropped.
                    if s.state == StepState::Dispatched {
                        end_attempt(s, now, "abandoned", None);
                        s.state = StepState::TimedOut;
                        s.may_have_happened = true;
                    }
                    s.timeout_at_ms = None;
                    s.retry_at_ms = None;
                }
            }
            Event::OutcomePublished => self.outcome_published = true,
            Event::Acquired => self.holds_lock = true,
            Event::Owner { .. } => {}
            Event::Completed => self.state = SagaState::Completed,
            Event::Compensated => self.state = SagaState::Compensated,
            Event::Stuck { error, step, .. } => {
                self.state = SagaState::Failed;
                self.error = Some(format!("step {}: {error}", self.steps[*step].name));
            }
            Event::Resumed => {
                self.error = None;
                // The stuck step gets a fresh budget and is due now.
                let compensating = self
                    .steps
                    .iter()
                    .any(|s| s.state == StepState::CompensationFailed);
                self.state = if compensating {
                    SagaState::Compensating
                } else {
                    SagaState::Running
                };
                for s in &mut self.steps {
                    if s.state == StepState::CompensationFailed
                        || (!compensating
                            && matches!(s.state, StepState::Failed | StepState::TimedOut))
                    {
                        s.budget_used = 0;
                        s.retry_at_ms = Some(now);
                        if s.state == StepState::CompensationFailed {
                            s.state = StepState::Compensating;
                        }
                    }
                }
            }
        }
        self.history.push(entry.clone());
        // The journal keeps every transition; the saga (and its snapshot) the latest ones, so
        // a saga retried for months stays a bounded record.
        if self.history.len() > HISTORY_KEPT {
            let drop = self.history.len() - HISTORY_KEPT;
            self.history.drain(..drop);
            self.history_dropped += drop as u64;
        }
    }

    /// The earliest time something is due (a timeout, a retry, the deadline).
    pub fn next_wakeup_ms(&self) -> Option<i64> {
        if self.state.is_finished() || self.state == SagaState::Failed {
            return None;
        }
        let mut due = self
            .steps
            .iter()
            .flat_map(|s| [s.timeout_at_ms, s.retry_at_ms])
            .flatten()
            .min();
        if self.deadline_applies() {
            if let Some(d) = self.deadline_at_ms {
                due = Some(due.map_or(d, |t| t.min(d)));
            }
        }
        due
    }

    /// What templates see: the saga's id and input and the outputs of its steps so far.
    pub fn template_context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter_map(|s| {
                let output = s.output.clone()?;
                Some((s.name.clone(), json!({ "output": output })))
            })
            .collect();
        json!({ "saga_id": self.id, "input": self.input, "steps": steps })
    }

    /// The call a `Dispatched` event announces, templates rendered.
    pub fn call(&self, event: &Event) -> Option<Call> {
        let Event::Dispatched {
            step,
            phase,
            attempt,
            timeout_at_ms,
        } = event
        else {
            return None;
        };
        let spec = &self.definition().spec.steps[*step];
        let mut context = self.template_context();
        context["action_key"] = Value::String(idempotency_key(&self.id, &spec.name, Phase::Action));
        let participant = match phase {
            Phase::Action => Some(&spec.action),
            Phase::Compensation => spec.compensation.as_ref(),
        }?;
        Some(Call {
            saga_id: self.id.clone(),
            traceparent: None,
            step: *step,
            step_name: spec.name.clone(),
            phase: *phase,
            attempt: *attempt,
            idempotency_key: idempotency_key(&self.id, &spec.name, *phase),
            attempt_id: attempt_id(&self.id, &spec.name, *phase, *attempt),
            timeout_at_ms: *timeout_at_ms,
            participant: render(participant, &context),
        })
    }
}

fn end_attempt(s: &mut StepRecord, now: i64, outcome: &str, error: Option<String>) {
    if let Some(a) = s.attempts.last_mut() {
        if a.outcome.is_none() {
            a.outcome = Some(outcome.into());
            a.ended_at_ms = Some(now);
            a.error = error;
        }
    }
}

/// The participant with its URL, headers and body rendered.
fn render(p: &Participant, context: &Value) -> Result<Participant, String> {
    Ok(match p {
        Participant::Http {
            method,
            url,
            headers,
            body,
            auth,
        } => Participant::Http {
            auth: auth.clone(),
            method: method.clone(),
            url: template::render_str(url, context)?,
            headers: headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), template::render_str(v, context)?)))
                .collect::<Result<_, String>>()?,
            body: body
                .as_ref()
                .map(|b| template::render_value(b, context))
                .transpose()?,
        },
        Participant::Broker {
            topic,
            reply_topic,
            body,
        } => Participant::Broker {
            topic: topic.clone(),
            reply_topic: reply_topic.clone(),
            body: body
                .as_ref()
                .map(|b| template::render_value(b, context))
                .transpose()?,
        },
    })
}

#[cfg(test)]
mod tests;
