//! Partition log micro-benchmarks: append (with and without fsync, and group commit under
//! concurrency) and sequential read. Run with `cargo bench -p strand-benches --bench log`.
//!
//! Logs live in a temporary folder on the same filesystem as the working tree (not tmpfs),
//! with retention keeping the disk use of the append benches near 1 GiB.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strand_benches::batch_of;
use strand_broker::log::{FsyncPolicy, Log, LogConfig};

const RECORD_BYTES: usize = 1024;

fn bench_dir() -> tempfile::TempDir {
    // The system temp folder may be a tmpfs; the working tree's filesystem is the real disk.
    let base = std::env::var("STRAND_BENCH_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    tempfile::Builder::new()
        .prefix(".bench-")
        .tempdir_in(base)
        .expect("bench folder")
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        segment_bytes_max: 256 << 20,
        retention_bytes: Some(1 << 30),
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn append_no_fsync(c: &mut Criterion) {
    let mut group = c.benchmark_group("append/no_fsync");
    group
        .measurement_time(Duration::from_secs(8))
        .sample_size(20);
    for n_records in [1usize, 1000] {
        let batch = batch_of(n_records, RECORD_BYTES);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        let dir = bench_dir();
        let (mut log, _) = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
        group.bench_with_input(
            BenchmarkId::new("records_per_batch", n_records),
            &batch,
            |b, batch| {
                b.iter_custom(|iters| {
                    log.enforce_retention(0).unwrap();
                    let mut bytes = batch.clone();
                    let started = Instant::now();
                    for _ in 0..iters {
                        log.append(&mut bytes).unwrap();
                    }
                    started.elapsed()
                })
            },
        );
    }
    group.finish();
}

fn append_durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("append/durable");
    group
        .measurement_time(Duration::from_secs(6))
        .sample_size(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let batch = batch_of(1, RECORD_BYTES);
    group.throughput(Throughput::Bytes(batch.len() as u64));
    for n_writers in [1usize, 4, 16, 64] {
        let dir = bench_dir();
        let (log, _) = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
        let reader = log.reader();
        let log = Arc::new(Mutex::new(log));
        group.bench_with_input(
            BenchmarkId::new("concurrent_writers", n_writers),
            &n_writers,
            |b, &n_writers| {
                b.iter_custom(|iters| {
                    log.lock().unwrap().enforce_retention(0).unwrap();
                    let per_writer = iters.div_ceil(n_writers as u64);
                    let started = Instant::now();
                    runtime.block_on(async {
                        let tasks: Vec<_> = (0..n_writers)
                            .map(|_| {
                                let log = log.clone();
                                let reader = reader.clone();
                                let mut bytes = batch.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_writer {
                                        let info = log.lock().unwrap().append(&mut bytes).unwrap();
                                        reader.wait_durable(info.last_offset + 1).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                    });
                    // Scale to the requested count; the writers did per_writer * n_writers appends.
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per_writer * n_writers as u64) as f64)
                })
            },
        );
    }
    group.finish();
}

fn read_sequential(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .measurement_time(Duration::from_secs(8))
        .sample_size(20);
    let dir = bench_dir();
    let (mut log, _) = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let mut batch = batch_of(100, RECORD_BYTES);
    let total_bytes: u64 = 256 << 20;
    let mut written = 0u64;
    while written < total_bytes {
        log.append(&mut batch).unwrap();
        written += batch.len() as u64;
    }
    let reader = log.reader();
    let end = reader.high_watermark();
    group.throughput(Throughput::Bytes(dir_bytes(&log)));
    group.bench_function("sequential_1MiB_reads", |b| {
        b.iter(|| {
            let mut offset = 0;
            let mut n_bytes = 0;
            while offset < end {
                let result = reader.read(offset, 1 << 20).unwrap();
                n_bytes += result.batches.len();
                let last = strand_client::batch::Batches::new(&result.batches)
                    .last()
                    .unwrap()
                    .0;
                offset = last.last_offset() as u64 + 1;
            }
            n_bytes
        })
    });
    group.finish();
}

fn dir_bytes(log: &Log) -> u64 {
    std::fs::read_dir(log.reader().dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

criterion_group!(benches, append_no_fsync, append_durable, read_sequential);
criterion_main!(benches);
