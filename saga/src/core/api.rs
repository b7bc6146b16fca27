//! Answering the API: starts (idempotency keys, locks), reads and operators' actions, each once
//! what it shows is durable.

use super::*;

impl Core {
    // ---- the API ----

    /// An operator's abort or retry; answered once what it journals is durable.
    pub fn operator(
        &mut self,
        id: &str,
        input: Input,
        now_ms: i64,
        respond: Respond<Saga>,
    ) -> Vec<Batch> {
        if !self.sagas.contains_key(id) {
            let missing = ApiError::NotFound(format!("no saga {id:?}"));
            let _ = respond.send(Err(self.owns_saga(id).err().unwrap_or(missing)));
            return Vec::new();
        }
        let mut batches: Vec<Batch> = match self.drive(id, input, now_ms) {
            Ok(b) => b.into_iter().collect(),
            Err(e) => {
                let _ = respond.send(Err(ApiError::Conflict(e.to_string())));
                return Vec::new();
            }
        };
        batches.extend(self.grants());
        let saga = self.sagas[id].clone();
        self.answer_after(
            self.partition_of(id),
            Box::new(move || {
                let _ = respond.send(Ok(saga));
            }),
        );
        batches
    }

    /// A saga as durable: answered once every transition it shows is confirmed.
    pub fn get(&mut self, id: &str, respond: Respond<Saga>) {
        match self.sagas.get(id) {
            Some(saga) => {
                let saga = saga.clone();
                self.answer_after(
                    self.partition_of(id),
                    Box::new(move || {
                        let _ = respond.send(Ok(saga));
                    }),
                );
            }
            None => {
                let forgotten = self.archive_forgotten();
                let found = self.owns_saga(id).and_then(|_| {
                    Err(ApiError::NotFound(if forgotten == 0 {
                        format!("no saga {id:?}")
                    } else {
                        format!(
                            "no saga {id:?}: none was started, or it finished and is no longer kept ({forgotten} finished sagas were forgotten past the {} this instance indexes; their final states are only in {})",
                            self.config.finished_indexed_max,
                            crate::journal::SNAPSHOT_TOPIC
                        )
                    }))
                });
                let _ = respond.send(found);
            }
        }
    }

    /// A page of sagas; answered once every transition it shows is confirmed.
    pub fn list(&mut self, query: ListQuery, respond: Respond<SagaPage>) {
        let limit = query.limit.clamp(1, 1_000);
        let from = match &query.cursor {
            Some(c) => std::ops::Bound::Excluded(c.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut sagas = Vec::new();
        let mut next_cursor = None;
        let mut partitions = BTreeSet::new();
        let mut counts = std::collections::BTreeMap::new();
        for saga in self.sagas.values() {
            if query.matches_all_but_state(&SagaSummary::from(saga)) {
                *counts.entry(saga.state.as_str().to_string()).or_insert(0) += 1;
            }
        }
        for saga in self
            .sagas
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| query.state.is_none_or(|st| s.state == st))
        {
            let summary = SagaSummary::from(saga);
            if !query.matches_all_but_state(&summary) {
                continue;
            }
            if sagas.len() == limit {
                next_cursor = sagas.last().map(|s: &SagaSummary| s.id.clone());
                break;
            }
            partitions.insert(self.partition_of(&saga.id));
            sagas.push(summary);
        }
        let page = SagaPage {
            sagas,
            next_cursor,
            counts,
        };
        // Answered after the last of the partitions it shows is confirmed.
        let waiting: Vec<u32> = partitions
            .into_iter()
            .filter(|p| self.unconfirmed(*p))
            .collect();
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(waiting.len()));
        let respond = Arc::new(std::sync::Mutex::new(Some((respond, page))));
        let send = {
            let respond = respond.clone();
            move || {
                if let Some((r, page)) = respond.lock().expect("list answer").take() {
                    let _ = r.send(Ok(page));
                }
            }
        };
        if waiting.is_empty() {
            send();
            return;
        }
        for p in waiting {
            let remaining = remaining.clone();
            let send = send.clone();
            self.answer_after(
                p,
                Box::new(move || {
                    if remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        send();
                    }
                }),
            );
        }
    }

    /// Starts a saga (or finds the one its idempotency key started); answered once `Started`
    /// is durable. The flag is true when a new saga was started.
    pub fn start(
        &mut self,
        request: StartRequest,
        now_ms: i64,
        respond: Respond<(Saga, bool)>,
    ) -> Vec<Batch> {
        let def = match self.find_definition(&request.definition, request.version) {
            Some(def) => def,
            None => {
                let _ = respond.send(Err(ApiError::NotFound(format!(
                    "no definition {:?}{}",
                    request.definition,
                    request
                        .version
                        .map(|v| format!(" version {v}"))
                        .unwrap_or_default()
                ))));
                return Vec::new();
            }
        };
        let lock = match &def.spec.lock {
            None => None,
            Some(template) => {
                match crate::template::render_str(template, &json!({ "input": request.input })) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        let _ = respond.send(Err(ApiError::BadRequest(format!(
                            "the definition's lock {template:?} does not render from this input: {e}"
                        ))));
                        return Vec::new();
                    }
                }
            }
        };
        // A saga under a lock lives in the lock's partition, so one instance orders every saga
        // of a lock; a keyed one in its key's partition, so every instance finds it by its key;
        // any other in a partition this instance drives.
        let placed_by = lock.as_ref().or(request.idempotency_key.as_ref());
        let partition = match placed_by {
            Some(key) => match self.owns(key) {
                Ok(p) => p,
                Err(e) => {
                    let _ = respond.send(Err(e));
                    return Vec::new();
                }
            },
            None => {
                let held = self.held();
                if held.is_empty() {
                    let _ = respond.send(Err(ApiError::Unavailable(
                        "this instance drives no journal partition right now; retry".into(),
                    )));
                    return Vec::new();
                }
                held[self.rng.usize(..held.len())]
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
                return Vec::new();
            }
            if let Some(existing) = self.by_key.get(key).and_then(|id| self.sagas.get(id)) {
                let same = existing.definition == request.definition
                    && request.version.is_none_or(|v| v == existing.version)
                    && existing.input == request.input;
                if !same {
                    let _ = respond.send(Err(ApiError::Conflict(format!(
                        "idempotency key {key:?} already started saga {} with a different request",
                        existing.id
                    ))));
                    return Vec::new();
                }
                // Answered once the saga it shows is durable, like the first start.
                let existing = existing.clone();
                self.answer_after(
                    self.partition_of(&existing.id),
                    Box::new(move || {
                        let _ = respond.send(Ok((existing, false)));
                    }),
                );
                return Vec::new();
            }
        }
        let id = self.new_id(partition, now_ms);
        let wait = lock
            .as_ref()
            .is_some_and(|l| self.locks.get(l).is_some_and(|q| !q.is_empty()));
        if let Some(l) = &lock {
            self.locks
                .entry(l.clone())
                .or_default()
                .push_back(id.clone());
        }
        let (saga, entries) = Saga::start(
            id.clone(),
            def,
            request.input,
            request.idempotency_key,
            lock,
            wait,
            now_ms,
        );
        self.sagas.insert(id.clone(), saga);
        self.index(&id);
        let batch = self.journal(&id, entries, now_ms);
        let saga = self.sagas[&id].clone();
        self.answer_after(
            partition,
            Box::new(move || {
                let _ = respond.send(Ok((saga, true)));
            }),
        );
        batch.into_iter().collect()
    }

    /// A new saga id in `partition`: a UUIDv7 (ids sort by creation time) from this core's
    /// random numbers, so a simulation's run repeats exactly.
    pub(super) fn new_id(&mut self, partition: u32, now_ms: i64) -> String {
        loop {
            let mut random = [0u8; 10];
            for b in &mut random {
                *b = self.rng.u8(..);
            }
            let id = uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &random)
                .into_uuid()
                .to_string();
            if self.partition_of(&id) == partition {
                return id;
            }
        }
    }
}
