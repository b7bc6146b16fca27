//! Journal batches, and what their confirmation releases: calls, outcomes, API answers; and
//! fencing, from the offsets the journal gives the appends.

use super::*;

/// Entries to append, in order, to one journal partition.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub partition: u32,
    pub entries: Vec<Entry>,
}

/// What to do once batches are durable.
#[derive(Debug, Default)]
pub struct Effects {
    pub calls: Vec<Call>,
    pub outcomes: Vec<(String, Outcome)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.outcomes.is_empty()
    }
}

/// What confirmed batches release.
#[derive(Debug)]
pub enum Confirmed {
    /// Act on these (the answers were sent already).
    Effects(Effects),
    /// An append of `partition` landed past where this instance expected: read the journal
    /// partition in `from..to` and say with [`Core::checked`] whether another owner's marker
    /// is there.
    Check { partition: u32, from: u64, to: u64 },
}

/// A journal partition this instance drives.
pub(super) struct Held {
    pub(super) epoch: u64,
    /// The offset this instance's next confirmed append must have.
    pub(super) next_offset: u64,
    /// Appended, not yet confirmed, by batch id (the order they were appended in).
    pub(super) pending: BTreeMap<u64, Pending>,
    /// A check is under way: confirmations wait.
    pub(super) checking: bool,
    /// Every saga of the partition goes into the next checkpoint (right after a takeover: the
    /// journal entries it replayed are past the old checkpoint).
    pub(super) snapshot_all: bool,
}

pub(super) struct Pending {
    pub(super) len: usize,
    pub(super) offsets: Option<Vec<u64>>,
    pub(super) effects: Effects,
    pub(super) answers: Vec<Answer>,
}

impl Core {
    // ---- journal confirmations and fencing ----

    pub(super) fn batch(
        &mut self,
        partition: u32,
        entries: Vec<Entry>,
        effects: Effects,
    ) -> Option<Batch> {
        if entries.is_empty() {
            return None;
        }
        let held = self.held.get_mut(&partition)?;
        let id = self.next_batch;
        self.next_batch += 1;
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|mut e| {
                e.epoch = held.epoch;
                e
            })
            .collect();
        held.pending.insert(
            id,
            Pending {
                len: entries.len(),
                offsets: None,
                effects,
                answers: Vec::new(),
            },
        );
        Some(Batch {
            id,
            partition,
            entries,
        })
    }

    /// Sends `answer` once everything appended to `partition` so far is confirmed (at once
    /// when nothing is waiting).
    pub(super) fn answer_after(&mut self, partition: u32, answer: Answer) {
        match self
            .held
            .get_mut(&partition)
            .and_then(|h| h.pending.values_mut().next_back())
        {
            Some(last) => last.answers.push(answer),
            None => answer(),
        }
    }

    /// Journal offsets of a batch's entries, once durable. Releases, in append order, what
    /// every batch confirmed so far announces.
    pub fn confirmed(&mut self, partition: u32, batch: u64, offsets: Vec<u64>) -> Vec<Confirmed> {
        let Some(held) = self.held.get_mut(&partition) else {
            return Vec::new();
        };
        if let Some(p) = held.pending.get_mut(&batch) {
            p.offsets = Some(offsets);
        }
        self.release(partition)
    }

    pub(super) fn release(&mut self, partition: u32) -> Vec<Confirmed> {
        let mut out = Vec::new();
        let Some(held) = self.held.get_mut(&partition) else {
            return out;
        };
        while !held.checking {
            let Some(mut first) = held.pending.first_entry() else {
                break;
            };
            let Some(offsets) = &first.get().offsets else {
                break;
            };
            let expected = held.next_offset;
            let contiguous = offsets.len() == first.get().len
                && offsets
                    .iter()
                    .enumerate()
                    .all(|(i, o)| *o == expected + i as u64);
            if !contiguous {
                let to = offsets.first().copied().unwrap_or(expected).max(expected);
                if to > expected {
                    held.checking = true;
                    out.push(Confirmed::Check {
                        partition,
                        from: expected,
                        to,
                    });
                    break;
                }
                // Offsets that go backwards or have holes: nothing to trust.
                tracing::error!(
                    partition,
                    ?offsets,
                    expected,
                    "journal offsets out of order"
                );
                held.checking = true;
                out.push(Confirmed::Check {
                    partition,
                    from: expected,
                    to: expected,
                });
                break;
            }
            held.next_offset = expected + first.get().len as u64;
            let pending = first.get_mut();
            for answer in pending.answers.drain(..) {
                answer();
            }
            let effects = std::mem::take(&mut pending.effects);
            first.remove();
            if !effects.is_empty() {
                out.push(Confirmed::Effects(effects));
            }
        }
        out
    }

    /// The answer to a [`Confirmed::Check`]: whether another owner's marker is in the range.
    /// Fenced, the partition is given up; otherwise some other writer's records (a stale
    /// owner's, which replays ignore) were in the way and the confirmations go on.
    pub fn checked(&mut self, partition: u32, to: u64, foreign_owner: bool) -> Vec<Confirmed> {
        if foreign_owner || to == 0 {
            tracing::warn!(
                partition,
                "another instance owns this journal partition now: letting it go"
            );
            self.give_up(&[partition]);
            return Vec::new();
        }
        let Some(held) = self.held.get_mut(&partition) else {
            return Vec::new();
        };
        if to <= held.next_offset {
            // Out-of-order offsets with nobody else in between: give up to be safe.
            self.give_up(&[partition]);
            return Vec::new();
        }
        held.next_offset = to;
        held.checking = false;
        self.release(partition)
    }

    /// The epoch this instance holds `partition` under.
    pub fn epoch(&self, partition: u32) -> Option<u64> {
        self.held.get(&partition).map(|h| h.epoch)
    }

    /// The offset the next confirmed append of `partition` must have.
    pub fn next_offset(&self, partition: u32) -> Option<u64> {
        self.held.get(&partition).map(|h| h.next_offset)
    }

    /// Whether appends of `partition` wait for their confirmation.
    pub fn unconfirmed(&self, partition: u32) -> bool {
        self.held
            .get(&partition)
            .is_some_and(|h| !h.pending.is_empty())
    }
}
