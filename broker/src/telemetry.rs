//! Logs and traces for every Strand binary (`strand-broker`, `strand-saga`, `strand-bridge`,
//! `strand-bench`), set up in one place by [`init`].
//!
//! - **Logs** go to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//!   `--log-format json`, one JSON object per line. A JSON line written inside a span that
//!   OpenTelemetry knows carries that span's `trace_id` and `span_id`, so a log pipeline can join
//!   a request's lines with its trace.
//! - **Traces** are exported over OTLP/HTTP (protobuf) only when the standard OpenTelemetry
//!   variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//!   turns export on; `OTEL_SERVICE_NAME` names the service (default: the binary's name);
//!   `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` choose the sampler (default
//!   `parentbased_always_on`); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it
//!   off. Without them no OpenTelemetry layer is installed at all, so spans cost what plain
//!   `tracing` spans cost.
//!
//! [`traceparent`] and [`set_parent`] carry a span's context across a process boundary in the
//! W3C `traceparent` form (HTTP headers, Kafka record headers).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The W3C trace-context header (HTTP) and record header (Kafka) name.
pub const TRACEPARENT: &str = "traceparent";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with `trace_id` and `span_id` inside a traced span.
    Json,
}

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent (bounded by the
/// exporter's timeout, 10 s by default, `OTEL_EXPORTER_OTLP_TIMEOUT`).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (the OpenTelemetry variables asked for it).
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces: {e}");
            }
        }
    }
}

/// Whether the environment asks for trace export (see the module documentation).
fn export_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber: `RUST_LOG` filtering, `format` to stderr, and the
/// OpenTelemetry layer when the environment asks for export. `service_name` is used when
/// `OTEL_SERVICE_NAME` is not set. Errs when the exporter cannot be built (a malformed endpoint)
/// or a subscriber is already installed.
pub fn init(service_name: &'static str, format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let provider = if export_requested() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| anyhow::anyhow!("OTLP trace exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service_name);
        }
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        )
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel_layer = provider.as_ref().map(|p| {
        // Every enabled span costs this layer work whether its trace is sampled or not
        // (README, "What tracing costs"), so the per-span extras no Strand span needs are
        // off: attaching each entered span's context as OpenTelemetry's current one (parents
        // come from tracing's own span tree, and `traceparent` reads a span's context
        // directly) and the worker thread's id and name (meaningless under tokio).
        tracing_opentelemetry::layer()
            .with_context_activation(false)
            .with_threads(false)
            .with_tracer(p.tracer("strand"))
    });
    let weak: Arc<OnceLock<WeakDispatch>> = Arc::default();
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .event_format(JsonWithTraceIds {
                        inner: tracing_subscriber::fmt::format().json(),
                        dispatch: weak.clone(),
                    }),
            ),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(text)
        .with(json);
    let dispatch = Dispatch::new(subscriber);
    let _ = weak.set(dispatch.downgrade());
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    Ok(Telemetry { provider })
}

/// The W3C `traceparent` of `span` (its own span id), when OpenTelemetry is on and the span is
/// known to it.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Whether OpenTelemetry knows `span` and its trace is not sampled: nothing under it will be
/// exported, so a caller can skip making child spans. False when OpenTelemetry is off.
pub fn is_unsampled(span: &tracing::Span) -> bool {
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid() && !sc.is_sampled()
}

/// Makes `span` (not yet entered) the child of the remote span a `traceparent` names, so the
/// caller's trace continues here. A malformed value is ignored: the span starts a new trace.
/// Returns whether the value was taken.
pub fn set_parent(span: &tracing::Span, traceparent: &str) -> bool {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// The trace and span ids (hex) of `traceparent`, when it is well formed.
pub fn parse_traceparent(traceparent: &str) -> Option<(String, String)> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// tracing-subscriber's JSON lines with the current span's OpenTelemetry `trace_id` and
/// `span_id` put first.
struct JsonWithTraceIds {
    inner: Format<Json>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonWithTraceIds {
    fn ids(&self, id: &tracing::span::Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let leaf = ctx.event_scope().and_then(|mut scope| scope.next());
        let ids = leaf.and_then(|span| self.ids(&span.id()));
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match (ids, line.strip_prefix('{')) {
            (Some((trace_id, span_id)), Some(rest)) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_parsed_and_a_bad_one_refused() {
        let (trace, span) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span, "00f067aa0ba902b7");
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }
}
