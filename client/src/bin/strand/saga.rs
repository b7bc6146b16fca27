//! `strand saga`: the saga orchestrator's HTTP API from the terminal (list, show a timeline,
//! start, abort, retry, definitions). It talks to `strand-saga` at `--saga-url`, with a bearer
//! token when one is given; an error answer is shown with the API's own message and exits 1.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the orchestrator is and how to ask it.
#[derive(Debug, Args)]
pub struct SagaArgs {
    /// The orchestrator's HTTP API.
    #[arg(
        long,
        env = "STRAND_SAGA_URL",
        default_value = "http://127.0.0.1:7190",
        global = true
    )]
    saga_url: String,
    /// Bearer token for an API with authentication on (sent as `Authorization: Bearer`).
    #[arg(long, env = "STRAND_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// How long one request may take, in seconds.
    #[arg(long, default_value_t = 30, global = true)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: SagaCommand,
}

#[derive(Debug, Subcommand)]
enum SagaCommand {
    /// Sagas, oldest first, filtered; one page unless --all.
    List {
        /// running, compensating, completed, compensated or failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        definition: Option<String>,
        /// Created at or after TIME: @MS (ms since the epoch) or @-N{s,m,h,d} (before now).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Created before TIME (as --from).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// An idempotency key, a saga id or an id's prefix.
        #[arg(long)]
        key: Option<String>,
        /// Sagas per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this saga id (the `next` a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page to the last.
        #[arg(long)]
        all: bool,
    },
    /// One saga: its steps, and a timeline of every attempt (action and compensation).
    Show { id: String },
    /// Starts a saga of DEFINITION (its latest version unless --version).
    Start {
        definition: String,
        /// The saga's input: JSON, or @FILE to read it from a file (@- for standard input).
        #[arg(long, default_value = "{}")]
        input: String,
        /// Idempotency key: starting again with it returns the saga it started.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Compensates a running saga now (before its pivot).
    Abort { id: String },
    /// Resumes a failed saga with a fresh attempt budget for the step that held it.
    Retry { id: String },
    /// Store, read and list saga definitions.
    Definitions {
        #[command(subcommand)]
        command: DefinitionsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DefinitionsCommand {
    /// Stores FILE (a definition's JSON) as the next version of NAME.
    Put {
        file: PathBuf,
        /// The definition's name [default: FILE's name without its extension].
        #[arg(long)]
        name: Option<String>,
    },
    /// A definition (its latest version unless --version).
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// The latest version of every definition, or every version of NAME.
    List { name: Option<String> },
}

/// A client of one orchestrator API.
struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the saga API at {}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let mut message = format!("{method} {path}: {status}");
        match value.get("error").and_then(Value::as_str) {
            Some(error) => message.push_str(&format!(": {error}")),
            None => {
                if let Some(text) = value.as_str().filter(|t| !t.is_empty()) {
                    message.push_str(&format!(": {text}"));
                }
            }
        }
        for d in value
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            message.push_str(&format!(
                "\n  {}: {}",
                d["path"].as_str().unwrap_or_default(),
                d["reason"].as_str().unwrap_or_default()
            ));
        }
        bail!(message)
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, query, None).await
    }
}

pub async fn run(args: SagaArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        base: args.saga_url.trim_end_matches('/').to_string(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        http,
    };
    let json = args.json;
    match args.command {
        SagaCommand::List {
            state,
            definition,
            from,
            to,
            key,
            limit,
            cursor,
            all,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(state.map(|s| ("state", s)));
            query.extend(definition.map(|d| ("definition", d)));
            query.extend(key.map(|k| ("search", k)));
            if let Some(t) = from {
                query.push(("created_from_ms", time(&t)?.to_string()));
            }
            if let Some(t) = to {
                query.push(("created_to_ms", time(&t)?.to_string()));
            }
            list(&api, query, cursor, all, json).await
        }
        SagaCommand::Show { id } => {
            let saga = api.get(&format!("/sagas/{}", segment(&id)), &[]).await?;
            if json {
                return print_json(&saga);
            }
            // The definition version it runs, for each step's kind (the pivot); a saga whose
            // definition cannot be read is still shown.
            let kinds = match api
                .get(
                    &format!(
                        "/definitions/{}/versions/{}",
                        segment(saga["definition"].as_str().unwrap_or_default()),
                        saga["version"]
                    ),
                    &[],
                )
                .await
            {
                Ok(def) => def["steps"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .map(|st| st["kind"].as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            print!("{}", render_saga(&saga, &kinds));
            Ok(())
        }
        SagaCommand::Start {
            definition,
            input,
            key,
            version,
        } => {
            let input = read_input(&input)?;
            let mut body = json!({"definition": definition, "input": input});
            if let Some(k) = key {
                body["idempotency_key"] = json!(k);
            }
            if let Some(v) = version {
                body["version"] = json!(v);
            }
            let saga = api
                .call(reqwest::Method::POST, "/sagas", &[], Some(&body))
                .await?;
            if json {
                return print_json(&saga);
            }
            println!(
                "{}\t{}",
                saga["id"].as_str().unwrap_or_default(),
                saga["state"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        SagaCommand::Abort { id } => operate(&api, &id, "abort", json).await,
        SagaCommand::Retry { id } => operate(&api, &id, "retry", json).await,
        SagaCommand::Definitions { command } => definitions(&api, command, json).await,
    }
}

async fn list(
    api: &Api,
    query: Vec<(&str, String)>,
    mut cursor: Option<String>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut header = !json;
    loop {
        let mut q = query.clone();
        q.extend(cursor.clone().map(|c| ("cursor", c)));
        let page = api.get("/sagas", &q).await?;
        let next = page["next_cursor"].as_str().map(str::to_string);
        if json {
            // One page per line with --all, so each is a JSON document a tool can read.
            println!("{page}");
        } else {
            let mut rows = Vec::new();
            if header {
                rows.push(
                    ["ID", "DEFINITION", "STATE", "KEY", "CREATED", "TOOK"]
                        .map(String::from)
                        .to_vec(),
                );
                header = false;
            }
            for s in page["sagas"].as_array().into_iter().flatten() {
                let created = s["created_at_ms"].as_i64().unwrap_or(0);
                let updated = s["updated_at_ms"].as_i64().unwrap_or(created);
                let state = s["state"].as_str().unwrap_or_default();
                let finished = matches!(state, "completed" | "compensated");
                rows.push(vec![
                    s["id"].as_str().unwrap_or_default().to_string(),
                    format!(
                        "{} v{}",
                        s["definition"].as_str().unwrap_or_default(),
                        s["version"]
                    ),
                    state.to_string(),
                    s["idempotency_key"].as_str().unwrap_or("-").to_string(),
                    utc(created),
                    if finished {
                        duration(updated - created)
                    } else {
                        "-".into()
                    },
                ]);
            }
            print!("{}", table(&rows));
            if !all {
                let counts = page["counts"]
                    .as_object()
                    .map(|c| {
                        c.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                if !counts.is_empty() {
                    eprintln!("counts: {counts}");
                }
                if let Some(n) = &next {
                    eprintln!("next page: --cursor {n}");
                }
            }
        }
        match next {
            Some(n) if all => cursor = Some(n),
            _ => return Ok(()),
        }
    }
}

async fn operate(api: &Api, id: &str, action: &str, json: bool) -> anyhow::Result<()> {
    let saga = api
        .call(
            reqwest::Method::POST,
            &format!("/sagas/{}/{action}", segment(id)),
            &[],
            None,
        )
        .await?;
    if json {
        return print_json(&saga);
    }
    println!(
        "{}\t{}",
        saga["id"].as_str().unwrap_or(id),
        saga["state"].as_str().unwrap_or_default()
    );
    Ok(())
}

async fn definitions(api: &Api, command: DefinitionsCommand, json: bool) -> anyhow::Result<()> {
    match command {
        DefinitionsCommand::Put { file, name } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let spec: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
                    .context("give the definition's name with --name")?,
            };
            let def = api
                .call(
                    reqwest::Method::PUT,
                    &format!("/definitions/{}", segment(&name)),
                    &[],
                    Some(&spec),
                )
                .await?;
            if json {
                return print_json(&def);
            }
            println!(
                "{} version {}",
                def["name"].as_str().unwrap_or(&name),
                def["version"]
            );
            Ok(())
        }
        DefinitionsCommand::Get { name, version } => {
            let path = match version {
                Some(v) => format!("/definitions/{}/versions/{v}", segment(&name)),
                None => format!("/definitions/{}", segment(&name)),
            };
            // A definition is JSON whatever the output asked for.
            print_json(&api.get(&path, &[]).await?)
        }
        DefinitionsCommand::List { name } => {
            let all = match &name {
                Some(n) => {
                    api.get(&format!("/definitions/{}/versions", segment(n)), &[])
                        .await?
                }
                None => api.get("/definitions", &[]).await?,
            };
            if json {
                return print_json(&all);
            }
            let mut rows = vec![["NAME", "VERSION", "STEPS", "DESCRIPTION"]
                .map(String::from)
                .to_vec()];
            for d in all.as_array().into_iter().flatten() {
                let steps: Vec<&str> = d["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["name"].as_str())
                    .collect();
                rows.push(vec![
                    d["name"].as_str().unwrap_or_default().to_string(),
                    d["version"].to_string(),
                    steps.join(","),
                    d["description"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `--input`: JSON, or `@FILE` (`@-`: standard input).
fn read_input(input: &str) -> anyhow::Result<Value> {
    let text = match input.strip_prefix('@') {
        Some("-") => std::io::read_to_string(std::io::stdin()).context("reading standard input")?,
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => input.to_string(),
    };
    serde_json::from_str(&text).context("--input is not JSON")
}

/// A time flag: `@MS`, `@-N{s,m,h,d}`, or the same without the `@`.
fn time(spec: &str) -> anyhow::Result<i64> {
    let spec = if spec.starts_with('@') {
        spec.to_string()
    } else {
        format!("@{spec}")
    };
    Ok(super::parse_time(&spec)?.expect("starts with @"))
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Rows as columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            if widths.len() <= i {
                widths.push(w);
            } else {
                widths[i] = widths[i].max(w);
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A saga for the terminal: what it is, its steps, and every attempt in time order.
fn render_saga(saga: &Value, kinds: &[String]) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let created = saga["created_at_ms"].as_i64().unwrap_or(0);
    let updated = saga["updated_at_ms"].as_i64().unwrap_or(created);
    let state = s(&saga["state"]);
    let mut out = format!(
        "saga        {}\ndefinition  {} v{}\nstate       {}\n",
        s(&saga["id"]),
        s(&saga["definition"]),
        saga["version"],
        state
    );
    if let Some(k) = saga["idempotency_key"].as_str() {
        out.push_str(&format!("key         {k}\n"));
    }
    if let Some(l) = saga["lock"].as_str() {
        out.push_str(&format!("lock        {l}\n"));
    }
    out.push_str(&format!("created     {}\n", utc(created)));
    if matches!(state.as_str(), "completed" | "compensated") {
        out.push_str(&format!(
            "finished    {} (took {})\n",
            utc(updated),
            duration(updated - created)
        ));
    } else {
        out.push_str(&format!("updated     {}\n", utc(updated)));
    }
    if let Some(r) = saga["compensation_reason"].as_str() {
        out.push_str(&format!("compensated because: {r}\n"));
    }
    if let Some(e) = saga["error"].as_str() {
        out.push_str(&format!(
            "held because: {e}\n  (`strand saga retry` attempts the held step again with a fresh budget)\n"
        ));
    }
    out.push_str(&format!("input       {}\n", saga["input"]));
    let steps = saga["steps"].as_array().cloned().unwrap_or_default();
    out.push_str("\nsteps\n");
    let mut rows = vec![["  STEP", "KIND", "STATE", "ATTEMPTS", "OUTPUT / ERROR"]
        .map(String::from)
        .to_vec()];
    for (i, st) in steps.iter().enumerate() {
        let detail = match (st["error"].as_str(), &st["output"]) {
            (Some(e), _) => format!("error: {e}"),
            (None, Value::Null) => String::new(),
            (None, output) => output.to_string(),
        };
        rows.push(vec![
            format!("  {}", s(&st["name"])),
            kinds.get(i).cloned().unwrap_or_default(),
            s(&st["state"]),
            st["attempts"].as_array().map_or(0, Vec::len).to_string(),
            detail,
        ]);
    }
    out.push_str(&table(&rows));
    // Every attempt, in the order they started.
    let mut attempts = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        for a in st["attempts"].as_array().into_iter().flatten() {
            attempts.push((a["started_at_ms"].as_i64().unwrap_or(0), i, a.clone()));
        }
    }
    attempts.sort_by_key(|(at, i, _)| (*at, *i));
    out.push_str("\ntimeline\n");
    let mut rows = Vec::new();
    for (at, i, a) in &attempts {
        let name = s(&steps[*i]["name"]);
        let pivot = if kinds.get(*i).map(String::as_str) == Some("pivot") {
            " (pivot)"
        } else {
            ""
        };
        let took = match a["ended_at_ms"].as_i64() {
            Some(end) => duration(end - at),
            None => "…".into(),
        };
        let mut outcome = a["outcome"].as_str().unwrap_or("in flight").to_string();
        if let Some(e) = a["error"].as_str() {
            outcome.push_str(&format!(": {e}"));
        }
        rows.push(vec![
            format!("  +{}", duration(at - created)),
            format!("{name}{pivot}"),
            s(&a["phase"]),
            format!("#{}", a["attempt"]),
            took,
            outcome,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// A span of milliseconds, short: 850ms, 1.2s, 3m04s, 2h10m.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// Milliseconds since the epoch as an ISO 8601 UTC time.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms.rem_euclid(1_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_764_700_000_000), "2025-12-02T18:26:40.000Z");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(1_240), "1.2s");
        assert_eq!(duration(184_000), "3m04s");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("order v1/x"), "order%20v1%2Fx");
        assert_eq!(segment("a.b-c_d"), "a.b-c_d");
    }
}
