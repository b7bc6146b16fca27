//! The orchestrator's Prometheus metrics, served as OpenMetrics text on the API's `/metrics`:
//! sagas by definition and outcome, saga and step durations, attempts and retries, breaker
//! states, sagas in flight, journal append latency and trigger lag.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::breaker::BreakerState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DefinitionLabel {
    pub definition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub definition: String,
    pub step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    pub definition: String,
    pub step: String,
    /// `action` or `compensation`.
    pub kind: &'static str,
    /// `ok`, `failed` (the participant said no, or an error it will not get over), or
    /// `error` (transport error, timeout, breaker open: retried).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub topic: String,
    pub partition: u32,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Saga and step durations: 1 ms to about 9 hours (a saga may wait on long retries).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 3.0, 16))
}

/// Journal appends: 100 µs to about 6.5 s.
fn append_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// What a finished saga ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Compensated,
    Failed,
}

#[derive(Debug)]
pub struct SagaMetrics {
    registry: Registry,
    pub started: Family<DefinitionLabel, Counter>,
    pub completed: Family<DefinitionLabel, Counter>,
    pub compensated: Family<DefinitionLabel, Counter>,
    pub failed: Family<DefinitionLabel, Counter>,
    pub saga_seconds: HistogramFamily<DefinitionLabel>,
    pub step_seconds: HistogramFamily<StepLabel>,
    pub attempts: Family<AttemptLabel, Counter>,
    pub retries: Family<StepLabel, Counter>,
    pub breaker_state: Family<EndpointLabel, Gauge>,
    pub in_flight: Gauge,
    pub journal_append_seconds: Histogram,
    pub trigger_lag: Family<TriggerLabel, Gauge>,
}

impl Default for SagaMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("strand_saga");
        let m = SagaMetrics {
            registry: Registry::default(),
            started: Family::default(),
            completed: Family::default(),
            compensated: Family::default(),
            failed: Family::default(),
            saga_seconds: Family::new_with_constructor(duration_histogram),
            step_seconds: Family::new_with_constructor(duration_histogram),
            attempts: Family::default(),
            retries: Family::default(),
            breaker_state: Family::default(),
            in_flight: Gauge::default(),
            journal_append_seconds: append_histogram(),
            trigger_lag: Family::default(),
        };
        registry.register(
            "sagas_started",
            "Sagas started, by definition",
            m.started.clone(),
        );
        registry.register(
            "sagas_completed",
            "Sagas whose every step succeeded, by definition",
            m.completed.clone(),
        );
        registry.register(
            "sagas_compensated",
            "Sagas that failed a step and undid the steps before it, by definition",
            m.compensated.clone(),
        );
        registry.register(
            "sagas_failed",
            "Sagas left failed (a compensation that could not be done needs an operator), by definition",
            m.failed.clone(),
        );
        registry.register(
            "duration_seconds",
            "Time from a saga's start to its end, by definition",
            m.saga_seconds.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time of one attempt at a step's action or compensation, by definition and step",
            m.step_seconds.clone(),
        );
        registry.register(
            "attempts",
            "Attempts at steps' actions and compensations, by kind and outcome",
            m.attempts.clone(),
        );
        registry.register(
            "retries",
            "Attempts scheduled again after an error, by definition and step",
            m.retries.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per participant endpoint: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "in_flight_sagas",
            "Sagas started and not finished, among the journal partitions this instance drives",
            m.in_flight.clone(),
        );
        registry.register(
            "journal_append_duration_seconds",
            "Time to make one batch of journal entries durable",
            m.journal_append_seconds.clone(),
        );
        registry.register(
            "trigger_lag_records",
            "Records of a trigger topic not yet turned into sagas, by partition",
            m.trigger_lag.clone(),
        );
        SagaMetrics { registry, ..m }
    }
}

impl SagaMetrics {
    pub fn saga_started(&self, definition: &str) {
        self.started
            .get_or_create(&DefinitionLabel {
                definition: definition.to_string(),
            })
            .inc();
    }

    pub fn saga_finished(&self, definition: &str, outcome: Outcome, duration: Duration) {
        let label = DefinitionLabel {
            definition: definition.to_string(),
        };
        match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Compensated => &self.compensated,
            Outcome::Failed => &self.failed,
        }
        .get_or_create(&label)
        .inc();
        self.saga_seconds
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
    }

    pub fn attempt(
        &self,
        definition: &str,
        step: &str,
        compensation: bool,
        outcome: &'static str,
        duration: Duration,
    ) {
        self.attempts
            .get_or_create(&AttemptLabel {
                definition: definition.to_string(),
                step: step.to_string(),
                kind: if compensation {
                    "compensation"
                } else {
                    "action"
                },
                outcome,
            })
            .inc();
        self.step_seconds
            .get_or_create(&StepLabel {
                definition: definition.to_string(),
                step: step.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn retry(&self, definition: &str, step: &str) {
        self.retries
            .get_or_create(&StepLabel {
                definition: definition.to_string(),
                step: step.to_string(),
            })
            .inc();
    }

    pub fn set_breaker(&self, endpoint: &str, state: BreakerState) {
        let value = match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        self.breaker_state
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_string(),
            })
            .set(value);
    }

    pub fn observe_journal_append(&self, elapsed: Duration) {
        self.journal_append_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn set_trigger_lag(&self, topic: &str, partition: u32, lag: u64) {
        self.trigger_lag
            .get_or_create(&TriggerLabel {
                topic: topic.to_string(),
                partition,
            })
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text of every metric
    /// ([`strand_broker::metrics::OPENMETRICS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
