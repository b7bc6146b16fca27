//! The bridge's `/metrics`: its per-route counters, read from [`RouteStats`] when scraped and
//! written by prometheus-client as OpenMetrics text
//! ([`strand_broker::metrics::OPENMETRICS_CONTENT_TYPE`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::RouteStats;

/// Every route's counters, by route id.
#[derive(Debug)]
struct Routes(BTreeMap<String, Arc<RouteStats>>);

type Field = fn(&RouteStats) -> &AtomicU64;

/// (name, help, type, field): the series, each with one sample per route.
const SERIES: [(&str, &str, MetricType, Field); 5] = [
    ("records", "Records mirrored", MetricType::Counter, |s| {
        &s.records
    }),
    ("bytes", "Value bytes mirrored", MetricType::Counter, |s| {
        &s.bytes
    }),
    (
        "skipped_loops",
        "Records not mirrored back (already copies)",
        MetricType::Counter,
        |s| &s.skipped_loops,
    ),
    (
        "errors",
        "Route failures (each retried)",
        MetricType::Counter,
        |s| &s.errors,
    ),
    (
        "in_flight_records",
        "Source records read and not yet checkpointed",
        MetricType::Gauge,
        |s| &s.lag,
    ),
];

impl Collector for Routes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, metric_type, field) in SERIES {
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (route, stats) in &self.0 {
                let labels = [("route", route.as_str())];
                let value = field(stats).load(Ordering::Relaxed);
                let sample = family.encode_family(&labels)?;
                match metric_type {
                    MetricType::Counter => ConstCounter::new(value).encode(sample)?,
                    _ => {
                        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The registry of the bridge's metrics (prefix `strand_bridge_`), reading `stats` on each
/// scrape.
pub fn registry(stats: BTreeMap<String, Arc<RouteStats>>) -> Registry {
    let mut registry = Registry::with_prefix("strand_bridge");
    registry.register_collector(Box::new(Routes(stats)));
    registry
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counters_are_written_per_route() {
        let stats = Arc::new(RouteStats::default());
        stats.records.store(7, Ordering::Relaxed);
        stats.lag.store(3, Ordering::Relaxed);
        let text = render(&registry(BTreeMap::from([("a->b".to_string(), stats)])));
        assert!(
            text.contains("strand_bridge_records_total{route=\"a->b\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("strand_bridge_in_flight_records{route=\"a->b\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
