//! The orchestrator task: the IO around [`Core`]. Requests (from HTTP, triggers), participant
//! replies, timers and journal confirmations arrive as messages; the core answers each with
//! journal batches, which this task appends in order, and with what the journal's confirmations
//! release (participant calls, outcome publications, API answers). A journal that cannot be
//! written stops the orchestrator: a restart replays what is durable, and nothing was done that
//! the journal does not know of.
//!
//! The task drives the sagas of the journal partitions this instance owns ([`Ownership`]):
//! taking a partition over writes an owner marker and recovers its sagas from snapshots and
//! journal; giving one up makes its state durable and drops its sagas. A request for a saga of
//! a partition owned elsewhere is answered with [`ApiError::Elsewhere`], which the HTTP layer
//! forwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strand_cluster::{Cluster, MirroredRecord, TopicKind};
use tokio::sync::{mpsc, watch};

use crate::api::{ApiError, Outcome};
use crate::breaker::BreakerConfig;
use crate::clock;
use crate::core::{Batch, Confirmed, Core, CoreConfig, Effects};
use crate::definition::{self, Definition, DefinitionSpec, FieldError, Participant};
use crate::engine::{Event, Input};
use crate::handle::{Command, Handle};
use crate::journal::{Journal, JournalError};
use crate::metrics::SagaMetrics;
use crate::observe::Observer;
use crate::ownership::{self, Ownership, Routes};
use crate::participants::{self, Participants, ParticipantsConfig, Reply};
use crate::triggers;
use tracing::Instrument;

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
    /// Finished sagas beyond memory still readable from their snapshots (an index of about 50
    /// bytes each); older ones are answered 404.
    pub finished_indexed_max: usize,
    /// The largest snapshot record the journal's cluster takes.
    pub snapshot_bytes_max: usize,
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
            finished_indexed_max: 1_000_000,
            snapshot_bytes_max: 1 << 20,
            participants: ParticipantsConfig::default(),
            forward_token_file: None,
        }
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
    let metrics = Arc::new(SagaMetrics::default());
    let handle = Handle {
        metrics: metrics.clone(),
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
        participants.output_bytes_max(),
    ));
    let routes = Arc::new(Routes::default());
    tokio::spawn(routes.clone().follow(cluster.clone(), shutdown.clone()));
    let owner_of = {
        let (routes, instance) = (routes.clone(), config.instance_id.clone());
        Box::new(move |partition| {
            routes
                .owner(partition)
                .filter(|(owner, _)| *owner != instance)
                .map(|(_, api)| api)
        })
    };
    let core = Core::new(
        CoreConfig {
            partitions: journal.partitions(),
            instance_id: config.instance_id.clone(),
            finished_in_memory_max: config.finished_in_memory_max,
            snapshot_bytes_max: config.snapshot_bytes_max,
            finished_indexed_max: config.finished_indexed_max,
        },
        fastrand::u64(..),
        owner_of,
    );
    let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
    let mut orchestrator = Orchestrator {
        core,
        journal,
        participants,
        cluster: cluster.clone(),
        reply_topics: reply_topics_tx,
        triggers: triggers::Triggers::new(cluster.clone(), handle.clone(), shutdown.clone()),
        commands: tx.clone(),
        confirmations: confirm_tx,
        owned_tx,
        instance_id: config.instance_id.clone(),
        api_url: config.api_url.clone(),
        observer: Observer::new(metrics),
        start_traceparents: HashMap::new(),
    };
    let (definitions, next) = orchestrator.journal.definitions().await?;
    for d in definitions {
        orchestrator.install_definition(Arc::new(d));
    }
    tokio::spawn(follow_definitions(cluster, next, tx, shutdown.clone()));
    let task =
        tokio::spawn(orchestrator.run(rx, reply_rx, confirm_rx, ownership, config, shutdown));
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

/// Most messages of one kind (replies, commands, confirmations) handled in one turn of the
/// task before what they produced is appended: a burst becomes one append per journal
/// partition, and one task waiting for its confirmations, instead of one per message.
const TURN_MESSAGES_MAX: usize = 256;

/// A batch's journal append, confirmed (with its entries' offsets) or failed.
struct Confirmation {
    partition: u32,
    batch: u64,
    offsets: Result<Vec<u64>, JournalError>,
}

/// The IO around [`Core`]: the journal on a cluster, participants, outcome topics, ownership.
struct Orchestrator {
    core: Core,
    journal: Journal,
    participants: Arc<Participants>,
    cluster: Arc<Cluster>,
    reply_topics: watch::Sender<BTreeSet<String>>,
    triggers: triggers::Triggers,
    commands: mpsc::Sender<Command>,
    confirmations: mpsc::UnboundedSender<Confirmation>,
    owned_tx: watch::Sender<Vec<u32>>,
    instance_id: String,
    api_url: String,
    /// Spans and metrics of the sagas, told every journal entry.
    observer: Observer,
    /// The `traceparent` of start requests handled this turn, by saga id, for their `Started`
    /// entries.
    start_traceparents: HashMap<String, String>,
}

impl Orchestrator {
    fn install_definition(&mut self, def: Arc<Definition>) {
        let newest = self.core.install_definition(def.clone());
        if newest && def.spec.trigger.is_some() {
            self.triggers.install(def);
        }
        let topics = self.core.reply_topics();
        self.reply_topics.send_if_modified(|current| {
            let changed = *current != topics;
            *current = topics;
            changed
        });
    }

    /// Appends batches in order; a task per journal partition reports, batch by batch, when
    /// they are durable.
    async fn submit(&mut self, batches: Vec<Batch>) -> Result<(), JournalError> {
        if batches.is_empty() {
            return Ok(());
        }
        let appended = std::time::Instant::now();
        let mut waits: BTreeMap<u32, Vec<(u64, Vec<strand_cluster::Sent>, tracing::Span)>> =
            BTreeMap::new();
        for batch in batches {
            for entry in &batch.entries {
                if let Some(saga) = self.core.saga(&entry.saga_id) {
                    if matches!(entry.event, Event::Started { .. }) {
                        let traceparent = self.start_traceparents.remove(&entry.saga_id);
                        self.observer.started(saga, traceparent.as_deref());
                    }
                    self.observer.entry(saga, entry);
                }
            }
            let span = batch.entries.first().map_or_else(tracing::Span::none, |e| {
                self.observer.append_span(&e.saga_id)
            });
            let deliveries = self
                .journal
                .append(batch.partition, &batch.entries)
                .instrument(span.clone())
                .await?;
            waits
                .entry(batch.partition)
                .or_default()
                .push((batch.id, deliveries, span));
        }
        self.start_traceparents.clear();
        for (partition, batches) in waits {
            let confirmations = self.confirmations.clone();
            let metrics = self.observer.metrics.clone();
            tokio::spawn(async move {
                for (batch, deliveries, span) in batches {
                    let mut offsets = Vec::with_capacity(deliveries.len());
                    let mut failed = None;
                    for d in deliveries {
                        match d.instrument(span.clone()).await {
                            Ok(offset) => offsets.push(offset),
                            Err(e) => {
                                failed = Some(JournalError::from(e));
                                break;
                            }
                        }
                    }
                    metrics.observe_journal_append(appended.elapsed());
                    let _ = confirmations.send(Confirmation {
                        partition,
                        batch,
                        offsets: failed.map_or(Ok(offsets), Err),
                    });
                }
            });
        }
        Ok(())
    }

    /// A batch is durable (or the journal failed, which stops everything).
    async fn confirmed(&mut self, c: Confirmation) -> Result<(), JournalError> {
        let mut released = self.core.confirmed(c.partition, c.batch, c.offsets?);
        while let Some(r) = released.pop() {
            match r {
                Confirmed::Effects(effects) => self.act(effects),
                Confirmed::Check {
                    partition,
                    from,
                    to,
                } => {
                    let epoch = self.core.epoch(partition).unwrap_or(0);
                    let foreign = self
                        .journal
                        .foreign_owner(partition, from, to, epoch)
                        .await?;
                    released.extend(self.core.checked(partition, to, foreign));
                    if !self.core.held().contains(&partition) {
                        self.announce();
                    }
                }
            }
        }
        Ok(())
    }

    fn act(&self, effects: Effects) {
        for mut call in effects.calls {
            call.traceparent = self.observer.traceparent(&call.saga_id);
            self.observer
                .call_span(&call.saga_id)
                .in_scope(|| self.participants.dispatch(call));
        }
        if !effects.outcomes.is_empty() {
            tokio::spawn(publish(
                self.cluster.clone(),
                self.commands.clone(),
                effects.outcomes,
            ));
        }
    }

    /// Takes partitions over: an owner marker each, then their sagas from snapshots and
    /// journal, resumed.
    async fn assigned(&mut self, partitions: Vec<u32>) -> Result<(), JournalError> {
        let held = self.core.held();
        let partitions: Vec<u32> = partitions
            .into_iter()
            .filter(|p| !held.contains(p))
            .collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let mut epochs = Vec::new();
        for &p in &partitions {
            let epoch = self.core.new_epoch();
            let marker = self.core.owner_marker(epoch, clock::now_ms());
            for d in self.journal.append(p, &[marker]).await? {
                d.await?;
            }
            epochs.push((p, epoch));
        }
        let recovered = self.journal.recover(&partitions).await?;
        let taken: Vec<(u32, u64, u64)> = epochs
            .iter()
            .map(|&(p, epoch)| (p, epoch, recovered.ends.get(&p).copied().unwrap_or(0)))
            .collect();
        let (batches, effects) = self.core.take_over(&taken, recovered, clock::now_ms());
        self.submit(batches).await?;
        self.act(effects);
        self.announce();
        Ok(())
    }

    /// Gives partitions up: everything of theirs durable (a last checkpoint), their sagas
    /// dropped. The next owner starts from there.
    async fn revoked(
        &mut self,
        partitions: Vec<u32>,
        confirmations: &mut mpsc::UnboundedReceiver<Confirmation>,
    ) -> Result<(), JournalError> {
        let held = self.core.held();
        let partitions: Vec<u32> = partitions
            .into_iter()
            .filter(|p| held.contains(p))
            .collect();
        if partitions.is_empty() {
            return Ok(());
        }
        self.checkpoint(Some(&partitions), confirmations).await?;
        self.core.give_up(&partitions);
        let core = &self.core;
        self.observer.retain(|id| core.saga(id).is_some());
        self.announce();
        Ok(())
    }

    /// Tells the other instances (and `/health`) which partitions this one drives.
    fn announce(&self) {
        let owned = self.core.held();
        let _ = self.owned_tx.send(owned.clone());
        let cluster = self.cluster.clone();
        let (instance, api) = (self.instance_id.clone(), self.api_url.clone());
        tokio::spawn(async move { ownership::announce(&cluster, &instance, &api, owned).await });
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut replies: mpsc::UnboundedReceiver<Reply>,
        mut confirmations: mpsc::UnboundedReceiver<Confirmation>,
        mut ownership: mpsc::UnboundedReceiver<Ownership>,
        config: OrchestratorConfig,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), JournalError> {
        let mut snapshot = tokio::time::interval(config.snapshot_interval);
        snapshot.tick().await;
        loop {
            let next_timer = self.core.next_timer();
            let sleep = async {
                match next_timer {
                    Some(at) => {
                        let wait = (at - clock::now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(c) = confirmations.recv() => {
                    self.confirmed(c).await?;
                    for _ in 1..TURN_MESSAGES_MAX {
                        match confirmations.try_recv() {
                            Ok(c) => self.confirmed(c).await?,
                            Err(_) => break,
                        }
                    }
                }
                Some(command) = commands.recv() => {
                    let mut batches = Vec::new();
                    self.command(command, &mut batches).await;
                    for _ in 1..TURN_MESSAGES_MAX {
                        match commands.try_recv() {
                            Ok(command) => self.command(command, &mut batches).await,
                            Err(_) => break,
                        }
                    }
                    self.submit(batches).await?;
                }
                Some(reply) = replies.recv() => {
                    let mut batches = self.core.reply(reply, clock::now_ms());
                    for _ in 1..TURN_MESSAGES_MAX {
                        match replies.try_recv() {
                            Ok(reply) => batches.extend(self.core.reply(reply, clock::now_ms())),
                            Err(_) => break,
                        }
                    }
                    self.submit(batches).await?;
                }
                () = sleep => {
                    let batches = self.core.tick(clock::now_ms());
                    self.submit(batches).await?;
                }
                Some(change) = ownership.recv() => match change {
                    Ownership::Assigned(partitions) => self.assigned(partitions).await?,
                    Ownership::Revoked(partitions, done) => {
                        self.revoked(partitions, &mut confirmations).await?;
                        let _ = done.send(());
                    }
                },
                _ = snapshot.tick() => self.checkpoint(None, &mut confirmations).await?,
                _ = crate::stopped(&mut shutdown) => {
                    self.checkpoint(None, &mut confirmations).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Snapshots every changed saga (of `partitions`, or of every partition) and checkpoints
    /// their partitions, once everything appended is durable and confirmed.
    async fn checkpoint(
        &mut self,
        partitions: Option<&[u32]>,
        confirmations: &mut mpsc::UnboundedReceiver<Confirmation>,
    ) -> Result<(), JournalError> {
        self.journal.flush().await?;
        let wanted = partitions.map_or_else(|| self.core.held(), <[u32]>::to_vec);
        while wanted.iter().any(|p| self.core.unconfirmed(*p)) {
            match confirmations.recv().await {
                Some(c) => self.confirmed(c).await?,
                None => break,
            }
        }
        let ends = self.journal.ends().await?;
        // Records past where this instance's appends stopped: someone else wrote (a stale
        // owner, or a new owner that fenced this one).
        for p in self.core.held() {
            if let (Some(&end), Some(next)) = (ends.get(&p), self.core.next_offset(p)) {
                if end > next && !self.core.unconfirmed(p) {
                    let epoch = self.core.epoch(p).unwrap_or(0);
                    let foreign = self.journal.foreign_owner(p, next, end, epoch).await?;
                    let released = self.core.checked(p, end, foreign);
                    for r in released {
                        if let Confirmed::Effects(e) = r {
                            self.act(e);
                        }
                    }
                    if foreign {
                        self.announce();
                    }
                }
            }
        }
        let plan = self.core.checkpoint_plan(partitions, &ends);
        if plan.partitions.is_empty() {
            return Ok(());
        }
        let with_epochs: Vec<(u32, u64, u64)> = plan
            .partitions
            .iter()
            .map(|&(p, end)| (p, end, self.core.epoch(p).unwrap_or(0)))
            .collect();
        let offsets = self.journal.checkpoint(&with_epochs, &plan.sagas).await?;
        self.core.snapshots_written(&plan, &offsets);
        tracing::debug!(
            sagas = plan.sagas.len(),
            partitions = ?plan.partitions,
            "checkpoint written"
        );
        self.core.checkpoint_done(plan);
        Ok(())
    }

    /// Handles a command; the batches it leads to are added to `out`, for the caller to
    /// submit.
    async fn command(&mut self, command: Command, out: &mut Vec<Batch>) {
        let now = clock::now_ms();
        let batches = match command {
            Command::PutDefinition(name, spec, respond) => {
                let result = self.put_definition(name, *spec).await;
                let _ = respond.send(result);
                Vec::new()
            }
            Command::GetDefinition(name, version, respond) => {
                let result = self
                    .core
                    .find_definition(&name, version)
                    .map(|d| (*d).clone())
                    .ok_or_else(|| {
                        ApiError::NotFound(match version {
                            Some(v) => format!("no definition {name:?} version {v}"),
                            None => format!("no definition {name:?}"),
                        })
                    });
                let _ = respond.send(result);
                Vec::new()
            }
            Command::ListDefinitions(respond) => {
                let _ = respond.send(Ok(self.core.latest_definitions()));
                Vec::new()
            }
            Command::Start(request, traceparent, respond) => {
                let batches = self.core.start(request, now, respond);
                // Taken by the saga's Started entry in `submit`.
                if let Some(traceparent) = traceparent {
                    let started = batches.iter().flat_map(|b| &b.entries).find_map(|e| {
                        matches!(e.event, Event::Started { .. }).then(|| e.saga_id.clone())
                    });
                    if let Some(id) = started {
                        self.start_traceparents.insert(id, traceparent);
                    }
                }
                batches
            }
            Command::Get(id, respond) => {
                match self.core.archived(&id) {
                    // A finished saga that left memory: its snapshot is durable, read it aside.
                    Some(at) => {
                        let journal = self.journal.clone();
                        tokio::spawn(async move {
                            let saga = journal.read_snapshot(&id, at.partition, at.offset).await;
                            let _ = respond.send(saga);
                        });
                    }
                    None => self.core.get(&id, respond),
                }
                Vec::new()
            }
            Command::List(query, respond) => {
                self.core.list(query, respond);
                Vec::new()
            }
            Command::Abort(id, respond) => self.core.operator(&id, Input::Abort, now, respond),
            Command::Retry(id, respond) => self.core.operator(&id, Input::Retry, now, respond),
            Command::OutcomePublished(id) => self.core.outcome_published(&id, now),
            Command::DefinitionSeen(def) => {
                self.install_definition(Arc::new(*def));
                Vec::new()
            }
        };
        out.extend(batches);
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
        self.core.owns(&name)?;
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
        let def = Definition {
            version: self.core.next_version(&name),
            name,
            spec,
        };
        self.journal
            .put_definition(&def)
            .await
            .map_err(|e| ApiError::Unavailable(format!("storing the definition: {e}")))?;
        self.install_definition(Arc::new(def.clone()));
        Ok(def)
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
            Ok(_) => {
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
