//! Kafka RecordBatch v2 (magic 2), the unit Strand stores and serves.
//!
//! Strand keeps batches byte for byte as a client sent them, so this module never re-encodes: it
//! checks a batch (framing, magic, CRC-32C, record count, offset deltas) without allocating, reads
//! header fields in place, rewrites the base offset (which the CRC does not cover), and walks the
//! records of an uncompressed batch. Layout, all integers big-endian:
//!
//! ```text
//! 0  base_offset i64        | 12 partition_leader_epoch i32 | 16 magic i8 | 17 crc u32
//! 8  batch_length i32       | 21 attributes i16 | 23 last_offset_delta i32
//! 27 base_timestamp i64     | 35 max_timestamp i64 | 43 producer_id i64 | 51 producer_epoch i16
//! 53 base_sequence i32      | 57 record_count i32  | 61 records...
//! ```
//!
//! `batch_length` counts the bytes after itself; the CRC covers `attributes` to the end.

use std::fmt;

/// Bytes before `batch_length` ends: the base offset and the length field itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed batch header, up to and including `record_count`.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The only record format Strand accepts.
pub const MAGIC_V2: i8 = 2;

const CRC_START: usize = 21;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why a batch was refused. Every variant leaves the caller's log untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("batch is {len} bytes, shorter than the {BATCH_HEADER_BYTES}-byte header")]
    TooShort { len: usize },
    #[error("batch_length field says {declared} bytes follow it, but {actual} do")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("batch is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported record batch magic {0} (only magic 2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("CRC-32C mismatch: header says {stored:#010x}, content hashes to {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("invalid record count {count}")]
    InvalidRecordCount { count: i32 },
    #[error("last_offset_delta {last_offset_delta} does not fit record count {count}")]
    OffsetDeltaMismatch { count: i32, last_offset_delta: i32 },
    #[error("record {index}: {reason}")]
    MalformedRecord { index: usize, reason: &'static str },
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
}

/// How offset deltas inside a batch must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetDeltas {
    /// A batch from a producer: deltas are exactly `0..record_count`.
    Contiguous,
    /// A stored batch that compaction may have thinned: deltas strictly increase and none is
    /// past `last_offset_delta`.
    Increasing,
}

/// Compression codec named by the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The fixed header of a batch, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header from the start of `buf`; only length is checked here.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort { len: buf.len() });
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, 0),
            batch_length: i32_at(buf, 8),
            partition_leader_epoch: i32_at(buf, 12),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes")),
            attributes: i16::from_be_bytes(buf[21..23].try_into().expect("2 bytes")),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16::from_be_bytes(buf[51..53].try_into().expect("2 bytes")),
            base_sequence: i32_at(buf, 53),
            record_count: i32_at(buf, 57),
        })
    }

    /// Total bytes of the batch on disk and on the wire.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// Offset of the last record the batch covers. The CRC does not cover the base offset, so a
    /// hostile peer or a damaged disk can put any value there: past `i64::MAX` this saturates
    /// rather than overflowing (a panic in debug builds, a wrap to a negative offset otherwise).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Ok(match self.attributes & ATTR_COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(BatchError::UnknownCompression(other)),
        })
    }

    /// True when the timestamps are log-append times rather than create times.
    pub fn log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Reads the base offset and the raw `batch_length` field of the batch at the start of `buf`, or
/// `None` when fewer than twelve bytes are there. The length is returned unchecked (it may be
/// negative or huge in garbage) so that framing code can tell garbage from an incomplete tail.
pub fn peek_frame(buf: &[u8]) -> Option<(i64, i32)> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    Some((i64_at(buf, 0), i32_at(buf, 8)))
}

/// Checks that `buf` is exactly one well-formed v2 batch no larger than `max_bytes`, and returns
/// its header. Allocates nothing. Compressed records are not decompressed; for those the record
/// count and `last_offset_delta` must still agree.
pub fn validate(
    buf: &[u8],
    max_bytes: usize,
    deltas: OffsetDeltas,
) -> Result<BatchHeader, BatchError> {
    if buf.len() > max_bytes {
        return Err(BatchError::TooLarge {
            len: buf.len(),
            max: max_bytes,
        });
    }
    let header = BatchHeader::parse(buf)?;
    if i64::from(header.batch_length) != (buf.len() - LOG_OVERHEAD) as i64 {
        return Err(BatchError::LengthMismatch {
            declared: header.batch_length.into(),
            actual: buf.len() - LOG_OVERHEAD,
        });
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    let computed = crc32c::crc32c(&buf[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let count = header.record_count;
    if count <= 0 {
        return Err(BatchError::InvalidRecordCount { count });
    }
    let deltas_fit = match deltas {
        OffsetDeltas::Contiguous => header.last_offset_delta == count - 1,
        OffsetDeltas::Increasing => header.last_offset_delta >= count - 1,
    };
    if !deltas_fit {
        return Err(BatchError::OffsetDeltaMismatch {
            count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.compression()? == Compression::None {
        check_records(buf, &header, deltas)?;
    }
    Ok(header)
}

/// Walks every record of an uncompressed batch, checking that each is well-formed, that the
/// records fill the batch exactly, and that offset deltas run as `deltas` demands.
fn check_records(buf: &[u8], header: &BatchHeader, deltas: OffsetDeltas) -> Result<(), BatchError> {
    let mut records = Records::new(buf, header);
    let mut previous: Option<i32> = None;
    let mut index = 0usize;
    for record in records.by_ref() {
        let record = record?;
        let delta_ok = match (deltas, previous) {
            (OffsetDeltas::Contiguous, _) => record.offset_delta as i64 == index as i64,
            (OffsetDeltas::Increasing, None) => record.offset_delta >= 0,
            (OffsetDeltas::Increasing, Some(p)) => record.offset_delta > p,
        };
        if !delta_ok {
            return Err(BatchError::MalformedRecord {
                index,
                reason: "offset delta out of sequence",
            });
        }
        previous = Some(record.offset_delta);
        index += 1;
    }
    if index != header.record_count as usize {
        return Err(BatchError::MalformedRecord {
            index,
            reason: "fewer records than the record count",
        });
    }
    // Compaction may remove a batch's last record but keeps last_offset_delta, so that the
    // offsets after the batch stay where they were.
    let last_fits = match deltas {
        OffsetDeltas::Contiguous => previous == Some(header.last_offset_delta),
        OffsetDeltas::Increasing => previous.is_some_and(|p| p <= header.last_offset_delta),
    };
    if !last_fits {
        return Err(BatchError::MalformedRecord {
            index: index - 1,
            reason: "last record's offset delta does not fit last_offset_delta",
        });
    }
    if records.pos != buf.len() {
        return Err(BatchError::MalformedRecord {
            index,
            reason: "bytes left over after the last record",
        });
    }
    Ok(())
}

/// Rewrites the base offset in place. The CRC does not cover it, so nothing else changes.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Number of headers, and their encoded bytes (walk them with [`Headers`]).
    pub n_headers: usize,
    pub headers: &'a [u8],
    /// The whole encoded record, length prefix included: a record is self-contained (its
    /// offset and timestamp are deltas from the batch's base), so a compacted batch can be
    /// rebuilt by copying the surviving records' bytes.
    pub raw: &'a [u8],
}

impl fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordView")
            .field("offset_delta", &self.offset_delta)
            .field("timestamp_delta", &self.timestamp_delta)
            .field("key_len", &self.key.map(<[u8]>::len))
            .field("value_len", &self.value.map(<[u8]>::len))
            .field("n_headers", &self.n_headers)
            .finish()
    }
}

impl RecordView<'_> {
    pub fn headers(&self) -> Headers<'_> {
        Headers {
            buf: self.headers,
            left: self.n_headers,
        }
    }
}

/// Iterator over the records of an uncompressed batch. Yields an error (once) at the first
/// malformed record and stops.
#[derive(Debug)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    index: usize,
    count: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    /// Records of `batch`, whose header is `header`; the caller has checked it is uncompressed.
    pub fn new(batch: &'a [u8], header: &BatchHeader) -> Records<'a> {
        Records {
            buf: batch,
            pos: BATCH_HEADER_BYTES,
            index: 0,
            count: header.record_count.max(0) as usize,
            failed: false,
        }
    }

    fn read_record(&mut self) -> Result<RecordView<'a>, &'static str> {
        let start = self.pos;
        let mut cur = Cursor {
            buf: self.buf,
            pos: self.pos,
        };
        let len = cur.varint()?;
        if len < 0 {
            return Err("negative record length");
        }
        let end = cur
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= self.buf.len())
            .ok_or("record length runs past the batch")?;
        let mut rec = Cursor {
            buf: &self.buf[..end],
            pos: cur.pos,
        };
        let attributes = rec.byte()? as i8;
        let timestamp_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable_bytes()?;
        let value = rec.nullable_bytes()?;
        let n_headers = rec.varint()?;
        if n_headers < 0 {
            return Err("negative header count");
        }
        let headers_start = rec.pos;
        for _ in 0..n_headers {
            if rec.nullable_bytes()?.is_none() {
                return Err("null header key");
            }
            rec.nullable_bytes()?;
        }
        if rec.pos != end {
            return Err("record length disagrees with its fields");
        }
        self.pos = end;
        Ok(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            n_headers: n_headers as usize,
            headers: &self.buf[headers_start..end],
            raw: &self.buf[start..end],
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let index = self.index;
        self.index += 1;
        match self.read_record() {
            Ok(record) => Some(Ok(record)),
            Err(reason) => {
                self.failed = true;
                Some(Err(BatchError::MalformedRecord { index, reason }))
            }
        }
    }
}

/// Iterator over a record's headers as `(key, value)`; the record was checked when read.
#[derive(Debug)]
pub struct Headers<'a> {
    buf: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut cur = Cursor {
            buf: self.buf,
            pos: 0,
        };
        let key = cur.nullable_bytes().ok().flatten()?;
        let value = cur.nullable_bytes().ok()?;
        self.buf = &self.buf[cur.pos..];
        Some((key, value))
    }
}

/// Iterator over consecutive whole batches in `buf` (as a fetch returns them), yielding each
/// header with its bytes. Stops at a tail too short to hold a whole batch.
#[derive(Debug)]
pub struct Batches<'a> {
    buf: &'a [u8],
}

impl<'a> Batches<'a> {
    pub fn new(buf: &'a [u8]) -> Batches<'a> {
        Batches { buf }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = (BatchHeader, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let header = BatchHeader::parse(self.buf).ok()?;
        if header.batch_length < 0 || header.total_len() > self.buf.len() {
            return None;
        }
        let (batch, rest) = self.buf.split_at(header.total_len());
        self.buf = rest;
        Some((header, batch))
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or("record truncated")?;
        self.pos += 1;
        Ok(b)
    }

    /// Unsigned LEB128 of at most `max_bytes` bytes.
    fn uvarint(&mut self, max_bytes: usize) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long")
    }

    fn varint(&mut self) -> Result<i32, &'static str> {
        let raw = self.uvarint(5)?;
        let raw = u32::try_from(raw).map_err(|_| "varint overflows 32 bits")?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self) -> Result<i64, &'static str> {
        let raw = self.uvarint(10)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        let len = self.varint()?;
        if len < -1 {
            return Err("length below -1");
        }
        if len == -1 {
            return Ok(None);
        }
        let end = self
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= self.buf.len())
            .ok_or("field runs past the record")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(Some(bytes))
    }
}

fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// Rebuilds a stored uncompressed batch keeping only some of its records (log compaction).
/// Everything in the header stays (base offset, last offset delta, timestamps, producer
/// fields) except the length, record count and CRC, so offsets never change.
pub fn retain_records(batch: &[u8], header: &BatchHeader, kept: &[&[u8]]) -> Vec<u8> {
    let body: usize = kept.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body);
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    for record in kept {
        out.extend_from_slice(record);
    }
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    debug_assert!(header.record_count >= kept.len() as i32);
    out
}

/// Builds an uncompressed v2 batch record by record, as a producer does while it lingers.
///
/// Offsets deltas run from 0; the broker assigns the real base offset on append. Timestamps are
/// create times in milliseconds.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    n_records: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_capacity(1024)
    }

    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        BatchBuilder::with_buffer(Vec::new(), bytes)
    }

    /// A builder writing into `buf` (its contents dropped), with room for at least `bytes`:
    /// a buffer kept from an earlier batch is reused rather than freshly allocated, whose
    /// pages the system would have to map in again as the batch is written.
    pub fn with_buffer(mut buf: Vec<u8>, bytes: usize) -> BatchBuilder {
        buf.clear();
        buf.reserve(bytes.max(BATCH_HEADER_BYTES));
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            n_records: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.n_records == 0
    }

    pub fn n_records(&self) -> usize {
        self.n_records as usize
    }

    /// Bytes the batch would have if finished now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes one more record would add, at most (for size-bounded batching).
    pub fn record_bytes_max(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> usize {
        let field = |b: Option<&[u8]>| 5 + b.map_or(0, <[u8]>::len);
        5 + 1
            + 10
            + 5
            + field(key)
            + field(value)
            + 5
            + headers
                .iter()
                .map(|(k, v)| field(Some(k)) + field(*v))
                .sum::<usize>()
    }

    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        if self.n_records == 0 {
            self.base_timestamp = timestamp;
        }
        // The record's length prefix comes first, so its body length is worked out from the
        // field sizes and the body written straight into the batch (no buffer per record).
        let timestamp_delta = timestamp - self.base_timestamp;
        let body_len = 1
            + varlong_len(timestamp_delta)
            + varint_len(self.n_records)
            + nullable_len(key)
            + nullable_len(value)
            + varint_len(headers.len() as i32)
            + headers
                .iter()
                .map(|(k, v)| nullable_len(Some(k)) + nullable_len(*v))
                .sum::<usize>();
        self.buf.reserve(5 + body_len);
        put_varint(&mut self.buf, body_len as i32);
        let body_start = self.buf.len();
        self.buf.push(0); // record attributes: unused
        put_varlong(&mut self.buf, timestamp_delta);
        put_varint(&mut self.buf, self.n_records);
        put_nullable(&mut self.buf, key);
        put_nullable(&mut self.buf, value);
        put_varint(&mut self.buf, headers.len() as i32);
        for (k, v) in headers {
            put_nullable(&mut self.buf, Some(k));
            put_nullable(&mut self.buf, *v);
        }
        debug_assert_eq!(self.buf.len() - body_start, body_len);
        self.n_records += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    /// Fills in the header and CRC and returns the batch bytes; the builder starts over empty.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut buf = std::mem::replace(&mut self.buf, vec![0; BATCH_HEADER_BYTES]);
        let len = buf.len();
        buf[0..8].copy_from_slice(&0i64.to_be_bytes());
        buf[8..12].copy_from_slice(&((len - LOG_OVERHEAD) as i32).to_be_bytes());
        buf[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        buf[16] = MAGIC_V2 as u8;
        buf[21..23].copy_from_slice(&0i16.to_be_bytes());
        buf[23..27].copy_from_slice(&(self.n_records - 1).to_be_bytes());
        buf[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        buf[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        buf[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        buf[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        buf[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        buf[57..61].copy_from_slice(&self.n_records.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        self.n_records = 0;
        self.max_timestamp = i64::MIN;
        buf
    }
}

/// Bytes of the zigzag varint encoding of `v`.
fn varint_len(v: i32) -> usize {
    uvarint_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

fn varlong_len(v: i64) -> usize {
    uvarint_len(((v << 1) ^ (v >> 63)) as u64)
}

fn uvarint_len(v: u64) -> usize {
    // 7 bits a byte; zero still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes `put_nullable` writes for `bytes`.
fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i32) + b.len(),
    }
}

fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_uvarint(buf, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_nullable(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i32);
            buf.extend_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as KCompression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    fn record(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>, ts: i64) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("h"),
            Some(bytes::Bytes::from_static(b"v")),
        );
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32 - 1,
            timestamp: ts,
            key: key.map(bytes::Bytes::copy_from_slice),
            value: value.map(bytes::Bytes::copy_from_slice),
            headers,
            delete_horizon: false,
        }
    }

    fn encode(records: &[Record], compression: KCompression) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    fn sample(n: usize) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| {
                record(
                    i as i64,
                    Some(b"k"),
                    Some(format!("v{i}").as_bytes()),
                    1000 + i as i64,
                )
            })
            .collect();
        encode(&records, KCompression::None)
    }

    #[test]
    fn accepts_a_kafka_encoded_batch_and_reads_its_records() {
        let batch = sample(3);
        let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.max_timestamp, 1002);
        let values: Vec<_> = Records::new(&batch, &header)
            .map(|r| r.unwrap().value.unwrap().to_vec())
            .collect();
        assert_eq!(values, vec![b"v0".to_vec(), b"v1".to_vec(), b"v2".to_vec()]);
        let first = Records::new(&batch, &header).next().unwrap().unwrap();
        assert_eq!(
            first.headers().collect::<Vec<_>>(),
            vec![(&b"h"[..], Some(&b"v"[..]))]
        );
    }

    #[test]
    fn accepts_compressed_batches_without_decompressing() {
        let records: Vec<Record> = (0..50)
            .map(|i| record(i, None, Some(&[7u8; 100]), 5))
            .collect();
        for codec in [
            KCompression::Gzip,
            KCompression::Snappy,
            KCompression::Lz4,
            KCompression::Zstd,
        ] {
            let batch = encode(&records, codec);
            let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
            assert_ne!(header.compression().unwrap(), Compression::None);
            assert_eq!(header.record_count, 50);
        }
    }

    #[test]
    fn base_offset_rewrite_keeps_the_crc_valid() {
        let mut batch = sample(2);
        set_base_offset(&mut batch, 1 << 40);
        let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
        assert_eq!(header.base_offset, 1 << 40);
        assert_eq!(header.last_offset(), (1 << 40) + 1);
    }

    /// Found by the record_batch fuzz target (fuzz/corpus/record_batch/crash-last-offset-overflow):
    /// a valid batch whose base offset, which the CRC does not cover, is near `i64::MAX`.
    #[test]
    fn last_offset_of_a_base_offset_near_the_maximum_saturates() {
        let mut batch = sample(2);
        set_base_offset(&mut batch, i64::MAX);
        let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
        assert_eq!(header.last_offset(), i64::MAX);
    }

    #[test]
    fn rejects_each_kind_of_damage_with_its_own_error() {
        let good = sample(2);
        assert!(matches!(
            validate(&good[..40], usize::MAX, OffsetDeltas::Contiguous),
            Err(BatchError::TooShort { len: 40 })
        ));
        assert!(matches!(
            validate(
                &good[..good.len() - 1],
                usize::MAX,
                OffsetDeltas::Contiguous
            ),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&good, 10, OffsetDeltas::Contiguous),
            Err(BatchError::TooLarge { .. })
        ));

        let mut magic = good.clone();
        magic[16] = 1;
        assert_eq!(
            validate(&magic, usize::MAX, OffsetDeltas::Contiguous),
            Err(BatchError::UnsupportedMagic(1))
        );

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        assert!(matches!(
            validate(&flipped, usize::MAX, OffsetDeltas::Contiguous),
            Err(BatchError::CrcMismatch { .. })
        ));

        // Fields under the CRC are changed and the CRC recomputed, so only the semantic check can
        // catch them.
        let recrc = |mut b: Vec<u8>| {
            let crc = crc32c::crc32c(&b[CRC_START..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let mut count = good.clone();
        count[57..61].copy_from_slice(&0i32.to_be_bytes());
        assert!(matches!(
            validate(&recrc(count), usize::MAX, OffsetDeltas::Contiguous),
            Err(BatchError::InvalidRecordCount { count: 0 })
        ));
        let mut delta = good.clone();
        delta[23..27].copy_from_slice(&5i32.to_be_bytes());
        assert!(matches!(
            validate(&recrc(delta), usize::MAX, OffsetDeltas::Contiguous),
            Err(BatchError::OffsetDeltaMismatch { .. })
        ));
        let mut too_many = good.clone();
        too_many[57..61].copy_from_slice(&3i32.to_be_bytes());
        too_many[23..27].copy_from_slice(&2i32.to_be_bytes());
        assert!(matches!(
            validate(&recrc(too_many), usize::MAX, OffsetDeltas::Contiguous),
            Err(BatchError::MalformedRecord { .. })
        ));
    }

    #[test]
    fn a_batch_with_gaps_passes_only_as_a_stored_batch() {
        let records = vec![
            record(0, Some(b"a"), Some(b"1"), 1),
            record(2, Some(b"b"), Some(b"2"), 1),
        ];
        let batch = encode(&records, KCompression::None);
        assert!(validate(&batch, usize::MAX, OffsetDeltas::Contiguous).is_err());
        let header = validate(&batch, usize::MAX, OffsetDeltas::Increasing).unwrap();
        assert_eq!(header.last_offset_delta, 2);
    }

    #[test]
    fn batches_iterator_stops_at_a_partial_tail() {
        let mut buf = sample(1);
        buf.extend(sample(2));
        let whole = buf.len();
        buf.extend(&sample(1)[..30]);
        let seen: Vec<_> = Batches::new(&buf).map(|(h, _)| h.record_count).collect();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(Batches::new(&buf[..whole]).count(), 2);
    }

    #[test]
    fn builder_output_decodes_with_an_independent_decoder() {
        let mut builder = BatchBuilder::new();
        builder.push(1000, Some(b"k1"), Some(b"v1"), &[(b"h", Some(b"x"))]);
        builder.push(1005, None, None, &[]);
        builder.push(999, Some(b""), Some(&[0u8; 300]), &[]);
        let batch = builder.finish();
        assert!(builder.is_empty());
        let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
        assert_eq!((header.record_count, header.max_timestamp), (3, 1005));
        let mut bytes = bytes::Bytes::from(batch);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        let got: Vec<_> = set
            .records
            .iter()
            .map(|r| {
                (
                    r.offset,
                    r.timestamp,
                    r.key.clone(),
                    r.value.as_ref().map(|v| v.len()),
                )
            })
            .collect();
        assert_eq!(
            got[0],
            (0, 1000, Some(bytes::Bytes::from_static(b"k1")), Some(2))
        );
        assert_eq!(got[1], (1, 1005, None, None));
        assert_eq!(got[2], (2, 999, Some(bytes::Bytes::new()), Some(300)));
        assert_eq!(set.records[0].headers.len(), 1);
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate(&bytes, 1 << 20, OffsetDeltas::Contiguous);
            let _ = validate(&bytes, 1 << 20, OffsetDeltas::Increasing);
            let _ = Batches::new(&bytes).count();
        }

        #[test]
        fn any_bit_flip_outside_the_broker_owned_fields_is_caught(
            n in 1usize..5, at in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let mut batch = sample(n);
            // The base offset (0..8) and partition leader epoch (12..16) are outside the CRC by
            // design: brokers rewrite them. Every other byte is checked.
            let covered: Vec<usize> = (8..12).chain(16..batch.len()).collect();
            let pos = covered[at.index(covered.len())];
            batch[pos] ^= 1 << bit;
            prop_assert!(validate(&batch, usize::MAX, OffsetDeltas::Contiguous).is_err());
        }

        #[test]
        fn varint_lengths_match_what_is_written(v in any::<i64>(), small in any::<i32>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            buf.clear();
            put_varint(&mut buf, small);
            prop_assert_eq!(buf.len(), varint_len(small));
        }

        #[test]
        fn builder_round_trips_arbitrary_records(
            records in proptest::collection::vec(
                (
                    -100_000i64..100_000,
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
                    proptest::collection::vec(
                        ("[a-z]{0,5}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10))),
                        0..3,
                    ),
                ),
                1..200,
            ),
        ) {
            let mut builder = BatchBuilder::with_capacity(0);
            for (ts, key, value, headers) in &records {
                let headers: Vec<(&[u8], Option<&[u8]>)> =
                    headers.iter().map(|(k, v)| (k.as_bytes(), v.as_deref())).collect();
                builder.push(1_000_000 + ts, key.as_deref(), value.as_deref(), &headers);
            }
            let batch = builder.finish();
            let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
            prop_assert_eq!(header.record_count as usize, records.len());
            let mut bytes = bytes::Bytes::from(batch);
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
            prop_assert_eq!(set.records.len(), records.len());
            for (i, (got, (ts, key, value, headers))) in set.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, i as i64);
                prop_assert_eq!(got.timestamp, 1_000_000 + ts);
                prop_assert_eq!(got.key.as_deref(), key.as_deref());
                prop_assert_eq!(got.value.as_deref(), value.as_deref());
                prop_assert_eq!(got.headers.len(), headers.iter().map(|(k, _)| k).collect::<std::collections::HashSet<_>>().len());
            }
        }

        #[test]
        fn round_trips_arbitrary_records(
            values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), 1..20),
        ) {
            let records: Vec<Record> = values.iter().enumerate()
                .map(|(i, v)| record(i as i64, None, v.as_deref(), i as i64))
                .collect();
            let batch = encode(&records, KCompression::None);
            let header = validate(&batch, usize::MAX, OffsetDeltas::Contiguous).unwrap();
            let back: Vec<Option<Vec<u8>>> = Records::new(&batch, &header)
                .map(|r| r.unwrap().value.map(<[u8]>::to_vec))
                .collect();
            prop_assert_eq!(back, values);
        }
    }
}
