//! Templates in participant URLs, headers and bodies, rendered with minijinja:
//! `{{ input.order_id }}`, `{{ steps.charge.output.payment_id }}`, `{{ saga_id }}`.
//!
//! Every string in a JSON body is a template. A string that is nothing but one `{{ expression }}`
//! becomes the expression's value with its JSON type (a number stays a number, an object an
//! object); any other string renders to a string. A reference to something that does not exist
//! is an error, never an empty string.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Most template instructions one render may run. Validation cannot see how long a template
/// runs: a loop over a repeated input list (`{% for x in input.items * 1000000000 %}`) passes
/// it and would hold a worker for minutes. Real templates run a few hundred instructions.
pub const RENDER_FUEL_MAX: u64 = 1_000_000;

/// Deepest nesting (loops, calls, includes) one render may reach.
pub const RENDER_RECURSION_MAX: usize = 64;

/// Most bytes one template's source may have (checked when a definition is validated).
pub const TEMPLATE_BYTES_MAX: usize = 16 * 1024;

/// Most bytes one render may produce: a string template's text, or all the strings and lone
/// expressions' JSON of one body together. A repeated string (`{{ "x" * 50000000 }}`) costs one
/// instruction of fuel; this is what stops it reaching a participant or the journal.
pub const RENDERED_BYTES_MAX: usize = 1 << 20;

/// One environment for every render: building one registers every builtin filter and test,
/// which costs more than rendering a small template.
fn environment() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(RENDER_FUEL_MAX));
        env.set_recursion_limit(RENDER_RECURSION_MAX);
        env
    })
}

/// Calls `f` with the path and text of every string in `value` (object keys excluded).
pub fn strings<'a>(value: &'a Value, path: &str, f: &mut impl FnMut(String, &'a str)) {
    match value {
        Value::String(s) => f(path.to_string(), s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{path}[{i}]"), f);
            }
        }
        Value::Object(fields) => {
            for (k, v) in fields {
                strings(v, &format!("{path}.{k}"), f);
            }
        }
        _ => {}
    }
}

/// The variables a template refers to, as dotted paths (`steps.charge.output.payment_id`).
pub fn references(source: &str) -> Result<Vec<String>, String> {
    let template = environment()
        .template_from_str(source)
        .map_err(|e| e.to_string())?;
    let mut refs: Vec<String> = template.undeclared_variables(true).into_iter().collect();
    refs.sort();
    Ok(refs)
}

/// The single expression a string consists of, if it is exactly `{{ expr }}`.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// Renders one string template to a string of at most [`RENDERED_BYTES_MAX`] bytes.
pub fn render_str(source: &str, context: &Value) -> Result<String, String> {
    let mut budget = RENDERED_BYTES_MAX;
    render_str_within(source, context, &mut budget)
}

fn render_str_within(source: &str, context: &Value, budget: &mut usize) -> Result<String, String> {
    // Text with no template syntax renders to itself (minijinja drops one trailing newline,
    // so such text still goes through it): no parse, no environment.
    if !source.contains('{') && !source.ends_with('\n') {
        spend(budget, source.len())?;
        return Ok(source.to_string());
    }
    let text = environment()
        .render_str(
            source,
            minijinja::Value::from(minijinja::value::Serde(context)),
        )
        .map_err(|e| format!("{e:#}"))?;
    spend(budget, text.len())?;
    Ok(text)
}

/// Most compiled lone expressions kept for reuse; past it the cache starts over.
const EXPRESSIONS_CACHED_MAX: usize = 4096;

type Compiled = std::sync::Arc<minijinja::Expression<'static, 'static>>;

/// `expr` compiled, from a cache: the same few expressions of the definitions render for every
/// step of every saga, and parsing one costs more than evaluating it.
fn compiled_expression(expr: &str) -> Result<Compiled, String> {
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Compiled>>,
    > = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().expect("expression cache").get(expr) {
        return Ok(c.clone());
    }
    let compiled = std::sync::Arc::new(
        environment()
            .compile_expression_owned(expr.to_string())
            .map_err(|e| format!("{e:#}"))?,
    );
    let mut cache = cache.lock().expect("expression cache");
    if cache.len() >= EXPRESSIONS_CACHED_MAX {
        cache.clear();
    }
    cache.insert(expr.to_string(), compiled.clone());
    Ok(compiled)
}

/// Takes `bytes` off what a render may still produce.
fn spend(budget: &mut usize, bytes: usize) -> Result<(), String> {
    *budget = budget
        .checked_sub(bytes)
        .ok_or_else(|| format!("the rendered text is larger than {RENDERED_BYTES_MAX} bytes"))?;
    Ok(())
}

/// Renders every string in `value`, keeping the type of lone expressions; all of it together
/// at most [`RENDERED_BYTES_MAX`] bytes.
pub fn render_value(value: &Value, context: &Value) -> Result<Value, String> {
    let mut budget = RENDERED_BYTES_MAX;
    render_value_within(value, context, &mut budget)
}

fn render_value_within(
    value: &Value,
    context: &Value,
    budget: &mut usize,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match sole_expression(s) {
            Some(expr) => {
                let compiled = compiled_expression(expr)?;
                let result = compiled
                    .eval(minijinja::Value::from(minijinja::value::Serde(context)))
                    .map_err(|e| format!("{e:#}"))?;
                if result.is_undefined() {
                    return Err(format!("{{{{ {expr} }}}} is undefined"));
                }
                let json = serde_json::to_value(&result).map_err(|e| e.to_string())?;
                spend(budget, crate::limits::json_len(&json))?;
                json
            }
            None => Value::String(render_str_within(s, context, budget)?),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value_within(v, context, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), render_value_within(v, context, budget)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "saga_id": "s1",
            "input": {"order_id": 42, "customer": {"name": "Ada"}},
            "steps": {"charge": {"output": {"payment_id": "p-7", "amount": 12.5}}}
        })
    }

    #[test]
    fn lone_expressions_keep_their_type_and_others_render_to_text() {
        let body = json!({
            "order": "{{ input.order_id }}",
            "customer": "{{input.customer}}",
            "payment": "{{ steps.charge.output.payment_id }}",
            "note": "order {{ input.order_id }} for {{ input.customer.name }}",
            "fixed": [1, true, null],
        });
        assert_eq!(
            render_value(&body, &context()).unwrap(),
            json!({
                "order": 42,
                "customer": {"name": "Ada"},
                "payment": "p-7",
                "note": "order 42 for Ada",
                "fixed": [1, true, null],
            })
        );
        assert_eq!(
            render_str(
                "http://pay/refund/{{ steps.charge.output.payment_id }}",
                &context()
            )
            .unwrap(),
            "http://pay/refund/p-7"
        );
    }

    /// Text without template syntax skips minijinja and cached expressions skip parsing; both
    /// must render exactly as minijinja itself does.
    #[test]
    fn plain_text_and_cached_expressions_render_as_minijinja_does() {
        for text in [
            "do",
            "",
            "a } b",
            "line\n",
            "two\n\n",
            "{ not a tag }",
            "{{ '{' }}",
        ] {
            let minijinja = environment()
                .render_str(
                    text,
                    minijinja::Value::from(minijinja::value::Serde(&context())),
                )
                .unwrap();
            assert_eq!(render_str(text, &context()).unwrap(), minijinja, "{text:?}");
        }
        for _ in 0..3 {
            assert_eq!(
                render_value(&json!("{{ input.order_id }}"), &context()).unwrap(),
                json!(42)
            );
            assert!(render_value(&json!("{{ input.nope }}"), &context()).is_err());
            assert!(render_value(&json!("{{ ( }}"), &context()).is_err());
        }
        let mut budget = 1;
        assert!(render_str_within("too long", &context(), &mut budget).is_err());
    }

    #[test]
    fn missing_references_are_errors() {
        assert!(render_value(&json!("{{ input.nope }}"), &context()).is_err());
        assert!(render_value(&json!("x {{ steps.ship.output.id }}"), &context()).is_err());
    }

    /// Found by hand while writing the saga_definition fuzz target, whose input it now is
    /// (fuzz/corpus/saga_definition/timeout-repeated-loop):
    /// a template that passes validation but loops two billion times when a step runs.
    #[test]
    fn a_runaway_template_fails_instead_of_running_for_minutes() {
        let started = std::time::Instant::now();
        let looping = "{% for x in input.items * 1000000000 %}{{ x }}{% endfor %}";
        let error = render_str(looping, &json!({"input": {"items": [1, 2]}})).unwrap_err();
        // minijinja 3 refuses the repetition itself; a loop it lets through runs out of fuel.
        assert!(error.contains("too large"), "{error}");
        let looping =
            "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}";
        let error = render_str(looping, &json!({})).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // An ordinary loop over the input still renders.
        assert_eq!(
            render_str(
                "{% for x in input.items %}{{ x }},{% endfor %}",
                &json!({"input": {"items": [1, 2]}})
            )
            .unwrap(),
            "1,2,"
        );
    }

    /// Found by the saga_definition fuzz target: repeating a sequence a huge number of times
    /// overflowed minijinja 2's length arithmetic (a panic in debug builds).
    #[test]
    fn a_sequence_repeated_past_usize_is_an_error() {
        let context = json!({"input": {"items": [1, 2, 3], "n": u64::MAX / 2}});
        for source in [
            "{% for x in input.items * 9223372036854775807 %}{% endfor %}",
            "{{ (input.items * input.n) | length }}",
            "{{ input.items * input.n }}",
        ] {
            assert!(render_str(source, &context).is_err(), "{source}");
        }
    }

    #[test]
    fn output_recursion_and_fuel_are_bounded() {
        let context = json!({"input": {"items": [1, 2]}});
        // One instruction, 50 MB of text: minijinja 3 charges it as fuel.
        let error = render_str("{{ 'x' * 50000000 }}", &context).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
        // A lone expression is evaluated without fuel: its size is what stops it.
        let error = render_value(&json!({"a": "{{ 'x' * 50000000 }}"}), &context).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
        // Many strings under the limit each, over it together.
        let half = format!("{{{{ 'x' * {} }}}}", RENDERED_BYTES_MAX / 2 + 1);
        let error = render_value(&json!([half, half]), &context).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
        assert!(render_value(&json!([half]), &context).is_ok());
        // Nested loops run out of fuel.
        let nested = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}";
        let error = render_str(nested, &context).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
        // A macro calling itself stops (at the recursion limit or out of fuel, whichever
        // comes first).
        let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let error = render_str(recursive, &context).unwrap_err();
        assert!(
            error.contains("recursion") || error.contains("fuel"),
            "{error}"
        );
    }

    #[test]
    fn references_are_listed_as_paths() {
        assert_eq!(
            references("{{ input.order_id }}/{{ steps.charge.output.payment_id }}").unwrap(),
            vec!["input.order_id", "steps.charge.output.payment_id"]
        );
        assert!(references("{{ input.x").is_err());
    }
}
