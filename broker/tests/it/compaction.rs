//! Log compaction: the latest record per key survives at its original offset, tombstones go
//! after their retention, the log shrinks on disk, and a crash mid-pass leaves it readable.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use strand_broker::log::{Log, LogReader};

use super::support::{encode_records, small_config, KeyValue};

/// A batch of (key, value) records; `None` values are tombstones.
fn keyed_batch(records: &[(String, Option<String>)], ts: i64) -> Vec<u8> {
    let records: Vec<KeyValue> = records
        .iter()
        .map(|(k, v)| (Some(Bytes::from(k.clone())), v.clone().map(Bytes::from), ts))
        .collect();
    encode_records(&records, Compression::None)
}

/// Every record from the log start: (offset, key, value).
fn read_keyed(reader: &LogReader) -> Vec<(u64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = reader.log_start_offset();
    while offset < reader.high_watermark() {
        let mut bytes = reader.read(offset, 1 << 20).unwrap().batches;
        if bytes.is_empty() {
            break;
        }
        while !bytes.is_empty() {
            let before = bytes.len();
            let header = strand_client::batch::BatchHeader::parse(&bytes).unwrap();
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            assert!(bytes.len() < before);
            for r in set.records {
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                out.push((
                    r.offset as u64,
                    key,
                    r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                ));
            }
            offset = header.last_offset() as u64 + 1;
        }
    }
    out
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Writes 600 records over 20 keys in batches of 3, every 7th a tombstone; returns what each
/// key's latest record was, with its offset.
fn fill(log: &mut Log) -> HashMap<String, (u64, Option<String>)> {
    let mut latest = HashMap::new();
    let mut n = 0u64;
    for b in 0..200 {
        let records: Vec<(String, Option<String>)> = (0..3)
            .map(|i| {
                let m = n + i;
                let key = format!("k{}", m % 20);
                let value = (m % 7 != 0).then(|| format!("value-{m}-{}", "x".repeat(40)));
                (key, value)
            })
            .collect();
        let info = log.append(&mut keyed_batch(&records, 1000 + b)).unwrap();
        for (i, (key, value)) in records.into_iter().enumerate() {
            latest.insert(key, (info.base_offset + i as u64, value));
        }
        n += 3;
    }
    log.roll().unwrap();
    latest
}

#[test]
fn compaction_keeps_the_latest_value_per_key_at_its_offset_and_shrinks_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let latest = fill(&mut log);
    let before = log_bytes(dir.path());
    // Tombstones still inside their retention window stay.
    let report = log.cleaner().clean(2000, 1_000_000).unwrap();
    assert!(
        report.segments_rewritten > 0 && report.records_removed > 0,
        "{report:?}"
    );
    assert_eq!(report.tombstones_removed, 0);
    let after = log_bytes(dir.path());
    assert!(after * 3 < before, "{before} bytes before, {after} after");
    let records = read_keyed(&log.reader());
    assert_eq!(records.len(), 20, "one record per key");
    for (offset, key, value) in &records {
        assert_eq!(latest[key], (*offset, value.clone()), "key {key}");
    }
    // Offsets are unchanged: the log ends where it ended and appends go on from there.
    assert_eq!(log.high_watermark(), 600);
    assert_eq!(
        log.append(&mut keyed_batch(&[("k1".into(), Some("new".into()))], 5000))
            .unwrap()
            .base_offset,
        600
    );

    // Past the retention window, tombstones delete their keys.
    log.roll().unwrap();
    let report = log.cleaner().clean(10_000_000, 1000).unwrap();
    assert!(report.tombstones_removed > 0, "{report:?}");
    let records = read_keyed(&log.reader());
    let mut final_state = latest.clone();
    final_state.insert("k1".into(), (600, Some("new".into())));
    let live = final_state.values().filter(|(_, v)| v.is_some()).count();
    assert!(live < 20, "the test needs some keys to end tombstoned");
    assert_eq!(records.len(), live);
    assert!(records.iter().all(|(_, _, v)| v.is_some()));
    let k1 = records.iter().find(|(_, k, _)| k == "k1").unwrap();
    assert_eq!((k1.0, k1.2.as_deref()), (600, Some("new")));

    // The compacted log reopens the same, cleanly or after a crash.
    let expected = read_keyed(&log.reader());
    log.close().unwrap();
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.clean_shutdown);
    assert_eq!(read_keyed(&log.reader()), expected);
    drop(log);
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(read_keyed(&log.reader()), expected);
}

#[test]
fn a_crash_in_the_middle_of_a_cleaning_pass_leaves_a_readable_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    fill(&mut log);
    let original = read_keyed(&log.reader());
    drop(log);
    let first_log = dir.path().join("00000000000000000000.log");

    // Crash after the cleaned copy was partly written: the copy is discarded.
    std::fs::write(
        dir.path().join("00000000000000000000.cleaned"),
        b"half a segment",
    )
    .unwrap();
    // Crash after the old indexes were removed, before the rename: they are rebuilt.
    std::fs::remove_file(dir.path().join("00000000000000000000.index")).unwrap();
    std::fs::remove_file(dir.path().join("00000000000000000000.timeindex")).unwrap();
    let (mut log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert!(!dir.path().join("00000000000000000000.cleaned").exists());
    assert_eq!(read_keyed(&log.reader()), original);

    // Crash after the rename, before the new indexes were written: a full pass, then the
    // indexes of every rewritten segment removed, as if the process died right there.
    log.roll().unwrap();
    log.cleaner().clean(2000, 1_000_000).unwrap();
    let compacted = read_keyed(&log.reader());
    drop(log);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "index" || e == "timeindex")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let (log, report) = Log::open(dir.path(), small_config()).unwrap();
    assert!(report.truncations.is_empty(), "{report:?}");
    assert!(!report.indexes_rebuilt.is_empty() || report.segments_scanned > 0);
    assert_eq!(read_keyed(&log.reader()), compacted);
    assert!(first_log.exists());
}
