//! The orchestrator: one task that owns every saga and definition and feeds the engine, with
//! the IO around it. Requests (from HTTP, triggers), participant replies and timers arrive as
//! messages; each produces journal entries, which are appended in order, and only once they
//! are durable does a spawned task act on them (call participants, publish outcomes, answer
//! the request). A journal that cannot be written stops the orchestrator: a restart replays
//! what is durable, and nothing was done that the journal does not know of.
//!
//! The task drives the sagas of the journal partitions this instance owns ([`Ownership`]):
//! taking a partition over recovers its sagas from snapshots and journal and resumes them;
//! giving one up makes its state durable and drops its sagas. A request for a saga of a
//! partition owned elsewhere is answered with [`ApiError::Elsewhere`], which the HTTP layer
//! forwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use strand_cluster::{Cluster, MirroredRecord, TopicKind};
use tokio::sync::{mpsc, oneshot, watch};
use utoipa::ToSchema;

use crate::breaker::{Breaker, BreakerConfig};
use crate::definition::{self, Definition, DefinitionSpec, FieldError, Participant};
use crate::engine::{Call, EngineError, Entry, Event, Input, Saga, SagaState};
use crate::journal::{Journal, JournalError};
use crate::ownership::{self, Ownership, Routes};
use crate::participants::{self, Participants, ParticipantsConfig, Reply};
use crate::triggers;

/// Why a request could not be served; `http` maps each to a status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid definition")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    /// The saga belongs to a journal partition another instance drives (`owner`, its API
    /// address, when known).
    #[error("journal partition {partition} is driven by {}", owner.as_deref().unwrap_or("no instance right now (instances are rebalancing); retry"))]
    Elsewhere {
        partition: u32,
        owner: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub journal_partitions: u32,
    /// How often changed sagas are snapshotted (bounding the journal read at a restart).
    pub snapshot_interval: Duration,
    pub breaker: BreakerConfig,
    /// Consumer group the orchestrator reads broker participants' replies in.
    pub reply_group: String,
    /// This instance's name among those sharing the journal.
    pub instance_id: String,
    /// Where other instances reach this one's HTTP API (`http://host:port`).
    pub api_url: String,
    /// Requests waiting for the orchestrator at most; more are refused with 503.
    pub queue_max: usize,
    /// Finished sagas kept in memory (for `GET /sagas`); older ones are dropped once their
    /// final state is in a snapshot, which keeps memory bounded in a long-running process.
    pub finished_in_memory_max: usize,
    /// Which hosts HTTP participants may be on, and how HTTPS ones are reached.
    pub participants: ParticipantsConfig,
    /// A file with the bearer token presented when a trigger's saga is forwarded to the
    /// instance owning its partition (whose API may require one); read at each forward.
    pub forward_token_file: Option<std::path::PathBuf>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            journal_partitions: 8,
            snapshot_interval: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
            reply_group: "strand-saga".into(),
            instance_id: "strand-saga".into(),
            api_url: "http://127.0.0.1:7190".into(),
            queue_max: 10_000,
            finished_in_memory_max: 100_000,
            participants: ParticipantsConfig::default(),
            forward_token_file: None,
        }
    }
}

/// `POST /sagas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub definition: String,
    /// The latest version when absent.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// A repeated start with the same key returns the saga it started.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A saga in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaSummary {
    pub id: String,
    pub definition: String,
    pub version: u32,
    pub state: SagaState,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<&Saga> for SagaSummary {
    fn from(s: &Saga) -> SagaSummary {
        SagaSummary {
            id: s.id.clone(),
            definition: s.definition.clone(),
            version: s.version,
            state: s.state,
            idempotency_key: s.idempotency_key.clone(),
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<SagaState>,
    pub definition: Option<String>,
    pub limit: usize,
    /// Sagas after this id (ids grow with creation time).
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaPage {
    pub sagas: Vec<SagaSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// What a finished saga publishes on its definition's outcome topic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    pub saga_id: String,
    pub definition: String,
    pub version: u32,
    pub state: SagaState,
    pub idempotency_key: Option<String>,
}

type Respond<T> = oneshot::Sender<Result<T, ApiError>>;

enum Command {
    PutDefinition(String, Box<DefinitionSpec>, Respond<Definition>),
    GetDefinition(String, Option<u32>, Respond<Definition>),
    ListDefinitions(Respond<Vec<Definition>>),
    Start(StartRequest, Respond<(Saga, bool)>),
    Get(String, Respond<Saga>),
    List(ListQuery, Respond<SagaPage>),
    Abort(String, Respond<Saga>),
    Retry(String, Respond<Saga>),
    /// A finished saga's outcome is on its topic.
    OutcomePublished(String),
    /// A definition stored (by this or another instance).
    DefinitionSeen(Box<Definition>),
}

/// Sends requests to the orchestrator task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    participants: Arc<Participants>,
    /// Forwards requests to other instances.
    pub(crate) http: reqwest::Client,
    forward_token_file: Option<std::path::PathBuf>,
    instance_id: String,
    owned: watch::Receiver<Vec<u32>>,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(Respond<T>) -> Command) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::Unavailable("the orchestrator is overloaded; retry later".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Unavailable("the orchestrator stopped".into())
            }
        })?;
        rx.await
            .map_err(|_| ApiError::Unavailable("the orchestrator stopped".into()))?
    }

    pub async fn put_definition(
        &self,
        name: String,
        spec: DefinitionSpec,
    ) -> Result<Definition, ApiError> {
        self.participants
            .check_definition(&spec)
            .map_err(ApiError::BadRequest)?;
        self.ask(|r| Command::PutDefinition(name, Box::new(spec), r))
            .await
    }

    pub async fn definition(
        &self,
        name: String,
        version: Option<u32>,
    ) -> Result<Definition, ApiError> {
        self.ask(|r| Command::GetDefinition(name, version, r)).await
    }

    pub async fn definitions(&self) -> Result<Vec<Definition>, ApiError> {
        self.ask(Command::ListDefinitions).await
    }

    /// Starts a saga (or finds the one its idempotency key started); answers once `Started`
    /// is durable. The flag is true when a new saga was started.
    pub async fn start(&self, request: StartRequest) -> Result<(Saga, bool), ApiError> {
        self.ask(|r| Command::Start(request, r)).await
    }

    /// Starts a saga here or, when its key belongs to a partition another instance drives,
    /// through that instance's API.
    pub async fn start_anywhere(&self, request: StartRequest) -> Result<(), ApiError> {
        match self.start(request.clone()).await {
            Err(ApiError::Elsewhere {
                owner: Some(api), ..
            }) => {
                let body = serde_json::to_vec(&request).expect("requests serialize");
                let authorization = self.forward_authorization().await?;
                let (status, body) = crate::http::forward(
                    &self.http,
                    &api,
                    reqwest::Method::POST,
                    "/sagas",
                    Some(body),
                    authorization.as_ref(),
                )
                .await?;
                if status.is_success() {
                    return Ok(());
                }
                let message = serde_json::from_slice::<crate::http::ErrorBody>(&body)
                    .map_or_else(|_| format!("{api} answered {status}"), |e| e.error);
                Err(match status.as_u16() {
                    404 => ApiError::NotFound(message),
                    409 => ApiError::Conflict(message),
                    400 | 413 | 422 => ApiError::BadRequest(message),
                    _ => ApiError::Unavailable(message),
                })
            }
            other => other.map(|_| ()),
        }
    }

    /// `Bearer <token>` from the forward token file, when one is configured.
    async fn forward_authorization(
        &self,
    ) -> Result<Option<reqwest::header::HeaderValue>, ApiError> {
        let Some(path) = &self.forward_token_file else {
            return Ok(None);
        };
        let unavailable = |why: String| {
            ApiError::Unavailable(format!("forward token file {}: {why}", path.display()))
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", text.trim()))
            .map_err(|_| unavailable("not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    pub async fn get(&self, id: String) -> Result<Saga, ApiError> {
        self.ask(|r| Command::Get(id, r)).await
    }

    pub async fn list(&self, query: ListQuery) -> Result<SagaPage, ApiError> {
        self.ask(|r| Command::List(query, r)).await
    }

    pub async fn abort(&self, id: String) -> Result<Saga, ApiError> {
        self.ask(|r| Command::Abort(id, r)).await
    }

    pub async fn retry(&self, id: String) -> Result<Saga, ApiError> {
        self.ask(|r| Command::Retry(id, r)).await
    }

    pub fn breakers(&self) -> BTreeMap<String, Breaker> {
        self.participants.breakers()
    }

    /// This instance's name and the journal partitions it drives now.
    pub fn ownership(&self) -> (String, Vec<u32>) {
        (self.instance_id.clone(), self.owned.borrow().clone())
    }
}

/// Reads the definitions and starts the orchestrator task, which drives the sagas of the
/// journal partitions `ownership` gives it. The returned future ends when shutdown is signalled
/// (after a last checkpoint) or when the journal fails.
pub async fn start(
    journal: Journal,
    config: OrchestratorConfig,
    ownership: mpsc::UnboundedReceiver<Ownership>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Handle, tokio::task::JoinHandle<Result<(), JournalError>>), JournalError> {
    let cluster = journal.cluster().clone();
    let (reply_tx, reply_rx) = mpsc::unbounded_channel();
    let participants = Arc::new(Participants::new(
        cluster.clone(),
        config.breaker,
        config.participants.clone(),
        reply_tx.clone(),
    ));
    let (tx, rx) = mpsc::channel(config.queue_max.max(1));
    let (owned_tx, owned_rx) = watch::channel(Vec::new());
    let handle = Handle {
        instance_id: config.instance_id.clone(),
        owned: owned_rx,
        tx: tx.clone(),
        participants: participants.clone(),
        forward_token_file: config.forward_token_file.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS settings builds"),
    };
    let (reply_topics_tx, reply_topics_rx) = watch::channel(BTreeSet::new());
    tokio::spawn(participants::consume_replies(
        cluster.clone(),
        config.reply_group.clone(),
        reply_topics_rx,
        reply_tx,
        shutdown.clone(),
    ));
    let routes = Arc::new(Routes::default());
    tokio::spawn(routes.clone().follow(cluster.clone(), shutdown.clone()));
    let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
    let mut orchestrator = Orchestrator {
        journal,
        participants,
        cluster: cluster.clone(),
        definitions: BTreeMap::new(),
        sagas: BTreeMap::new(),
        by_key: HashMap::new(),
        timers: BTreeSet::new(),
        wakeups: HashMap::new(),
        dirty: HashSet::new(),
        reply_topics: reply_topics_tx,
        triggers: triggers::Triggers::new(cluster.clone(), handle.clone(), shutdown.clone()),
        commands: tx.clone(),
        fatal: fatal_tx,
        finished: std::collections::VecDeque::new(),
        finished_max: config.finished_in_memory_max.max(1),
        owned: BTreeSet::new(),
        owned_tx,
        routes,
        instance_id: config.instance_id.clone(),
        api_url: config.api_url.clone(),
    };
    let (definitions, next) = orchestrator.journal.definitions().await?;
    for d in definitions {
        orchestrator.install_definition(Arc::new(d));
    }
    tokio::spawn(follow_definitions(cluster, next, tx, shutdown.clone()));
    let task = tokio::spawn(orchestrator.run(rx, reply_rx, fatal_rx, ownership, config, shutdown));
    Ok((handle, task))
}

/// Definitions other instances store reach this one.
async fn follow_definitions(
    cluster: Arc<Cluster>,
    from: u64,
    commands: mpsc::Sender<Command>,
    shutdown: watch::Receiver<bool>,
) {
    let topic = crate::journal::DEFINITION_TOPIC;
    crate::journal::follow(&cluster, topic, from, shutdown, |record| {
        let commands = commands.clone();
        async move {
            match Journal::definition_record(&record) {
                Ok(Some(d)) => commands
                    .send(Command::DefinitionSeen(Box::new(d)))
                    .await
                    .is_ok(),
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "a definition record that does not parse");
                    true
                }
            }
        }
    })
    .await
}

struct Orchestrator {
    journal: Journal,
    participants: Arc<Participants>,
    cluster: Arc<Cluster>,
    definitions: BTreeMap<String, Vec<Arc<Definition>>>,
    sagas: BTreeMap<String, Saga>,
    /// Idempotency key to saga id.
    by_key: HashMap<String, String>,
    timers: BTreeSet<(i64, String)>,
    wakeups: HashMap<String, i64>,
    /// Sagas changed since the last checkpoint.
    dirty: HashSet<String>,
    reply_topics: watch::Sender<BTreeSet<String>>,
    triggers: triggers::Triggers,
    commands: mpsc::Sender<Command>,
    fatal: mpsc::UnboundedSender<JournalError>,
    /// Finished sagas in the order they finished, for eviction.
    finished: std::collections::VecDeque<String>,
    finished_max: usize,
    /// Journal partitions this instance drives.
    owned: BTreeSet<u32>,
    owned_tx: watch::Sender<Vec<u32>>,
    routes: Arc<Routes>,
    instance_id: String,
    api_url: String,
}

/// Effects to run once a batch of entries is durable.
#[derive(Default)]
struct Effects {
    calls: Vec<Call>,
    outcomes: Vec<(String, Outcome)>,
}

impl Orchestrator {
    /// Takes partitions over: their sagas from snapshots and journal, resumed.
    async fn assigned(&mut self, partitions: Vec<u32>) -> Result<(), JournalError> {
        let partitions: Vec<u32> = partitions
            .into_iter()
            .filter(|p| !self.owned.contains(p))
            .collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let recovered = self.journal.recover(&partitions).await?;
        let n_snapshots = recovered.snapshots.len();
        let mut taken = Vec::new();
        for mut saga in recovered.snapshots {
            let Some(def) = self.find_definition(&saga.definition, Some(saga.version)) else {
                tracing::error!(saga = %saga.id, definition = %saga.definition, "snapshot of a saga whose definition is gone");
                continue;
            };
            saga.attach(def);
            taken.push(saga.id.clone());
            self.sagas.insert(saga.id.clone(), saga);
        }
        let n_entries = recovered.entries.len();
        for entry in recovered.entries {
            if let Event::Started {
                definition,
                version,
                ..
            } = &entry.event
            {
                if self.sagas.contains_key(&entry.saga_id) {
                    continue; // already in a snapshot
                }
                let Some(def) = self.find_definition(definition, Some(*version)) else {
                    tracing::error!(saga = %entry.saga_id, %definition, "journal names an unknown definition");
                    continue;
                };
                let mut saga = Saga::new(entry.saga_id.clone(), def);
                saga.apply(&entry);
                taken.push(saga.id.clone());
                self.sagas.insert(saga.id.clone(), saga);
            } else if let Some(saga) = self.sagas.get_mut(&entry.saga_id) {
                saga.apply(&entry);
            } else {
                tracing::warn!(saga = %entry.saga_id, "journal entry of an unknown saga");
            }
        }
        self.owned.extend(partitions.iter().copied());
        let mut finished: Vec<(i64, String)> = Vec::new();
        let mut unfinished = Vec::new();
        let mut pending = Vec::new();
        for id in &taken {
            let saga = &self.sagas[id];
            if saga.state.is_finished() {
                finished.push((saga.updated_at_ms, id.clone()));
                if !saga.outcome_published && self.outcome_topic(saga).is_some() {
                    pending.push(id.clone());
                }
            } else {
                unfinished.push(id.clone());
            }
            self.index(id);
        }
        finished.sort();
        self.finished.extend(finished.into_iter().map(|(_, id)| id));
        // Resume every unfinished saga: resend what was in flight (same idempotency keys), and
        // take whatever step is due.
        for id in &unfinished {
            self.drive(id, Input::Redispatch).await.ok();
            self.drive(id, Input::Tick).await.ok();
        }
        // Outcomes that may not have been published before the stop.
        for id in pending {
            if let Some((topic, outcome)) = self.sagas.get(&id).and_then(|s| self.outcome(s)) {
                self.publish_later(Effects {
                    calls: Vec::new(),
                    outcomes: vec![(topic, outcome)],
                });
            }
        }
        tracing::info!(
            ?partitions,
            snapshots = n_snapshots,
            journal_entries = n_entries,
            resumed = unfinished.len(),
            "journal partitions taken over"
        );
        self.announce();
        Ok(())
    }

    /// Gives partitions up: everything of theirs durable (a last checkpoint), their sagas
    /// dropped. The next owner starts from there.
    async fn revoked(&mut self, partitions: Vec<u32>) -> Result<(), JournalError> {
        let partitions: Vec<u32> = partitions
            .into_iter()
            .filter(|p| self.owned.contains(p))
            .collect();
        if partitions.is_empty() {
            return Ok(());
        }
        self.checkpoint_partitions(&partitions).await?;
        let gone: Vec<String> = self
            .sagas
            .keys()
            .filter(|id| partitions.contains(&self.journal.partition_of(id)))
            .cloned()
            .collect();
        for id in &gone {
            if let Some(saga) = self.sagas.remove(id) {
                if let Some(key) = &saga.idempotency_key {
                    self.by_key.remove(key);
                }
            }
            self.schedule(id.clone(), None);
        }
        let gone_set: HashSet<&String> = gone.iter().collect();
        self.finished.retain(|id| !gone_set.contains(id));
        for p in &partitions {
            self.owned.remove(p);
        }
        tracing::info!(
            ?partitions,
            sagas = gone.len(),
            "journal partitions given up"
        );
        self.announce();
        Ok(())
    }

    /// Tells the other instances (and `/health`) which partitions this one drives.
    fn announce(&self) {
        let _ = self.owned_tx.send(self.owned.iter().copied().collect());
        let cluster = self.cluster.clone();
        let (instance, api) = (self.instance_id.clone(), self.api_url.clone());
        let owned: Vec<u32> = self.owned.iter().copied().collect();
        tokio::spawn(async move { ownership::announce(&cluster, &instance, &api, owned).await });
    }

    /// `Elsewhere` unless this instance drives the partition of `key`.
    fn owns(&self, key: &str) -> Result<u32, ApiError> {
        let partition = self.journal.partition_of(key);
        if self.owned.contains(&partition) {
            return Ok(partition);
        }
        let owner = self
            .routes
            .owner(partition)
            .filter(|(instance, _)| *instance != self.instance_id)
            .map(|(_, api)| api);
        Err(ApiError::Elsewhere { partition, owner })
    }

    /// As [`Orchestrator::owns`] for a saga id; something that is no saga id is nowhere (and is
    /// never forwarded).
    fn owns_saga(&self, id: &str) -> Result<u32, ApiError> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(ApiError::NotFound(format!("{id:?} is not a saga id")));
        }
        self.owns(id)
    }

    /// A new saga id in `partition` (ids stay time-ordered UUIDv7s).
    fn new_id(&self, partition: u32) -> String {
        loop {
            let id = uuid::Uuid::now_v7().to_string();
            if self.journal.partition_of(&id) == partition {
                return id;
            }
        }
    }

    /// Indexes a saga in memory: its idempotency key and its next wakeup.
    fn index(&mut self, id: &str) {
        let Some(saga) = self.sagas.get(id) else {
            return;
        };
        let (key, wakeup) = (saga.idempotency_key.clone(), saga.next_wakeup_ms());
        if let Some(key) = key {
            self.by_key.insert(key, id.to_string());
        }
        self.schedule(id.to_string(), wakeup);
    }

    fn find_definition(&self, name: &str, version: Option<u32>) -> Option<Arc<Definition>> {
        let versions = self.definitions.get(name)?;
        match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|d| d.version == v).cloned(),
        }
    }

    fn install_definition(&mut self, def: Arc<Definition>) {
        let mut topics = self.reply_topics.borrow().clone();
        for step in &def.spec.steps {
            for p in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
                if let Participant::Broker { reply_topic, .. } = p {
                    topics.insert(reply_topic.clone());
                }
            }
        }
        self.reply_topics.send_if_modified(|current| {
            let changed = *current != topics;
            *current = topics;
            changed
        });
        let versions = self.definitions.entry(def.name.clone()).or_default();
        if versions.iter().any(|d| d.version == def.version) {
            return;
        }
        let newest = versions.last().is_none_or(|d| d.version < def.version);
        if newest && def.spec.trigger.is_some() {
            self.triggers.install(def.clone());
        }
        versions.push(def);
        versions.sort_by_key(|d| d.version);
    }

    fn schedule(&mut self, id: String, at: Option<i64>) {
        if let Some(old) = self.wakeups.remove(&id) {
            self.timers.remove(&(old, id.clone()));
        }
        if let Some(at) = at {
            self.timers.insert((at, id.clone()));
            self.wakeups.insert(id, at);
        }
    }

    fn outcome_topic<'a>(&'a self, saga: &'a Saga) -> Option<&'a str> {
        saga.definition().spec.outcome_topic.as_deref()
    }

    fn outcome(&self, saga: &Saga) -> Option<(String, Outcome)> {
        let topic = self.outcome_topic(saga)?.to_string();
        Some((
            topic,
            Outcome {
                saga_id: saga.id.clone(),
                definition: saga.definition.clone(),
                version: saga.version,
                state: saga.state,
                idempotency_key: saga.idempotency_key.clone(),
            },
        ))
    }

    /// Runs one input through a saga and journals what follows.
    async fn drive(&mut self, id: &str, input: Input) -> Result<(), EngineError> {
        let Some(saga) = self.sagas.get_mut(id) else {
            return Ok(());
        };
        let entries = saga.handle(input, crate::now_ms(), fastrand::f64())?;
        if entries.is_empty() {
            return Ok(());
        }
        let effects = self.effects_of(id, &entries);
        let durable = self.append(&entries).await;
        self.after_durable(durable, effects, None::<(Respond<Saga>, Saga)>);
        Ok(())
    }

    fn effects_of(&mut self, id: &str, entries: &[Entry]) -> Effects {
        let mut effects = Effects::default();
        let saga = &self.sagas[id];
        for e in entries {
            if let Some(call) = saga.call(&e.event) {
                effects.calls.push(call);
            }
            if e.event.is_terminal() {
                if let Some(outcome) = self.outcome(saga) {
                    effects.outcomes.push(outcome);
                }
                self.finished.push_back(id.to_string());
            }
        }
        let wakeup = saga.next_wakeup_ms();
        self.dirty.insert(id.to_string());
        self.schedule(id.to_string(), wakeup);
        effects
    }

    /// Queues entries on the journal in order; the future resolves when all are durable.
    async fn append(
        &self,
        entries: &[Entry],
    ) -> impl std::future::Future<Output = Result<(), JournalError>> + Send + 'static {
        let deliveries = self.journal.append(entries).await;
        async move {
            for d in deliveries? {
                d.await?;
            }
            Ok(())
        }
    }

    /// Once `durable` resolves: run the effects and answer the request, or stop everything
    /// when the journal failed.
    fn after_durable<T: Send + 'static>(
        &self,
        durable: impl std::future::Future<Output = Result<(), JournalError>> + Send + 'static,
        effects: Effects,
        respond: Option<(Respond<T>, T)>,
    ) {
        let participants = self.participants.clone();
        let outcomes = self.cluster.clone();
        let fatal = self.fatal.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            if let Err(e) = durable.await {
                let _ = fatal.send(e);
                return;
            }
            for call in effects.calls {
                participants.dispatch(call);
            }
            if let Some((respond, value)) = respond {
                let _ = respond.send(Ok(value));
            }
            publish(outcomes, commands, effects.outcomes).await;
        });
    }

    fn publish_later(&self, effects: Effects) {
        let outcomes = self.cluster.clone();
        let commands = self.commands.clone();
        tokio::spawn(publish(outcomes, commands, effects.outcomes));
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut replies: mpsc::UnboundedReceiver<Reply>,
        mut fatal: mpsc::UnboundedReceiver<JournalError>,
        mut ownership: mpsc::UnboundedReceiver<Ownership>,
        config: OrchestratorConfig,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), JournalError> {
        let mut snapshot = tokio::time::interval(config.snapshot_interval);
        snapshot.tick().await;
        loop {
            let next_timer = self.timers.first().map(|(at, _)| *at);
            let sleep = async {
                match next_timer {
                    Some(at) => {
                        let wait = (at - crate::now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(command) = commands.recv() => self.command(command).await,
                Some(reply) = replies.recv() => self.reply(reply).await,
                () = sleep => self.fire_timers().await,
                Some(e) = fatal.recv() => {
                    tracing::error!(error = %e, "the journal failed: stopping the orchestrator");
                    return Err(e);
                }
                Some(change) = ownership.recv() => match change {
                    Ownership::Assigned(partitions) => self.assigned(partitions).await?,
                    Ownership::Revoked(partitions, done) => {
                        self.revoked(partitions).await?;
                        let _ = done.send(());
                    }
                },
                _ = snapshot.tick() => self.checkpoint().await?,
                _ = crate::stopped(&mut shutdown) => {
                    self.checkpoint().await?;
                    return Ok(());
                }
            }
        }
    }

    /// Snapshots every changed saga and checkpoints their partitions.
    async fn checkpoint(&mut self) -> Result<(), JournalError> {
        let partitions: BTreeSet<u32> = self
            .dirty
            .iter()
            .map(|id| self.journal.partition_of(id))
            .collect();
        let partitions: Vec<u32> = partitions.into_iter().collect();
        self.checkpoint_partitions(&partitions).await?;
        self.evict_finished();
        Ok(())
    }

    async fn checkpoint_partitions(&mut self, partitions: &[u32]) -> Result<(), JournalError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = self
            .dirty
            .iter()
            .filter(|id| partitions.contains(&self.journal.partition_of(id)))
            .cloned()
            .collect();
        let dirty: Vec<&Saga> = ids.iter().filter_map(|id| self.sagas.get(id)).collect();
        self.journal.checkpoint(partitions, &dirty).await?;
        tracing::debug!(sagas = dirty.len(), ?partitions, "checkpoint written");
        for id in &ids {
            self.dirty.remove(id);
        }
        Ok(())
    }

    /// Drops the oldest finished sagas beyond the limit; their final state is in a snapshot.
    fn evict_finished(&mut self) {
        while self.finished.len() > self.finished_max {
            let Some(id) = self.finished.front() else {
                break;
            };
            let done = self.sagas.get(id).is_none_or(|s| {
                !self.dirty.contains(id) && (s.outcome_published || self.outcome_topic(s).is_none())
            });
            if !done {
                break; // its outcome is not out yet: keep it (and everything after it)
            }
            let id = self.finished.pop_front().expect("checked");
            self.sagas.remove(&id);
            self.schedule(id, None);
        }
    }

    async fn fire_timers(&mut self) {
        let now = crate::now_ms();
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id.clone()));
            self.wakeups.remove(&id);
            if let Err(e) = self.drive(&id, Input::Tick).await {
                tracing::warn!(saga = %id, error = %e, "tick refused");
            }
        }
    }

    async fn reply(&mut self, reply: Reply) {
        let Some(step) = self
            .sagas
            .get(&reply.saga_id)
            .and_then(|s| s.steps.iter().position(|st| st.name == reply.step_name))
        else {
            return;
        };
        let input = Input::Reply {
            step,
            phase: reply.phase,
            attempt: reply.attempt,
            result: reply.result,
        };
        if let Err(e) = self.drive(&reply.saga_id, input).await {
            tracing::warn!(saga = %reply.saga_id, error = %e, "reply refused");
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::PutDefinition(name, spec, respond) => {
                let result = self.put_definition(name, *spec).await;
                let _ = respond.send(result);
            }
            Command::GetDefinition(name, version, respond) => {
                let result = self
                    .find_definition(&name, version)
                    .map(|d| (*d).clone())
                    .ok_or_else(|| {
                        ApiError::NotFound(match version {
                            Some(v) => format!("no definition {name:?} version {v}"),
                            None => format!("no definition {name:?}"),
                        })
                    });
                let _ = respond.send(result);
            }
            Command::ListDefinitions(respond) => {
                let all = self
                    .definitions
                    .values()
                    .filter_map(|v| v.last().map(|d| (**d).clone()))
                    .collect();
                let _ = respond.send(Ok(all));
            }
            Command::Start(request, respond) => self.start_saga(request, respond).await,
            Command::Get(id, respond) => {
                let found = match self.sagas.get(&id) {
                    Some(saga) => Ok(saga.clone()),
                    None => self.owns_saga(&id).and_then(|_| {
                        Err(ApiError::NotFound(format!(
                            "no saga {id:?} in memory (sagas that finished long ago are only in {})",
                            crate::journal::SNAPSHOT_TOPIC
                        )))
                    }),
                };
                let _ = respond.send(found);
            }
            Command::List(query, respond) => {
                let _ = respond.send(Ok(self.list(query)));
            }
            Command::Abort(id, respond) => self.operator(id, Input::Abort, respond).await,
            Command::Retry(id, respond) => self.operator(id, Input::Retry, respond).await,
            Command::OutcomePublished(id) => {
                if self.sagas.get(&id).is_some_and(|s| !s.outcome_published) {
                    let _ = self.drive_event(&id, Event::OutcomePublished).await;
                }
            }
            Command::DefinitionSeen(def) => self.install_definition(Arc::new(*def)),
        }
    }

    /// Journals an event the orchestrator itself decides (not the engine).
    async fn drive_event(&mut self, id: &str, event: Event) -> Result<(), JournalError> {
        let Some(saga) = self.sagas.get_mut(id) else {
            return Ok(());
        };
        let entry = Entry {
            saga_id: id.to_string(),
            at_ms: crate::now_ms(),
            event,
        };
        saga.apply(&entry);
        self.dirty.insert(id.to_string());
        let durable = self.append(std::slice::from_ref(&entry)).await;
        self.after_durable(durable, Effects::default(), None::<(Respond<()>, ())>);
        Ok(())
    }

    async fn operator(&mut self, id: String, input: Input, respond: Respond<Saga>) {
        let Some(saga) = self.sagas.get_mut(&id) else {
            let missing = ApiError::NotFound(format!("no saga {id:?}"));
            let _ = respond.send(Err(self.owns_saga(&id).err().unwrap_or(missing)));
            return;
        };
        let entries = match saga.handle(input, crate::now_ms(), fastrand::f64()) {
            Ok(entries) => entries,
            Err(e) => {
                let _ = respond.send(Err(ApiError::Conflict(e.to_string())));
                return;
            }
        };
        let effects = self.effects_of(&id, &entries);
        let snapshot = self.sagas[&id].clone();
        let durable = self.append(&entries).await;
        self.after_durable(durable, effects, Some((respond, snapshot)));
    }

    async fn put_definition(
        &mut self,
        name: String,
        spec: DefinitionSpec,
    ) -> Result<Definition, ApiError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(ApiError::Invalid(vec![FieldError {
                path: "name".into(),
                reason: "must be letters, digits, '.', '_' or '-'".into(),
            }]));
        }
        definition::validate(&spec).map_err(ApiError::Invalid)?;
        // Versions of a name are numbered by one instance: the owner of the name's journal
        // partition (the others forward to it).
        self.owns(&name)?;
        // The topics it uses exist before any saga needs them.
        let mut topics = BTreeSet::new();
        for step in &spec.steps {
            for p in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
                if let Participant::Broker {
                    topic, reply_topic, ..
                } = p
                {
                    topics.insert(topic.clone());
                    topics.insert(reply_topic.clone());
                }
            }
        }
        topics.extend(spec.outcome_topic.clone());
        topics.extend(spec.trigger.as_ref().map(|t| t.topic.clone()));
        for topic in topics {
            self.cluster
                .ensure_topic(&topic, 4, TopicKind::Plain)
                .await
                .map_err(|e| ApiError::BadRequest(format!("topic {topic:?}: {e}")))?;
        }
        let version = self
            .definitions
            .get(&name)
            .and_then(|v| v.last())
            .map_or(1, |d| d.version + 1);
        let def = Definition {
            name,
            version,
            spec,
        };
        self.journal
            .put_definition(&def)
            .await
            .map_err(|e| ApiError::Unavailable(format!("storing the definition: {e}")))?;
        self.install_definition(Arc::new(def.clone()));
        Ok(def)
    }

    async fn start_saga(&mut self, request: StartRequest, respond: Respond<(Saga, bool)>) {
        // A keyed saga lives in its key's partition, so every instance finds it by its key; an
        // unkeyed one in any partition this instance drives.
        let partition = match &request.idempotency_key {
            Some(key) => match self.owns(key) {
                Ok(p) => p,
                Err(e) => {
                    let _ = respond.send(Err(e));
                    return;
                }
            },
            None => {
                let owned: Vec<u32> = self.owned.iter().copied().collect();
                if owned.is_empty() {
                    let _ = respond.send(Err(ApiError::Unavailable(
                        "this instance drives no journal partition right now; retry".into(),
                    )));
                    return;
                }
                owned[fastrand::usize(..owned.len())]
            }
        };
        if let Some(key) = &request.idempotency_key {
            if let Some(id) = self
                .by_key
                .get(key)
                .filter(|id| !self.sagas.contains_key(*id))
            {
                let _ = respond.send(Err(ApiError::Conflict(format!(
                    "idempotency key {key:?} started saga {id}, which finished long ago (its final state is in {})",
                    crate::journal::SNAPSHOT_TOPIC
                ))));
                return;
            }
            if let Some(existing) = self.by_key.get(key).and_then(|id| self.sagas.get(id)) {
                let same = existing.definition == request.definition
                    && request.version.is_none_or(|v| v == existing.version)
                    && existing.input == request.input;
                let _ = respond.send(if same {
                    Ok((existing.clone(), false))
                } else {
                    Err(ApiError::Conflict(format!(
                        "idempotency key {key:?} already started saga {} with a different request",
                        existing.id
                    )))
                });
                return;
            }
        }
        let Some(def) = self.find_definition(&request.definition, request.version) else {
            let _ = respond.send(Err(ApiError::NotFound(format!(
                "no definition {:?}{}",
                request.definition,
                request
                    .version
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default()
            ))));
            return;
        };
        let id = self.new_id(partition);
        let (saga, entries) = Saga::start(
            id.clone(),
            def,
            request.input,
            request.idempotency_key,
            crate::now_ms(),
        );
        self.sagas.insert(id.clone(), saga);
        self.index(&id);
        let effects = self.effects_of(&id, &entries);
        let snapshot = self.sagas[&id].clone();
        let durable = self.append(&entries).await;
        self.after_durable(durable, effects, Some((respond, (snapshot, true))));
    }

    fn list(&self, query: ListQuery) -> SagaPage {
        let limit = query.limit.clamp(1, 1_000);
        let from = match &query.cursor {
            Some(c) => std::ops::Bound::Excluded(c.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut sagas = Vec::new();
        let mut next_cursor = None;
        for saga in self
            .sagas
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| query.state.is_none_or(|st| s.state == st))
            .filter(|s| query.definition.as_ref().is_none_or(|d| &s.definition == d))
        {
            if sagas.len() == limit {
                next_cursor = sagas.last().map(|s: &SagaSummary| s.id.clone());
                break;
            }
            sagas.push(SagaSummary::from(saga));
        }
        SagaPage { sagas, next_cursor }
    }
}

/// Publishes outcomes (at least once) and tells the orchestrator which ones went out.
async fn publish(
    cluster: Arc<Cluster>,
    commands: mpsc::Sender<Command>,
    outcomes: Vec<(String, Outcome)>,
) {
    for (topic, outcome) in outcomes {
        let value = serde_json::to_vec(&outcome).expect("outcomes serialize");
        let record = MirroredRecord::new(Some(outcome.saga_id.clone().into_bytes()), value);
        let sent = match cluster.send(&topic, None, record).await {
            Ok(d) => d.await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                let _ = commands
                    .send(Command::OutcomePublished(outcome.saga_id))
                    .await;
            }
            Err(e) => {
                tracing::warn!(saga = %outcome.saga_id, %topic, error = %e, "publishing an outcome failed; it is retried at the next start")
            }
        }
    }
}
