//! The engine without IO: scripted participant answers, time moved by hand, and after every
//! step a check that replaying the journal rebuilds the same saga.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::definition::{DefinitionSpec, RetryPolicy, StepKind, StepSpec};

fn http(url: &str) -> Participant {
    Participant::Http {
        method: "POST".into(),
        url: url.into(),
        headers: Default::default(),
        body: None,
        auth: None,
    }
}

fn step(name: &str, kind: StepKind, attempts: u32) -> StepSpec {
    StepSpec {
        name: name.into(),
        kind,
        action: http(&format!("http://svc/{name}")),
        compensation: (kind == StepKind::Compensatable)
            .then(|| http(&format!("http://svc/undo-{name}"))),
        timeout_ms: 1_000,
        retry: RetryPolicy {
            max_attempts: attempts,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.0,
        },
    }
}

fn definition(steps: Vec<StepSpec>) -> Arc<Definition> {
    Arc::new(Definition {
        name: "order".into(),
        version: 1,
        spec: DefinitionSpec {
            description: None,
            steps,
            deadline_ms: None,
            trigger: None,
            outcome_topic: None,
            lock: None,
        },
    })
}

/// Three compensatable steps (create order, charge payment, reserve inventory).
fn order_saga(attempts: u32) -> Arc<Definition> {
    definition(vec![
        step("order", StepKind::Compensatable, attempts),
        step("charge", StepKind::Compensatable, attempts),
        step("reserve", StepKind::Compensatable, attempts),
    ])
}

struct Sim {
    saga: Saga,
    journal: Vec<Entry>,
    now: i64,
    /// Every dispatch, in order: (step name, phase, attempt).
    calls: Vec<(String, Phase, u32)>,
}

impl Sim {
    fn start(def: Arc<Definition>) -> Sim {
        let (saga, entries) = Saga::start(
            "s1".into(),
            def,
            json!({"amount": 30}),
            None,
            None,
            false,
            1_000,
        );
        let mut sim = Sim {
            saga,
            journal: Vec::new(),
            now: 1_000,
            calls: Vec::new(),
        };
        sim.record(entries);
        sim
    }

    fn record(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        for e in &entries {
            if let Event::Dispatched {
                step,
                phase,
                attempt,
                ..
            } = e.event
            {
                self.calls
                    .push((self.saga.steps[step].name.clone(), phase, attempt));
            }
        }
        self.journal.extend(entries.iter().cloned());
        let replayed = Saga::replay(
            self.saga.id.clone(),
            Arc::new(self.saga.definition().clone()),
            &self.journal,
        );
        assert_eq!(
            replayed, self.saga,
            "replaying the journal rebuilds the saga"
        );
        entries
    }

    fn feed(&mut self, input: Input) -> Vec<Entry> {
        let entries = self.saga.handle(input, self.now, 0.5).unwrap();
        self.record(entries)
    }

    /// Answers the attempt in flight (failures are retriable).
    fn reply(&mut self, result: Result<Value, String>) -> Vec<Entry> {
        let (step, phase, attempt) = self.saga.in_flight().expect("an attempt in flight");
        self.feed(Input::Reply {
            step,
            phase,
            attempt,
            result: result.map_err(Failure::retriable),
        })
    }

    /// Moves time to the next wakeup and ticks.
    fn wake(&mut self) -> Vec<Entry> {
        self.now = self.saga.next_wakeup_ms().expect("something is due");
        self.feed(Input::Tick)
    }

    /// Answers every call: `answer(step name, phase)` decides; a retry waits for its time.
    fn drive(&mut self, mut answer: impl FnMut(&str, Phase) -> Option<Result<Value, String>>) {
        for _ in 0..1_000 {
            if self.saga.state.is_finished() || self.saga.state == SagaState::Failed {
                return;
            }
            match self.saga.in_flight() {
                Some((step, phase, _)) => {
                    let name = self.saga.steps[step].name.clone();
                    match answer(&name, phase) {
                        Some(result) => {
                            self.now += 10;
                            self.reply(result);
                        }
                        // No answer: the attempt times out.
                        None => {
                            self.wake();
                        }
                    }
                }
                None => {
                    self.wake();
                }
            }
        }
        panic!("saga did not settle: {:?}", self.saga.state);
    }

    fn compensations(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for (name, phase, _) in &self.calls {
            if *phase == Phase::Compensation && seen.last() != Some(name) {
                seen.push(name.clone());
            }
        }
        seen
    }
}

#[test]
fn success_runs_every_step_in_order_with_outputs_in_templates() {
    let mut def = (*order_saga(3)).clone();
    def.spec.steps[1].action = Participant::Http {
        method: "POST".into(),
        url: "http://pay/charge/{{ steps.order.output.order_id }}".into(),
        headers: Default::default(),
        body: Some(json!({"amount": "{{ input.amount }}", "order": "{{ steps.order.output }}"})),
        auth: None,
    };
    let mut sim = Sim::start(Arc::new(def));
    sim.reply(Ok(json!({"order_id": "o-1"})));
    let dispatched = sim.journal.last().unwrap().event.clone();
    let call = sim.saga.call(&dispatched).unwrap();
    assert_eq!(call.idempotency_key, "s1:charge:action");
    assert_eq!(call.attempt_id, "s1:charge:action:1");
    assert_eq!(
        call.participant.unwrap(),
        Participant::Http {
            method: "POST".into(),
            url: "http://pay/charge/o-1".into(),
            headers: Default::default(),
            body: Some(json!({"amount": 30, "order": {"order_id": "o-1"}})),
            auth: None,
        }
    );
    sim.reply(Ok(json!({"payment_id": "p-1"})));
    sim.reply(Ok(json!({})));
    assert_eq!(sim.saga.state, SagaState::Completed);
    assert!(sim.journal.last().unwrap().event.is_terminal());
    let names: Vec<&str> = sim.calls.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["order", "charge", "reserve"]);
    assert!(sim
        .saga
        .steps
        .iter()
        .all(|s| s.state == StepState::Succeeded));
    assert_eq!(sim.saga.next_wakeup_ms(), None);
}

#[test]
fn a_failure_at_each_position_compensates_exactly_the_completed_steps_in_reverse() {
    let names = ["order", "charge", "reserve"];
    for failing in 0..3 {
        let mut sim = Sim::start(order_saga(2));
        sim.drive(|name, phase| {
            Some(if phase == Phase::Action && name == names[failing] {
                Err("declined".into())
            } else {
                Ok(json!({}))
            })
        });
        assert_eq!(
            sim.saga.state,
            SagaState::Compensated,
            "failing at {failing}"
        );
        let expected: Vec<String> = names[..failing]
            .iter()
            .rev()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sim.compensations(), expected, "failing at {failing}");
        assert_eq!(sim.saga.steps[failing].state, StepState::Failed);
        // The failing step was tried twice (its budget), no more.
        let tries = sim
            .calls
            .iter()
            .filter(|(n, p, _)| n == names[failing] && *p == Phase::Action)
            .count();
        assert_eq!(tries, 2);
    }
}

#[test]
fn a_step_that_times_out_is_retried_then_compensated_as_if_it_happened() {
    let mut sim = Sim::start(order_saga(2));
    sim.reply(Ok(json!({})));
    // charge never answers: two attempts time out, then compensation covers charge too.
    sim.wake();
    assert_eq!(sim.saga.steps[1].state, StepState::TimedOut);
    assert!(sim.saga.steps[1].retry_at_ms.is_some());
    sim.wake(); // the retry goes out
    assert_eq!(sim.saga.steps[1].state, StepState::Dispatched);
    sim.wake(); // and times out too: budget spent
    assert_eq!(sim.saga.state, SagaState::Compensating);
    assert!(sim
        .saga
        .compensation_reason
        .as_deref()
        .unwrap()
        .contains("charge"));
    sim.drive(|_, _| Some(Ok(json!({}))));
    assert_eq!(sim.saga.state, SagaState::Compensated);
    assert_eq!(sim.compensations(), ["charge", "order"]);
}

#[test]
fn a_compensation_that_fails_twice_then_succeeds() {
    let mut sim = Sim::start(order_saga(3));
    let mut refund_failures = 0;
    sim.drive(|name, phase| {
        Some(match (name, phase) {
            ("reserve", Phase::Action) => Err("out of stock".into()),
            ("charge", Phase::Compensation) if refund_failures < 2 => {
                refund_failures += 1;
                Err("payments down".into())
            }
            _ => Ok(json!({})),
        })
    });
    assert_eq!(sim.saga.state, SagaState::Compensated);
    assert_eq!(sim.compensations(), ["charge", "order"]);
    let refunds: Vec<u32> = sim
        .calls
        .iter()
        .filter(|(n, p, _)| n == "charge" && *p == Phase::Compensation)
        .map(|(_, _, a)| *a)
        .collect();
    // Attempt numbers count across phases: the action was attempt 1.
    assert_eq!(refunds, [2, 3, 4]);
}

#[test]
fn a_stuck_compensation_holds_the_saga_until_an_operator_retries() {
    let mut sim = Sim::start(order_saga(2));
    let mut payments_up = false;
    let mut answer = |name: &str, phase: Phase| {
        Some(match (name, phase) {
            ("reserve", Phase::Action) => Err("out of stock".into()),
            ("charge", Phase::Compensation) if !payments_up => Err("payments down".into()),
            _ => Ok(json!({})),
        })
    };
    sim.drive(&mut answer);
    assert_eq!(sim.saga.state, SagaState::Failed);
    assert_eq!(sim.saga.steps[1].state, StepState::CompensationFailed);
    assert!(sim.saga.error.as_deref().unwrap().contains("payments down"));
    assert_eq!(
        sim.saga.next_wakeup_ms(),
        None,
        "held: nothing happens by itself"
    );
    assert!(sim.saga.decide(Input::Abort, sim.now, 0.0).is_err());

    payments_up = true;
    sim.feed(Input::Retry);
    assert_eq!(sim.saga.state, SagaState::Compensating);
    sim.drive(|name, phase| {
        Some(match (name, phase) {
            ("charge", Phase::Compensation) if !payments_up => Err("down".into()),
            _ => Ok(json!({})),
        })
    });
    assert_eq!(sim.saga.state, SagaState::Compensated);
    assert_eq!(sim.compensations(), ["charge", "order"]);
    assert!(sim.saga.decide(Input::Retry, sim.now, 0.0).is_err());
}

#[test]
fn a_breaker_refusal_spends_a_compensations_attempt_only_when_the_call_went_out() {
    // Two attempts each. The action refused by the breaker spends its attempts like any
    // failure (the saga may compensate instead). The refund is refused five times, more than
    // its budget, and still gets through; then two real failures hold it for an operator.
    let mut sim = Sim::start(order_saga(2));
    let refuse = |sim: &mut Sim| {
        let (step, phase, attempt) = sim.saga.in_flight().expect("an attempt in flight");
        sim.now += 10;
        sim.feed(Input::Reply {
            step,
            phase,
            attempt,
            result: Err(Failure::refused("circuit open", 300)),
        })
    };
    sim.reply(Ok(json!({})));
    refuse(&mut sim);
    sim.wake();
    refuse(&mut sim);
    assert_eq!(
        sim.saga.state,
        SagaState::Compensating,
        "an action's refusals count"
    );
    for n in 0..5 {
        let refusal = refuse(&mut sim);
        assert!(
            matches!(refusal[0].event, Event::Failed { refunded: true, retry_at_ms: Some(t), .. } if t >= sim.now + 300),
            "refusal {n}: waits for the breaker and gives its attempt back: {:?}",
            refusal[0].event
        );
        assert_eq!(sim.saga.steps[0].state, StepState::Compensating);
        sim.wake();
    }
    sim.reply(Err("orders down".into()));
    sim.wake();
    sim.reply(Err("orders down".into()));
    assert_eq!(
        sim.saga.state,
        SagaState::Failed,
        "calls that went out still count"
    );
    assert_eq!(sim.saga.steps[0].state, StepState::CompensationFailed);
}

#[test]
fn past_the_pivot_the_saga_only_goes_forward() {
    let def = definition(vec![
        step("order", StepKind::Compensatable, 2),
        step("ship", StepKind::Pivot, 2),
        step("notify", StepKind::Retriable, 2),
    ]);
    let mut sim = Sim::start(def.clone());
    sim.reply(Ok(json!({})));
    sim.reply(Ok(json!({})));
    assert!(matches!(
        sim.saga.decide(Input::Abort, sim.now, 0.0),
        Err(EngineError::Conflict { .. })
    ));
    sim.drive(|_, _| Some(Err("mail down".into())));
    assert_eq!(sim.saga.state, SagaState::Failed, "held, not compensated");
    assert!(sim.compensations().is_empty());
    sim.feed(Input::Retry);
    sim.drive(|_, _| Some(Ok(json!({}))));
    assert_eq!(sim.saga.state, SagaState::Completed);

    // Before the pivot succeeded, a failing pivot compensates what came before it.
    let mut sim = Sim::start(def);
    sim.drive(|name, _| {
        Some(if name == "ship" {
            Err("no".into())
        } else {
            Ok(json!({}))
        })
    });
    assert_eq!(sim.saga.state, SagaState::Compensated);
    assert_eq!(sim.compensations(), ["order"]);
}

#[test]
fn a_permanent_failure_is_not_retried() {
    let mut sim = Sim::start(order_saga(3));
    sim.reply(Ok(json!({})));
    let (step, phase, attempt) = sim.saga.in_flight().unwrap();
    sim.feed(Input::Reply {
        step,
        phase,
        attempt,
        result: Err(Failure::permanent("card declined")),
    });
    assert_eq!(sim.saga.state, SagaState::Compensating);
    assert_eq!(sim.saga.steps[1].attempts.len(), 1, "no retry");
    sim.drive(|_, _| Some(Ok(json!({}))));
    assert_eq!(sim.compensations(), ["order"]);
}

#[test]
fn a_late_reply_from_an_old_attempt_is_ignored() {
    let mut sim = Sim::start(order_saga(3));
    sim.reply(Err("busy".into()));
    sim.wake(); // attempt 2 goes out
    let stale = sim.feed(Input::Reply {
        step: 0,
        phase: Phase::Action,
        attempt: 1,
        result: Ok(json!({"late": true})),
    });
    assert!(stale.is_empty(), "{stale:?}");
    assert_eq!(sim.saga.steps[0].state, StepState::Dispatched);
    sim.reply(Ok(json!({"order_id": 1})));
    assert_eq!(sim.saga.steps[0].output, Some(json!({"order_id": 1})));
}

#[test]
fn abort_and_deadline_compensate_an_action_in_flight() {
    let mut sim = Sim::start(order_saga(3));
    sim.reply(Ok(json!({})));
    sim.feed(Input::Abort);
    // charge was in flight: it may have happened, so it is compensated first.
    assert_eq!(
        sim.saga.steps[1].attempts[0].outcome.as_deref(),
        Some("abandoned")
    );
    assert_eq!(sim.saga.steps[1].state, StepState::Compensating);
    sim.drive(|_, _| Some(Ok(json!({}))));
    assert_eq!(sim.compensations(), ["charge", "order"]);

    let mut def = (*order_saga(3)).clone();
    def.spec.deadline_ms = Some(500);
    let mut sim = Sim::start(Arc::new(def));
    sim.reply(Ok(json!({})));
    assert_eq!(
        sim.saga.next_wakeup_ms(),
        Some(1_500),
        "the deadline comes first"
    );
    sim.wake();
    assert_eq!(sim.saga.state, SagaState::Compensating);
    assert!(sim
        .saga
        .compensation_reason
        .as_deref()
        .unwrap()
        .contains("deadline"));
}

#[test]
fn after_a_restart_the_attempt_in_flight_is_sent_again_with_the_same_key() {
    let mut sim = Sim::start(order_saga(3));
    let before = sim.saga.call(&sim.journal.last().unwrap().event).unwrap();
    let entries = sim.feed(Input::Redispatch);
    let again = sim.saga.call(&entries[0].event).unwrap();
    assert_eq!(again.idempotency_key, before.idempotency_key);
    assert_ne!(again.attempt_id, before.attempt_id);
    // The first attempt's late answer no longer counts.
    assert!(sim
        .feed(Input::Reply {
            step: 0,
            phase: Phase::Action,
            attempt: 1,
            result: Ok(json!({}))
        })
        .is_empty());
}

/// What a participant does with one step's action in the property test.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Succeeds,
    Fails,
    TimesOut,
}

proptest! {
    /// Any number of steps, any of them failing or timing out for good, some flaky first:
    /// exactly the steps that succeeded or timed out are compensated, each once, last first.
    #[test]
    fn compensation_is_exactly_the_reverse_of_what_may_have_happened(
        fates in proptest::collection::vec(
            prop_oneof![4 => Just(Fate::Succeeds), 1 => Just(Fate::Fails), 1 => Just(Fate::TimesOut)],
            1..8,
        ),
        flaky in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let n = fates.len();
        let def = definition((0..n).map(|i| step(&format!("s{i}"), StepKind::Compensatable, 3)).collect());
        let mut sim = Sim::start(def);
        let mut first_try = vec![true; n];
        sim.drive(|name, phase| {
            let i: usize = name[1..].parse().unwrap();
            if phase == Phase::Compensation {
                return Some(Ok(json!({})));
            }
            // A flaky step fails its first attempt, then behaves as its fate says.
            if flaky[i] && std::mem::take(&mut first_try[i]) {
                return Some(Err("flaky".into()));
            }
            match fates[i] {
                Fate::Succeeds => Some(Ok(json!({}))),
                Fate::Fails => Some(Err("no".into())),
                Fate::TimesOut => None,
            }
        });
        let failed_at = fates.iter().position(|f| !matches!(f, Fate::Succeeds));
        match failed_at {
            None => {
                prop_assert_eq!(sim.saga.state, SagaState::Completed);
                prop_assert!(sim.compensations().is_empty());
            }
            Some(k) => {
                prop_assert_eq!(sim.saga.state, SagaState::Compensated);
                let mut expected: Vec<String> = (0..k).map(|i| format!("s{i}")).collect();
                if matches!(fates[k], Fate::TimesOut) {
                    expected.push(format!("s{k}"));
                }
                expected.reverse();
                prop_assert_eq!(sim.compensations(), expected);
                // Nothing after the failing step ever ran.
                prop_assert!(sim.calls.iter().all(|(name, _, _)| name[1..].parse::<usize>().unwrap() <= k));
            }
        }
    }
}
