//! The three participant services of the order saga in one small HTTP server (orders, payments,
//! inventory), for trying `strand-saga` by hand:
//!
//! ```text
//! cargo run --release -p strand-saga --example order_services [ADDR]   # default 127.0.0.1:7200
//! ```
//!
//! Every effect is applied once per `Idempotency-Key` (a repeat gets the first answer back), as
//! a participant of an at-least-once orchestrator must. A refund names the charge it undoes by
//! the charge's idempotency key (`{{ action_key }}`), so it works when the charge timed out and
//! its payment id never reached the orchestrator; a refund that arrives before its charge
//! ("undo before do") leaves a mark that refuses the charge when it comes. Inventory refuses the
//! sku `out-of-stock`. `GET /ledger` lists what was applied, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Services {
    /// Idempotency key to the answer given.
    answered: HashMap<String, (StatusCode, Value)>,
    ledger: Vec<String>,
    next_id: u64,
    /// Charge idempotency key to the payment it made.
    charges: HashMap<String, String>,
    /// Charge keys refunded before any charge arrived: such a charge is refused.
    refunded_first: std::collections::HashSet<String>,
}

type Shared = Arc<Mutex<Services>>;

/// Applies `effect` once per idempotency key and logs it.
fn once(
    services: &Shared,
    headers: &HeaderMap,
    effect: impl FnOnce(&mut Services) -> (StatusCode, Value),
) -> (StatusCode, Json<Value>) {
    let key = key_of(headers);
    let mut s = services.lock().expect("lock");
    if let Some((status, answer)) = s.answered.get(&key) {
        return (*status, Json(answer.clone()));
    }
    let (status, answer) = effect(&mut s);
    println!(
        "{} {key} -> {status} {answer}",
        s.ledger.last().map_or("", |l| l.as_str())
    );
    if !key.is_empty() {
        s.answered.insert(key, (status, answer.clone()));
    }
    (status, Json(answer))
}

fn key_of(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn text(body: &Value, field: &str) -> String {
    match &body[field] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7200".into());
    let services: Shared = Arc::default();
    let app = Router::new()
        .route(
            "/orders",
            post(
                |State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>| async move {
                    once(&s, &h, |s| {
                        s.ledger
                            .push(format!("order {} created", text(&b, "order_id")));
                        (
                            StatusCode::OK,
                            json!({"order_id": b["order_id"], "status": "created"}),
                        )
                    })
                },
            ),
        )
        .route(
            "/orders/cancel",
            post(
                |State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>| async move {
                    once(&s, &h, |s| {
                        s.ledger
                            .push(format!("order {} cancelled", text(&b, "order_id")));
                        (
                            StatusCode::OK,
                            json!({"order_id": b["order_id"], "status": "cancelled"}),
                        )
                    })
                },
            ),
        )
        .route(
            "/payments/charge",
            post(
                |State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>| async move {
                    let key = key_of(&h);
                    once(&s, &h, |s| {
                        if s.refunded_first.contains(&key) {
                            return (
                                StatusCode::CONFLICT,
                                json!({"error": "this charge was refunded before it arrived"}),
                            );
                        }
                        s.next_id += 1;
                        let id = format!("pay-{}", s.next_id);
                        s.ledger.push(format!(
                            "payment {id} charged {} for order {}",
                            text(&b, "amount"),
                            text(&b, "order_id")
                        ));
                        s.charges.insert(key, id.clone());
                        (StatusCode::OK, json!({"payment_id": id}))
                    })
                },
            ),
        )
        .route(
            "/payments/refund",
            post(
                |State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>| async move {
                    once(&s, &h, |s| {
                        let charge_key = text(&b, "charge_key");
                        match s.charges.get(&charge_key).cloned() {
                            Some(id) => {
                                s.ledger.push(format!("payment {id} refunded"));
                                (
                                    StatusCode::OK,
                                    json!({"payment_id": id, "status": "refunded"}),
                                )
                            }
                            None => {
                                s.refunded_first.insert(charge_key);
                                (StatusCode::OK, json!({"status": "nothing was charged"}))
                            }
                        }
                    })
                },
            ),
        )
        .route(
            "/inventory/reserve",
            post(
                |State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>| async move {
                    once(&s, &h, |s| {
                        if b["sku"] == "out-of-stock" {
                            s.ledger
                                .push(format!("inventory refused order {}", text(&b, "order_id")));
                            return (StatusCode::CONFLICT, json!({"error": "out of stock"}));
                        }
                        s.ledger.push(format!(
                            "inventory reserved {} for order {}",
                            text(&b, "sku"),
                            text(&b, "order_id")
                        ));
                        (StatusCode::OK, json!({"reserved": b["sku"]}))
                    })
                },
            ),
        )
        .route(
            "/inventory/release",
            post(
                |State(s): State<Shared>, h: HeaderMap, Json(b): Json<Value>| async move {
                    once(&s, &h, |s| {
                        s.ledger.push(format!(
                            "inventory released for order {}",
                            text(&b, "order_id")
                        ));
                        (StatusCode::OK, json!({"released": true}))
                    })
                },
            ),
        )
        .route(
            "/ledger",
            get(|State(s): State<Shared>| async move {
                Json(json!(s.lock().expect("lock").ledger.clone()))
            }),
        )
        .with_state(services);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("order services (orders, payments, inventory) on http://{addr}");
    axum::serve(listener, app).await
}
