//! What the orchestrator shows of its sagas while it drives them: a trace per saga and the
//! metrics of [`crate::metrics`]. The orchestrator tells the [`Observer`] every journal entry
//! it writes; the observer keeps the open spans.
//!
//! A saga is a span (`saga <definition>`) whose parent is the `POST /sagas` request (which
//! continues the caller's `traceparent`); each step's action and compensation is a child span
//! (`<phase> <step>`), each attempt a child of that (`attempt <n>`), and each journal append a
//! child of the attempt it is for (or of the saga). The `traceparent` sent to a participant is
//! the attempt span's own, so the participant's spans hang under the attempt. Without
//! OpenTelemetry (see `strand_broker::telemetry`) the spans are plain `tracing` spans and the
//! caller's own `traceparent`, when there was one, is passed on instead.
//!
//! A saga whose trace is not sampled (the sampler said no to its span, or the caller's
//! `traceparent` had the sampled flag off) gets no step, attempt or journal-append spans: none
//! would be exported, and making them is most of what tracing costs the orchestrator (README,
//! "What tracing costs"). Its calls run in the saga span, so log lines still carry its trace and
//! span ids, and participants get the saga span's `traceparent`, sampled flag `00`, so they do
//! not sample their side either.
//!
//! Spans live in memory only: a saga taken over after a restart (or by another instance) gets
//! a new saga span, in a new trace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strand_broker::telemetry;
use tracing::Span;

use crate::engine::{Entry, Event, Phase, Saga};
use crate::metrics::{Outcome, SagaMetrics};

/// The open spans of one saga.
#[derive(Debug)]
struct Traced {
    saga: Span,
    /// The saga span's `traceparent` when its trace is not sampled (then it has no step,
    /// attempt or journal-append spans, and this is what participants get).
    unsampled: Option<String>,
    /// The caller's `traceparent`, passed on when OpenTelemetry is off.
    caller_traceparent: Option<String>,
    /// The step (index, phase) being worked on and its span.
    step: Option<(usize, Phase, Span)>,
    /// The attempt in flight: its number, span and when it was sent.
    attempt: Option<(u32, Span, Instant)>,
}

#[derive(Debug, Default)]
pub struct Observer {
    pub metrics: Arc<SagaMetrics>,
    sagas: HashMap<String, Traced>,
}

/// `unsampled` of [`Traced`] for `span`.
fn unsampled(span: &Span) -> Option<String> {
    if telemetry::is_unsampled(span) {
        telemetry::traceparent(span)
    } else {
        None
    }
}

fn saga_span(saga: &Saga) -> Span {
    tracing::info_span!(
        "saga",
        otel.name = %format!("saga {}", saga.definition),
        saga.id = %saga.id,
        saga.definition = %saga.definition,
        saga.outcome = tracing::field::Empty,
    )
}

impl Observer {
    pub fn new(metrics: Arc<SagaMetrics>) -> Observer {
        Observer {
            metrics,
            sagas: HashMap::new(),
        }
    }

    /// A saga was started (its `Started` entry is about to be journaled), by a request that
    /// carried `traceparent` (its own span's, when the request was traced).
    pub fn started(&mut self, saga: &Saga, traceparent: Option<&str>) {
        let span = saga_span(saga);
        if let Some(parent) = traceparent {
            telemetry::set_parent(&span, parent);
        }
        self.metrics.saga_started(&saga.definition);
        span.in_scope(|| {
            tracing::info!(saga = %saga.id, definition = %saga.definition, "saga started");
        });
        self.sagas.insert(
            saga.id.clone(),
            Traced {
                unsampled: unsampled(&span),
                saga: span,
                caller_traceparent: traceparent.map(str::to_string),
                step: None,
                attempt: None,
            },
        );
        self.metrics.in_flight.set(self.sagas.len() as i64);
    }

    fn traced(&mut self, saga: &Saga) -> &mut Traced {
        if !self.sagas.contains_key(&saga.id) {
            // Recovered (or resumed by an operator): a new trace from here on.
            let span = saga_span(saga);
            self.sagas.insert(
                saga.id.clone(),
                Traced {
                    unsampled: unsampled(&span),
                    saga: span,
                    caller_traceparent: None,
                    step: None,
                    attempt: None,
                },
            );
            self.metrics.in_flight.set(self.sagas.len() as i64);
        }
        self.sagas.get_mut(&saga.id).expect("inserted above")
    }

    /// `entry` was applied to `saga` and is about to be journaled.
    pub fn entry(&mut self, saga: &Saga, entry: &Entry) {
        let metrics = self.metrics.clone();
        let step_name = |step: usize| {
            saga.steps
                .get(step)
                .map_or_else(|| step.to_string(), |s| s.name.clone())
        };
        match &entry.event {
            Event::CompensationStarted { reason } => {
                let traced = self.traced(saga);
                traced.saga.in_scope(|| {
                    tracing::info!(saga = %saga.id, %reason, "saga compensating");
                });
            }
            Event::Dispatched {
                step,
                phase,
                attempt,
                ..
            } => {
                let traced = self.traced(saga);
                let span = if traced.unsampled.is_some() {
                    Span::none()
                } else {
                    let same_step =
                        matches!(&traced.step, Some((s, p, _)) if s == step && p == phase);
                    if !same_step {
                        let name = step_name(*step);
                        let span = tracing::info_span!(
                            parent: &traced.saga,
                            "step",
                            otel.name = %format!("{} {name}", phase.as_str()),
                            saga.step = %name,
                            saga.phase = phase.as_str(),
                        );
                        traced.step = Some((*step, *phase, span));
                    }
                    let step_span = &traced.step.as_ref().expect("set above").2;
                    tracing::info_span!(
                        parent: step_span,
                        "attempt",
                        otel.name = %format!("attempt {attempt}"),
                        otel.kind = "client",
                        saga.attempt = attempt,
                        saga.attempt_outcome = tracing::field::Empty,
                    )
                };
                traced.attempt = Some((*attempt, span, Instant::now()));
            }
            Event::Succeeded {
                step,
                phase,
                attempt,
                ..
            } => {
                self.end_attempt(saga, *step, *phase, *attempt, "ok");
                if let Some(traced) = self.sagas.get_mut(&saga.id) {
                    traced.step = None;
                }
            }
            Event::Failed {
                step,
                phase,
                attempt,
                retry_at_ms,
                ..
            }
            | Event::TimedOut {
                step,
                phase,
                attempt,
                retry_at_ms,
            } => {
                let outcome = if matches!(entry.event, Event::TimedOut { .. }) {
                    "timeout"
                } else if retry_at_ms.is_some() {
                    "error"
                } else {
                    "failed"
                };
                self.end_attempt(saga, *step, *phase, *attempt, outcome);
                if retry_at_ms.is_some() {
                    metrics.retry(&saga.definition, &step_name(*step));
                } else if let Some(traced) = self.sagas.get_mut(&saga.id) {
                    traced.step = None;
                }
            }
            Event::Completed => self.finish(saga, entry, Outcome::Completed),
            Event::Compensated => self.finish(saga, entry, Outcome::Compensated),
            Event::Stuck { .. } => self.finish(saga, entry, Outcome::Failed),
            Event::Resumed => {
                self.traced(saga);
            }
            _ => {}
        }
    }

    fn end_attempt(
        &mut self,
        saga: &Saga,
        step: usize,
        phase: Phase,
        attempt: u32,
        outcome: &'static str,
    ) {
        let Some(traced) = self.sagas.get_mut(&saga.id) else {
            return;
        };
        let Some((n, span, sent)) = traced.attempt.take() else {
            return;
        };
        if n != attempt {
            traced.attempt = Some((n, span, sent));
            return;
        }
        span.record("saga.attempt_outcome", outcome);
        let name = saga
            .steps
            .get(step)
            .map_or_else(|| step.to_string(), |s| s.name.clone());
        self.metrics.attempt(
            &saga.definition,
            &name,
            phase == Phase::Compensation,
            outcome,
            sent.elapsed(),
        );
    }

    fn finish(&mut self, saga: &Saga, entry: &Entry, outcome: Outcome) {
        let name = match outcome {
            Outcome::Completed => "completed",
            Outcome::Compensated => "compensated",
            Outcome::Failed => "failed",
        };
        if let Some(traced) = self.sagas.remove(&saga.id) {
            traced.saga.record("saga.outcome", name);
            traced.saga.in_scope(|| {
                tracing::info!(saga = %saga.id, outcome = name, "saga finished");
            });
        }
        let ms = (entry.at_ms - saga.created_at_ms).max(0) as u64;
        self.metrics
            .saga_finished(&saga.definition, outcome, Duration::from_millis(ms));
        self.metrics.in_flight.set(self.sagas.len() as i64);
    }

    /// The `traceparent` to send with the attempt in flight of saga `id`: the attempt span's
    /// own, else (OpenTelemetry off) the caller's.
    pub fn traceparent(&self, id: &str) -> Option<String> {
        let traced = self.sagas.get(id)?;
        if let Some(unsampled) = &traced.unsampled {
            return Some(unsampled.clone());
        }
        traced
            .attempt
            .as_ref()
            .and_then(|(_, span, _)| telemetry::traceparent(span))
            .or_else(|| telemetry::traceparent(&traced.saga))
            .or_else(|| traced.caller_traceparent.clone())
    }

    /// A span for journaling entries of saga `id`: a child of its attempt in flight, else of
    /// the saga.
    pub fn append_span(&self, id: &str) -> Span {
        let Some(traced) = self.sagas.get(id) else {
            return Span::none();
        };
        if traced.unsampled.is_some() {
            return Span::none();
        }
        let parent = traced
            .attempt
            .as_ref()
            .map_or(&traced.saga, |(_, span, _)| span);
        tracing::info_span!(parent: parent, "journal append", otel.name = "journal append")
    }

    /// The span a call of saga `id` runs in: its attempt in flight, else (none, or the trace is
    /// not sampled) the saga's.
    pub fn call_span(&self, id: &str) -> Span {
        self.sagas.get(id).map_or_else(Span::none, |t| {
            t.attempt
                .as_ref()
                .filter(|(_, span, _)| !span.is_none())
                .map_or_else(|| t.saga.clone(), |(_, span, _)| span.clone())
        })
    }

    /// Forgets the sagas `keep` refuses (their partition went to another instance).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.sagas.retain(|id, _| keep(id));
        self.metrics.in_flight.set(self.sagas.len() as i64);
    }
}
