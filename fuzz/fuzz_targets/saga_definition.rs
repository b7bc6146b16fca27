//! A saga definition as a client submits it (`PUT /definitions/{name}`): JSON parsed into a
//! `DefinitionSpec` as the HTTP API does, validated, and, when valid, every template of every
//! step rendered as the engine renders them when a step runs. The input may carry the saga's
//! input after a NUL byte (`definition \0 input`), so templates meet varied data too; libFuzzer's
//! `-max_len` bounds both.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use strand_saga::definition::{self, DefinitionSpec, Participant};
use strand_saga::template;

fuzz_target!(|data: &[u8]| {
    let (definition, input) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(value) = serde_json::from_slice::<Value>(definition) else {
        return;
    };
    let Ok(spec) = serde_path_to_error::deserialize::<_, DefinitionSpec>(value) else {
        return;
    };
    if let Err(errors) = definition::validate(&spec) {
        assert!(!errors.is_empty());
        return;
    }
    let input = input
        .and_then(|i| serde_json::from_slice::<Value>(i).ok())
        .unwrap_or_else(|| json!({"order_id": 42, "customer": {"name": "Ada"}, "items": [1, 2]}));
    // Every step as if it had run and answered, so that every reference validation allowed
    // resolves.
    let steps: serde_json::Map<String, Value> = spec
        .steps
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!({"output": {"id": "x-1", "amount": 12.5}}),
            )
        })
        .collect();
    let context =
        json!({"saga_id": "0190f3c0-0000-7000-8000-000000000000", "input": input, "steps": steps});
    for step in &spec.steps {
        render(&step.action, &context);
        if let Some(compensation) = &step.compensation {
            render(compensation, &context);
        }
    }
});

/// What the engine does with a participant before calling it (`engine::render`).
fn render(p: &Participant, context: &Value) {
    let body = match p {
        Participant::Http {
            url, headers, body, ..
        } => {
            let _ = template::render_str(url, context);
            for v in headers.values() {
                let _ = template::render_str(v, context);
            }
            body
        }
        Participant::Broker { body, .. } => body,
    };
    if let Some(body) = body {
        let _ = template::render_value(body, context);
    }
}
