//! Builds record batches with the `kafka-protocol` crate, an encoder nobody here wrote, and
//! reads them back.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use strand_broker::log::{LogConfig, LogReader};

/// One uncompressed batch holding `values`, the i-th record stamped `ts + i`.
pub fn batch(values: &[Vec<u8>], ts: i64) -> Vec<u8> {
    batch_with(values, ts, Compression::None)
}

pub fn batch_with(values: &[Vec<u8>], ts: i64, compression: Compression) -> Vec<u8> {
    let records: Vec<KeyValue> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                Some(Bytes::from(format!("key-{i}"))),
                Some(Bytes::copy_from_slice(v)),
                ts + i as i64,
            )
        })
        .collect();
    encode_records(&records, compression)
}

/// A record to encode: key, value (`None` is a tombstone) and timestamp.
pub type KeyValue = (Option<Bytes>, Option<Bytes>, i64);

/// One batch of `records`, offset deltas from 0, encoded by `kafka-protocol`.
pub fn encode_records(records: &[KeyValue], compression: Compression) -> Vec<u8> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value, timestamp))| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset minus sequence changes.
            sequence: i as i32 - 1,
            timestamp: *timestamp,
            key: key.clone(),
            value: value.clone(),
            headers: IndexMap::new(),
            delete_horizon: false,
        })
        .collect();
    encode_batch(&records, compression).to_vec()
}

/// Encodes records (offsets and sequences already set) as RecordBatch v2 with `kafka-protocol`.
pub fn encode_batch(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Decodes stored batches into (offset, value) pairs.
pub fn decode(mut bytes: Bytes) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode stored batch");
        for record in set.records {
            out.push((
                record.offset,
                record.value.map(|v| v.to_vec()).unwrap_or_default(),
            ));
        }
    }
    out
}

/// Every record from `from` to the high watermark.
pub fn read_all(reader: &LogReader, from: u64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < reader.high_watermark() {
        let result = reader.read(offset, 64 * 1024).expect("read");
        assert!(
            !result.batches.is_empty(),
            "empty read below the high watermark at {offset}"
        );
        let records = decode(result.batches);
        offset = records.last().expect("records").0 as u64 + 1;
        out.extend(records);
    }
    out
}

/// Small segments and a dense index, so that a few kilobytes exercise rolls and lookups.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        index_bytes_max: 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

pub fn values(prefix: &str, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut v = format!("{prefix}-{i}-").into_bytes();
            v.resize(len.max(v.len()), b'x');
            v
        })
        .collect()
}
