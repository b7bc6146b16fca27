//! Random sequences of appends, reads, rolls, retention, timestamp lookups and reopenings
//! (clean and after a simulated crash) against a plain in-memory model of the log.

use proptest::prelude::*;
use strand_broker::log::{Log, LogConfig, LogError};
use strand_client::batch::{BatchHeader, Batches};

use super::support::batch;

#[derive(Debug, Clone)]
enum Op {
    Append {
        n_records: usize,
        value_len: usize,
        ts_step: i64,
    },
    Read {
        pick: usize,
        max_bytes: usize,
    },
    Roll,
    Retention {
        at_pick: usize,
    },
    OffsetForTimestamp {
        pick: i64,
    },
    Reopen {
        clean: bool,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 0usize..300, 0i64..50).prop_map(|(n_records, value_len, ts_step)| Op::Append { n_records, value_len, ts_step }),
        4 => (any::<usize>(), 1usize..3000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => Just(Op::Roll),
        1 => any::<usize>().prop_map(|at_pick| Op::Retention { at_pick }),
        2 => (-10i64..2000).prop_map(|pick| Op::OffsetForTimestamp { pick }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::Flush),
    ]
}

/// A stored batch as the model remembers it.
#[derive(Debug, Clone)]
struct Stored {
    base: u64,
    last: u64,
    bytes: Vec<u8>,
    /// Timestamp of each record, in offset order.
    timestamps: Vec<i64>,
}

struct Model {
    batches: Vec<Stored>,
    next_offset: u64,
    clock: i64,
}

impl Model {
    fn start(&self) -> u64 {
        self.batches.first().map_or(self.next_offset, |b| b.base)
    }
}

fn run(
    ops: Vec<Op>,
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 2048,
        index_interval_bytes: 200,
        // Eight offset entries: full indexes roll segments too.
        index_bytes_max: 64,
        retention_bytes,
        retention_ms,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(dir.path(), config.clone()).unwrap();
    let mut model = Model {
        batches: Vec::new(),
        next_offset: 0,
        clock: 0,
    };
    for op in ops {
        match op {
            Op::Append {
                n_records,
                value_len,
                ts_step,
            } => {
                model.clock += ts_step;
                let values: Vec<Vec<u8>> = (0..n_records)
                    .map(|i| vec![(i % 251) as u8; value_len])
                    .collect();
                let mut bytes = batch(&values, model.clock);
                let info = log.append(&mut bytes).unwrap();
                prop_assert_eq!(info.base_offset, model.next_offset);
                prop_assert_eq!(info.last_offset, model.next_offset + n_records as u64 - 1);
                model.batches.push(Stored {
                    base: info.base_offset,
                    last: info.last_offset,
                    bytes,
                    timestamps: (0..n_records as i64).map(|i| model.clock + i).collect(),
                });
                model.next_offset = info.last_offset + 1;
                model.clock += n_records as i64;
            }
            Op::Read { pick, max_bytes } => {
                let reader = log.reader();
                let span = model.next_offset - model.start() + 3;
                let offset = (model.start() + (pick as u64 % span)).saturating_sub(1);
                match reader.read(offset, max_bytes) {
                    Ok(result) => {
                        prop_assert!(offset >= model.start() && offset <= model.next_offset);
                        prop_assert_eq!(result.high_watermark, model.next_offset);
                        prop_assert_eq!(result.log_start_offset, model.start());
                        if offset == model.next_offset {
                            prop_assert!(result.batches.is_empty());
                            continue;
                        }
                        let first = model.batches.iter().position(|b| b.last >= offset).unwrap();
                        let got: Vec<&[u8]> =
                            Batches::new(&result.batches).map(|(_, b)| b).collect();
                        prop_assert!(!got.is_empty(), "empty read at {}", offset);
                        let total: usize = got.iter().map(|b| b.len()).sum();
                        prop_assert_eq!(total, result.batches.len(), "partial batch returned");
                        prop_assert!(
                            got.len() == 1 || total <= max_bytes,
                            "over max_bytes with {} batches",
                            got.len()
                        );
                        for (i, bytes) in got.iter().enumerate() {
                            prop_assert_eq!(*bytes, &model.batches[first + i].bytes[..]);
                        }
                    }
                    Err(LogError::OffsetOutOfRange { .. }) => {
                        prop_assert!(offset < model.start() || offset > model.next_offset);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("read failed: {e}"))),
                }
            }
            Op::Roll => log.roll().unwrap(),
            Op::Retention { at_pick } => {
                let now = model.clock + (at_pick % 3000) as i64;
                let before: u64 = model.batches.iter().map(|b| b.bytes.len() as u64).sum();
                let report = log.enforce_retention(now).unwrap();
                let start = report.log_start_offset;
                prop_assert!(start >= model.start());
                prop_assert!(
                    model.batches.iter().any(|b| b.base == start) || start == model.next_offset,
                    "start {} is not a batch boundary",
                    start
                );
                if let Some(ms) = retention_ms {
                    // Time retention deletes a segment only when its newest record is older than
                    // the window, so no removed batch may hold a record inside it.
                    let horizon = now - ms as i64;
                    for removed in model.batches.iter().filter(|b| b.base < start) {
                        let newest = *removed.timestamps.last().unwrap();
                        prop_assert!(
                            newest < horizon,
                            "removed a batch at {} inside the window (>= {})",
                            newest,
                            horizon
                        );
                    }
                }
                model.batches.retain(|b| b.base >= start);
                // The active segment is never deleted, so the end of the log stays.
                prop_assert_eq!(log.high_watermark(), model.next_offset);
                let after: u64 = model.batches.iter().map(|b| b.bytes.len() as u64).sum();
                if let Some(limit) = retention_bytes {
                    prop_assert!(
                        after >= limit.min(before),
                        "kept {} bytes, below the {} limit",
                        after,
                        limit
                    );
                }
                prop_assert_eq!(log.log_start_offset(), start);
            }
            Op::OffsetForTimestamp { pick } => {
                let reader = log.reader();
                let expected = model.batches.iter().find_map(|b| {
                    b.timestamps
                        .iter()
                        .position(|&t| t >= pick)
                        .map(|i| b.base + i as u64)
                });
                prop_assert_eq!(reader.offset_for_timestamp(pick).unwrap(), expected);
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap();
                } else {
                    drop(log);
                }
                let (reopened, report) = Log::open(dir.path(), config.clone()).unwrap();
                prop_assert_eq!(report.clean_shutdown, clean);
                prop_assert!(
                    report.truncations.is_empty(),
                    "cut an intact log: {:?}",
                    report
                );
                log = reopened;
                prop_assert_eq!(log.high_watermark(), model.next_offset);
                prop_assert_eq!(log.log_start_offset(), model.start());
            }
            Op::Flush => {
                prop_assert_eq!(log.flush().unwrap(), model.next_offset);
                prop_assert_eq!(log.reader().durable_offset(), model.next_offset);
            }
        }
    }
    // Whatever happened, every remaining batch reads back byte for byte, in order.
    let reader = log.reader();
    let mut offset = model.start();
    let mut idx = 0;
    while offset < model.next_offset {
        let result = reader.read(offset, 1 << 20).unwrap();
        for (header, bytes) in Batches::new(&result.batches) {
            let header: BatchHeader = header;
            prop_assert_eq!(bytes, &model.batches[idx].bytes[..]);
            offset = header.last_offset() as u64 + 1;
            idx += 1;
        }
    }
    prop_assert_eq!(idx, model.batches.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, None, None)?;
    }

    #[test]
    fn log_matches_model_under_size_retention(
        ops in proptest::collection::vec(op(), 1..80),
        limit in 500u64..6000,
    ) {
        run(ops, Some(limit), None)?;
    }

    #[test]
    fn log_matches_model_under_time_retention(
        ops in proptest::collection::vec(op(), 1..80),
        ms in 50u64..2000,
    ) {
        run(ops, None, Some(ms))?;
    }
}
