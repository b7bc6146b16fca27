//! The bridge's TOML file: clusters by name, and routes between them.
//!
//! ```toml
//! checkpoint_interval_ms = 1000    # how often source positions are saved (the duplicate window)
//! create_topics = true             # create a missing destination topic
//! in_flight_max = 10000            # records sent but not yet acknowledged, per route
//!
//! [clusters.local]
//! kind = "strand"
//! address = "127.0.0.1:7171"
//!
//! [clusters.dc]
//! kind = "kafka"
//! bootstrap = "kafka-1:9092,kafka-2:9092"
//! properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "PLAIN" }
//!
//! [[routes]]
//! from = { cluster = "local", topic = "orders" }
//! to = { cluster = "dc", topic = "orders" }
//! direction = "both"               # or "one-way" (the default)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use crate::cluster::ClusterConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    #[serde(default = "default_true")]
    pub create_topics: bool,
    #[serde(default = "default_in_flight_max")]
    pub in_flight_max: usize,
    /// `/health` and `/metrics`.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// HTTPS on `http_listen` (`cert_file`, `key_file`, `client_ca_file`, `client_auth`, as the
    /// broker's `[tls]`). Default none: plain HTTP.
    #[serde(default)]
    pub http_tls: Option<strand_broker::security::tls::TlsConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(rename = "routes")]
    pub route_specs: Vec<RouteSpec>,
}

fn default_checkpoint_interval_ms() -> u64 {
    1_000
}
fn default_true() -> bool {
    true
}
fn default_in_flight_max() -> usize {
    10_000
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7185))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub cluster: String,
    pub topic: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    #[default]
    OneWay,
    Both,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub from: Endpoint,
    pub to: Endpoint,
    #[serde(default)]
    pub direction: Direction,
}

/// One direction of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub from: Endpoint,
    pub to: Endpoint,
}

impl Route {
    /// Names the route in checkpoints, logs and metrics.
    pub fn id(&self) -> String {
        format!(
            "{}/{}->{}/{}",
            self.from.cluster, self.from.topic, self.to.cluster, self.to.topic
        )
    }
}

impl BridgeConfig {
    pub fn load(path: &Path) -> Result<BridgeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let config: BridgeConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Every route refers to known clusters and names topics; the limits are above zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.route_specs.is_empty() {
            return Err("no [[routes]]".into());
        }
        if self.in_flight_max == 0 || self.checkpoint_interval_ms == 0 {
            return Err("in_flight_max and checkpoint_interval_ms must be above 0".into());
        }
        if let Some(tls) = &self.http_tls {
            tls.validate(true).map_err(|e| format!("http_tls: {e}"))?;
        }
        for (i, r) in self.route_specs.iter().enumerate() {
            for (side, e) in [("from", &r.from), ("to", &r.to)] {
                if !self.clusters.contains_key(&e.cluster) {
                    return Err(format!(
                        "routes[{i}].{side}.cluster: no cluster named {:?}",
                        e.cluster
                    ));
                }
                if e.topic.is_empty() {
                    return Err(format!("routes[{i}].{side}.topic: empty"));
                }
            }
            if r.from == r.to {
                return Err(format!("routes[{i}]: from and to are the same topic"));
            }
        }
        Ok(())
    }

    /// Every direction to mirror: a `both` route is two.
    pub fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        for r in &self.route_specs {
            routes.push(Route {
                from: r.from.clone(),
                to: r.to.clone(),
            });
            if r.direction == Direction::Both {
                routes.push(Route {
                    from: r.to.clone(),
                    to: r.from.clone(),
                });
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_validates_and_expands_two_way_routes() {
        let text = r#"
            [clusters.a]
            kind = "strand"
            address = "127.0.0.1:7171"
            [clusters.b]
            kind = "kafka"
            bootstrap = "127.0.0.1:9092"
            properties = { "client.id" = "bridge" }
            [[routes]]
            from = { cluster = "a", topic = "orders" }
            to = { cluster = "b", topic = "orders" }
            direction = "both"
        "#;
        let config: BridgeConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let ids: Vec<String> = config.routes().iter().map(Route::id).collect();
        assert_eq!(ids, ["a/orders->b/orders", "b/orders->a/orders"]);
        let bad = text.replace("cluster = \"b\"", "cluster = \"c\"");
        let config: BridgeConfig = toml::from_str(&bad).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .contains("no cluster named \"c\""));
        assert!(
            toml::from_str::<BridgeConfig>(&text.replace("kind = \"strand\"", "kind = \"x\""))
                .is_err()
        );
    }
}
