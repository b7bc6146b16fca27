//! Shared helpers of Strand's benchmarks (criterion benches in `benches/`).

use strand_client::batch::BatchBuilder;

/// One uncompressed batch of `n_records` records, each with a `record_bytes`-byte value.
pub fn batch_of(n_records: usize, record_bytes: usize) -> Vec<u8> {
    let value = vec![b'x'; record_bytes];
    let mut builder = BatchBuilder::with_capacity(n_records * (record_bytes + 16) + 64);
    for i in 0..n_records {
        builder.push(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    builder.finish()
}
