//! RecordBatch v2 checks and the record walker, on bytes a producer sent.
//!
//! The CRC-32C would stop almost every mutation at the checksum, so each input is validated
//! twice: as it is, then with its CRC field set to the right value, which lets the fuzzer reach
//! the record walker. The walker and the header iterator also run on unvalidated bytes, as
//! `Batches` does on a fetch response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strand_client::batch::{self, BatchHeader, Batches, OffsetDeltas, Records, BATCH_HEADER_BYTES};

/// Where the CRC is stored, and where the bytes it covers start.
const CRC_AT: usize = 17;
const CRC_START: usize = 21;
const BATCH_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= BATCH_HEADER_BYTES {
        let mut fixed = data.to_vec();
        let crc = crc32c::crc32c(&fixed[CRC_START..]);
        fixed[CRC_AT..CRC_START].copy_from_slice(&crc.to_be_bytes());
        check(&fixed);
    }
    for (header, bytes) in Batches::new(data) {
        walk(bytes, &header);
    }
});

fn check(buf: &[u8]) {
    for deltas in [OffsetDeltas::Contiguous, OffsetDeltas::Increasing] {
        match batch::validate(buf, BATCH_BYTES_MAX, deltas) {
            Ok(header) => {
                assert_eq!(header.total_len(), buf.len());
                let _ = header.compression();
                if header.compression() == Ok(batch::Compression::None) {
                    // A validated uncompressed batch walks without an error, every record.
                    let mut n = 0;
                    for record in Records::new(buf, &header) {
                        let record = record.expect("a validated batch's records are well-formed");
                        assert_eq!(record.headers().count(), record.n_headers);
                        n += 1;
                    }
                    assert_eq!(n, header.record_count as usize);
                    thin(buf, &header);
                }
                // What a consumer does with every fetched batch.
                let _ = header.last_offset();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    if let Ok(header) = BatchHeader::parse(buf) {
        walk(buf, &header);
    }
}

/// The walker on bytes nobody checked: it may fail, but only with an error.
fn walk(buf: &[u8], header: &BatchHeader) {
    for record in Records::new(buf, header).take(10_000) {
        match record {
            Ok(record) => {
                for (key, value) in record.headers() {
                    let _ = (key.len(), value.map(<[u8]>::len));
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// Compaction keeps a subset of a stored batch's records; the thinned batch must still be
/// valid, with the same offsets.
fn thin(buf: &[u8], header: &BatchHeader) {
    let records: Vec<_> = Records::new(buf, header)
        .map(|r| r.expect("validated"))
        .collect();
    let kept: Vec<&[u8]> = records.iter().step_by(2).map(|r| r.raw).collect();
    let thinned = batch::retain_records(buf, header, &kept);
    let again = batch::validate(&thinned, usize::MAX, OffsetDeltas::Increasing)
        .expect("a thinned batch is valid");
    assert_eq!(again.base_offset, header.base_offset);
    assert_eq!(again.last_offset_delta, header.last_offset_delta);
    assert_eq!(again.record_count as usize, kept.len());
}
