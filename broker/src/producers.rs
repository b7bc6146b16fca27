//! Idempotent producers: per partition, the sequence numbers each producer id has written, so a
//! retried batch is answered with its original offsets instead of being written twice, and a
//! batch that skips ahead (a lost one before it) is refused.
//!
//! Kafka's rules, as clients expect them: a producer id comes with an epoch; a batch carries
//! its first sequence number and covers `record_count` sequences. A batch is a duplicate when it
//! matches one of the last [`BATCHES_KEPT`] batches of its producer exactly; it is in order when
//! it starts right after the last one (sequences wrap from `i32::MAX` to 0); a new epoch starts
//! at sequence 0; an older epoch is fenced.
//!
//! The table lives in memory and is rebuilt when a partition opens, from the batch headers of
//! the last `log.producer_state_scan_bytes` of its log (whole segments, so at least that much):
//! every idempotent batch there is recorded again with the offsets it was written at, so a
//! retry that straddles a restart (or a crash) is still answered as a duplicate. A producer
//! whose last batch lies before that tail is not known after a restart, and its next batch is
//! taken at whatever sequence it carries (as Kafka does once a producer's state has expired).

use std::collections::{HashMap, VecDeque};

use strand_client::batch::Batches;

use crate::log::{LogError, LogReader};

/// Bytes read at a time while rebuilding.
const REBUILD_READ_BYTES: usize = 1 << 20;

/// Batches remembered per producer and partition: Kafka clients keep at most five in flight.
pub const BATCHES_KEPT: usize = 5;

/// Producers remembered per partition; the least recently used is forgotten past this.
pub const PRODUCERS_MAX: usize = 10_000;

/// Where an idempotent batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order: append it, then [`ProducerTable::record`] it.
    Append,
    /// Already written: answer with where it went the first time.
    Duplicate { base_offset: u64, last_offset: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current}")]
    FencedEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
}

/// One batch's identity: producer, epoch and the sequences it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSequence {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub record_count: i32,
}

impl BatchSequence {
    fn last_seq(&self) -> i32 {
        next_seq(self.first_seq, self.record_count - 1)
    }
}

fn next_seq(seq: i32, n: i32) -> i32 {
    // Sequences wrap to 0 after i32::MAX.
    ((seq as i64 + n as i64) % (i32::MAX as i64 + 1)) as i32
}

#[derive(Debug, Clone, Copy)]
struct Written {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Written>,
    last_used: u64,
}

/// The sequence state of one partition.
#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, Producer>,
    clock: u64,
}

impl ProducerTable {
    /// Decides what to do with a batch; changes nothing.
    pub fn check(&self, batch: &BatchSequence) -> Result<SequenceCheck, SequenceError> {
        let Some(p) = self.producers.get(&batch.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if batch.epoch < p.epoch {
            return Err(SequenceError::FencedEpoch {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                current: p.epoch,
            });
        }
        if batch.epoch > p.epoch {
            return if batch.first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    producer_id: batch.producer_id,
                    expected: 0,
                    got: batch.first_seq,
                })
            };
        }
        let last_seq = batch.last_seq();
        if let Some(w) = p
            .recent
            .iter()
            .find(|w| w.first_seq == batch.first_seq && w.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: w.base_offset,
                last_offset: w.last_offset,
            });
        }
        let expected = p.recent.back().map_or(0, |w| next_seq(w.last_seq, 1));
        if batch.first_seq == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                producer_id: batch.producer_id,
                expected,
                got: batch.first_seq,
            })
        }
    }

    /// The table the batches at the end of `log` describe (see the module doc): every
    /// idempotent batch from [`LogReader::tail_start_offset`]`(scan_bytes)` to the high
    /// watermark, recorded in log order.
    pub fn rebuild(log: &LogReader, scan_bytes: u64) -> Result<ProducerTable, LogError> {
        let mut table = ProducerTable::default();
        let end = log.high_watermark();
        let mut offset = log.tail_start_offset(scan_bytes);
        while offset < end {
            let read = log.read(offset, REBUILD_READ_BYTES)?;
            let mut next = offset;
            for (h, _) in Batches::new(&read.batches) {
                let base_offset = h.base_offset.max(0) as u64;
                let last_offset = base_offset + h.last_offset_delta.max(0) as u64;
                next = last_offset + 1;
                if h.producer_id >= 0 && h.base_sequence >= 0 {
                    let batch = BatchSequence {
                        producer_id: h.producer_id,
                        epoch: h.producer_epoch,
                        first_seq: h.base_sequence,
                        record_count: h.record_count.max(1),
                    };
                    table.record(&batch, base_offset, last_offset);
                }
            }
            if next <= offset {
                // Nothing whole came back (the log changed under the read): stop rather than
                // spin; what was recorded so far stands.
                break;
            }
            offset = next;
        }
        Ok(table)
    }

    /// Remembers a batch that was appended at `base_offset..=last_offset`.
    pub fn record(&mut self, batch: &BatchSequence, base_offset: u64, last_offset: u64) {
        self.clock += 1;
        if !self.producers.contains_key(&batch.producer_id) && self.producers.len() >= PRODUCERS_MAX
        {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
        }
        let p = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| Producer {
                epoch: batch.epoch,
                recent: VecDeque::new(),
                last_used: 0,
            });
        if batch.epoch != p.epoch {
            p.epoch = batch.epoch;
            p.recent.clear();
        }
        p.last_used = self.clock;
        if p.recent.len() == BATCHES_KEPT {
            p.recent.pop_front();
        }
        p.recent.push_back(Written {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq(),
            base_offset,
            last_offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first_seq: i32, record_count: i32) -> BatchSequence {
        BatchSequence {
            producer_id: 7,
            epoch,
            first_seq,
            record_count,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_get_their_first_offsets() {
        let mut t = ProducerTable::default();
        let mut offset = 0;
        for i in 0..8 {
            let b = batch(0, i * 10, 10);
            assert_eq!(t.check(&b), Ok(SequenceCheck::Append));
            t.record(&b, offset, offset + 9);
            offset += 10;
        }
        // The last five are remembered: a retry of any gets its original offsets.
        assert_eq!(
            t.check(&batch(0, 70, 10)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 70,
                last_offset: 79
            })
        );
        assert_eq!(
            t.check(&batch(0, 30, 10)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 30,
                last_offset: 39
            })
        );
        // Older than that is out of order, and so is a gap.
        assert!(matches!(
            t.check(&batch(0, 10, 10)),
            Err(SequenceError::OutOfOrder { expected: 80, .. })
        ));
        assert!(matches!(
            t.check(&batch(0, 90, 10)),
            Err(SequenceError::OutOfOrder { expected: 80, .. })
        ));
        assert_eq!(t.check(&batch(0, 80, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut t = ProducerTable::default();
        t.record(&batch(3, 0, 5), 0, 4);
        assert!(matches!(
            t.check(&batch(2, 5, 1)),
            Err(SequenceError::FencedEpoch { current: 3, .. })
        ));
        assert!(matches!(
            t.check(&batch(4, 5, 1)),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(t.check(&batch(4, 0, 1)), Ok(SequenceCheck::Append));
        t.record(&batch(4, 0, 1), 5, 5);
        assert!(matches!(
            t.check(&batch(3, 5, 1)),
            Err(SequenceError::FencedEpoch { .. })
        ));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let mut t = ProducerTable::default();
        let b = batch(0, i32::MAX - 1, 2);
        t.record(&b, 0, 1);
        assert_eq!(t.check(&batch(0, 0, 1)), Ok(SequenceCheck::Append));
        let wrapping = batch(0, 0, 1);
        t.record(&wrapping, 2, 2);
        assert_eq!(t.check(&batch(0, 1, 3)), Ok(SequenceCheck::Append));
    }

    /// One stored batch of `n` records, from producer `producer_id` starting at `first_seq`,
    /// or from no producer when `producer_id` is -1.
    fn stored_batch(producer_id: i64, first_seq: i32, n: usize) -> Vec<u8> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch: if producer_id < 0 { -1 } else { 0 },
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: if producer_id < 0 {
                    -1
                } else {
                    first_seq + i as i32
                },
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(bytes::Bytes::from(vec![b'x'; 200])),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut out = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut out, &records, &options).unwrap();
        out.to_vec()
    }

    /// The table rebuilt from a log knows the producers whose batches lie in the scanned tail,
    /// with the offsets they were written at, and not the ones before it.
    #[test]
    fn the_table_is_rebuilt_from_the_tail_of_the_log() {
        use crate::log::{Log, LogConfig};
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes_max: 4096,
            ..LogConfig::default()
        };
        let (mut log, _) = Log::open(dir.path(), config).unwrap();
        // Producer 1 first, then enough anonymous batches for several segments, then 2.
        log.append(&mut stored_batch(1, 0, 3)).unwrap();
        for _ in 0..60 {
            log.append(&mut stored_batch(-1, 0, 1)).unwrap();
        }
        let at = log.append(&mut stored_batch(2, 0, 4)).unwrap();
        log.append(&mut stored_batch(2, 4, 1)).unwrap();
        let reader = log.reader();
        let batch = |producer_id, first_seq, record_count| BatchSequence {
            producer_id,
            epoch: 0,
            first_seq,
            record_count,
        };

        let whole = ProducerTable::rebuild(&reader, u64::MAX).unwrap();
        assert_eq!(
            whole.check(&batch(1, 0, 3)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 0,
                last_offset: 2
            })
        );
        assert_eq!(
            whole.check(&batch(2, 0, 4)),
            Ok(SequenceCheck::Duplicate {
                base_offset: at.base_offset,
                last_offset: at.base_offset + 3
            })
        );
        assert!(matches!(
            whole.check(&batch(2, 9, 1)),
            Err(SequenceError::OutOfOrder { expected: 5, .. })
        ));

        // Only the last segment: producer 2 is known, producer 1 is not (any sequence goes).
        let tail = ProducerTable::rebuild(&reader, 1).unwrap();
        assert!(matches!(
            tail.check(&batch(2, 4, 1)),
            Ok(SequenceCheck::Duplicate { .. })
        ));
        assert_eq!(tail.check(&batch(1, 77, 1)), Ok(SequenceCheck::Append));
        assert!(matches!(
            whole.check(&batch(1, 77, 1)),
            Err(SequenceError::OutOfOrder { expected: 3, .. })
        ));
    }

    #[test]
    fn unknown_producers_start_anywhere_and_the_table_is_bounded() {
        let mut t = ProducerTable::default();
        for id in 0..PRODUCERS_MAX as i64 + 10 {
            let b = BatchSequence {
                producer_id: id,
                epoch: 0,
                first_seq: 42,
                record_count: 1,
            };
            assert_eq!(t.check(&b), Ok(SequenceCheck::Append));
            t.record(&b, id as u64, id as u64);
        }
        assert_eq!(t.producers.len(), PRODUCERS_MAX);
        assert!(
            !t.producers.contains_key(&0),
            "the least recently used went"
        );
    }
}
