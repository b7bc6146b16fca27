//! The orchestrator: one task that owns every saga and definition and feeds the engine, with
//! the IO around it. Requests (from HTTP, triggers), participant replies and timers arrive as
//! messages; each produces journal entries, which are appended in order, and only once they
//! are durable does a spawned task act on them (call participants, publish outcomes, answer
//! the request). A journal that cannot be written stops the orchestrator: a restart replays
//! what is durable, and nothing was done that the journal does not know of.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use strand_client::{Producer, ProducerConfig, ProducerRecord, TopicSettings};
use tokio::sync::{mpsc, oneshot, watch};
use utoipa::ToSchema;

use crate::breaker::{Breaker, BreakerConfig};
use crate::definition::{self, Definition, DefinitionSpec, FieldError, Participant};
use crate::engine::{Call, EngineError, Entry, Event, Input, Saga, SagaState};
use crate::journal::{ensure_topic, Journal, JournalError};
use crate::participants::{self, Participants, Reply};
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
}

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub journal_partitions: u32,
    /// How often changed sagas are snapshotted (bounding the journal read at a restart).
    pub snapshot_interval: Duration,
    pub breaker: BreakerConfig,
    /// Consumer group the orchestrator reads broker participants' replies in.
    pub reply_group: String,
    /// Requests waiting for the orchestrator at most; more are refused with 503.
    pub queue_max: usize,
    /// Finished sagas kept in memory (for `GET /sagas`); older ones are dropped once their
    /// final state is in a snapshot, which keeps memory bounded in a long-running process.
    pub finished_in_memory_max: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            journal_partitions: 8,
            snapshot_interval: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
            reply_group: "strand-saga".into(),
            queue_max: 10_000,
            finished_in_memory_max: 100_000,
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
}

/// Sends requests to the orchestrator task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    participants: Arc<Participants>,
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
}

/// Recovers from the journal and starts the orchestrator task. The returned future ends when
/// shutdown is signalled (after a last checkpoint) or when the journal fails.
pub async fn start(
    journal: Journal,
    config: OrchestratorConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(Handle, tokio::task::JoinHandle<Result<(), JournalError>>), JournalError> {
    let client = journal.client().clone();
    let (reply_tx, reply_rx) = mpsc::unbounded_channel();
    let participants = Arc::new(Participants::new(
        client.clone(),
        config.breaker,
        reply_tx.clone(),
    ));
    let (tx, rx) = mpsc::channel(config.queue_max.max(1));
    let handle = Handle {
        tx: tx.clone(),
        participants: participants.clone(),
    };
    let (reply_topics_tx, reply_topics_rx) = watch::channel(BTreeSet::new());
    tokio::spawn(participants::consume_replies(
        client.clone(),
        config.reply_group.clone(),
        reply_topics_rx,
        reply_tx,
        shutdown.clone(),
    ));
    let outcomes = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    );
    let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
    let mut orchestrator = Orchestrator {
        journal,
        participants,
        outcomes: Arc::new(outcomes),
        definitions: BTreeMap::new(),
        sagas: BTreeMap::new(),
        by_key: HashMap::new(),
        timers: BTreeSet::new(),
        wakeups: HashMap::new(),
        dirty: HashSet::new(),
        reply_topics: reply_topics_tx,
        triggers: triggers::Triggers::new(client, handle.clone(), shutdown.clone()),
        commands: tx,
        fatal: fatal_tx,
        finished: std::collections::VecDeque::new(),
        finished_max: config.finished_in_memory_max.max(1),
    };
    orchestrator.recover().await?;
    let task = tokio::spawn(orchestrator.run(rx, reply_rx, fatal_rx, config, shutdown));
    Ok((handle, task))
}

struct Orchestrator {
    journal: Journal,
    participants: Arc<Participants>,
    outcomes: Arc<Producer>,
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
}

/// Effects to run once a batch of entries is durable.
#[derive(Default)]
struct Effects {
    calls: Vec<Call>,
    outcomes: Vec<(String, Outcome)>,
}

impl Orchestrator {
    async fn recover(&mut self) -> Result<(), JournalError> {
        let recovered = self.journal.recover().await?;
        for d in recovered.definitions {
            self.install_definition(Arc::new(d));
        }
        let n_snapshots = recovered.snapshots.len();
        for mut saga in recovered.snapshots {
            let Some(def) = self.find_definition(&saga.definition, Some(saga.version)) else {
                tracing::error!(saga = %saga.id, definition = %saga.definition, "snapshot of a saga whose definition is gone");
                continue;
            };
            saga.attach(def);
            self.index(&saga);
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
                self.index(&saga);
                self.sagas.insert(saga.id.clone(), saga);
            } else if let Some(saga) = self.sagas.get_mut(&entry.saga_id) {
                // Entries the snapshot already covers are not replayed: a snapshot is taken
                // after the checkpointed offsets, so everything read here is newer.
                saga.apply(&entry);
            } else {
                tracing::warn!(saga = %entry.saga_id, "journal entry of an unknown saga");
            }
        }
        let mut finished: Vec<(&i64, &String)> = self
            .sagas
            .values()
            .filter(|s| s.state.is_finished())
            .map(|s| (&s.updated_at_ms, &s.id))
            .collect();
        finished.sort();
        self.finished = finished.into_iter().map(|(_, id)| id.clone()).collect();
        // Resume every unfinished saga: resend what was in flight (same idempotency keys), and
        // take whatever step is due.
        let unfinished: Vec<String> = self
            .sagas
            .values()
            .filter(|s| !s.state.is_finished())
            .map(|s| s.id.clone())
            .collect();
        let n_unfinished = unfinished.len();
        for id in &unfinished {
            self.drive(id, Input::Redispatch).await.ok();
            self.drive(id, Input::Tick).await.ok();
        }
        // Outcomes that may not have been published before the stop.
        let pending: Vec<String> = self
            .sagas
            .values()
            .filter(|s| s.state.is_finished() && !s.outcome_published)
            .filter(|s| self.outcome_topic(s).is_some())
            .map(|s| s.id.clone())
            .collect();
        for id in pending {
            if let Some((topic, outcome)) = self.sagas.get(&id).and_then(|s| self.outcome(s)) {
                self.publish_later(Effects {
                    calls: Vec::new(),
                    outcomes: vec![(topic, outcome)],
                });
            }
        }
        tracing::info!(
            definitions = self.definitions.len(),
            snapshots = n_snapshots,
            journal_entries = n_entries,
            resumed = n_unfinished,
            "orchestrator recovered"
        );
        Ok(())
    }

    fn index(&mut self, saga: &Saga) {
        if let Some(key) = &saga.idempotency_key {
            self.by_key.insert(key.clone(), saga.id.clone());
        }
        self.schedule(saga.id.clone(), saga.next_wakeup_ms());
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
        if def.spec.trigger.is_some() {
            self.triggers.install(def.clone());
        }
        let versions = self.definitions.entry(def.name.clone()).or_default();
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
        let outcomes = self.outcomes.clone();
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
        let outcomes = self.outcomes.clone();
        let commands = self.commands.clone();
        tokio::spawn(publish(outcomes, commands, effects.outcomes));
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut replies: mpsc::UnboundedReceiver<Reply>,
        mut fatal: mpsc::UnboundedReceiver<JournalError>,
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
                _ = snapshot.tick() => self.checkpoint().await?,
                _ = crate::stopped(&mut shutdown) => {
                    self.checkpoint().await?;
                    return Ok(());
                }
            }
        }
    }

    async fn checkpoint(&mut self) -> Result<(), JournalError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty: Vec<&Saga> = self
            .dirty
            .iter()
            .filter_map(|id| self.sagas.get(id))
            .collect();
        self.journal.checkpoint(&dirty).await?;
        tracing::debug!(sagas = dirty.len(), "checkpoint written");
        self.dirty.clear();
        self.evict_finished();
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
                let _ = respond.send(self.sagas.get(&id).cloned().ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "no saga {id:?} in memory (sagas that finished long ago are only in {})",
                        crate::journal::SNAPSHOT_TOPIC
                    ))
                }));
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
            let _ = respond.send(Err(ApiError::NotFound(format!("no saga {id:?}"))));
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
        // The topics it uses exist before any saga needs them.
        let client = self.journal.client().clone();
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
            let settings = TopicSettings {
                partitions: 4,
                ..TopicSettings::default()
            };
            ensure_topic(&client, &topic, settings)
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
        let id = uuid::Uuid::now_v7().to_string();
        let (saga, entries) = Saga::start(
            id.clone(),
            def,
            request.input,
            request.idempotency_key,
            crate::now_ms(),
        );
        self.index(&saga);
        self.sagas.insert(id.clone(), saga);
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
    producer: Arc<Producer>,
    commands: mpsc::Sender<Command>,
    outcomes: Vec<(String, Outcome)>,
) {
    for (topic, outcome) in outcomes {
        let value = serde_json::to_vec(&outcome).expect("outcomes serialize");
        let record = ProducerRecord::new(topic.clone(), value).key(outcome.saga_id.clone());
        let sent = match producer.send(record).await {
            Ok(d) => d.await.map(|_| ()),
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
