//! Damage written into segment files after a crash: every open keeps each intact batch before
//! the damage, cuts the rest, says what it cut, and takes appends again right after.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use strand_broker::log::{Log, RecoveryReport};

use super::support::{batch, read_all, small_config, values};

/// Appends `n` batches of one 300-byte record each and crashes (drops without close).
/// Returns the folder and, per batch, its byte range in the active segment or `None` if it
/// landed in an older segment.
fn crashed_log(n: usize) -> (tempfile::TempDir, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut ends = Vec::new();
    for i in 0..n {
        let mut b = batch(&values(&format!("b{i}"), 1, 300), i as i64);
        let info = log.append(&mut b).unwrap();
        ends.push((info.base_offset, b.len() as u64));
    }
    drop(log);
    (dir, ends)
}

fn segments(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    files
}

fn reopen(dir: &Path) -> (Log, RecoveryReport) {
    Log::open(dir, small_config()).unwrap()
}

/// Reopens and checks the survivors are exactly offsets `0..kept`, then that appends go on.
fn assert_kept(dir: &Path, kept: u64) -> RecoveryReport {
    let (mut log, report) = reopen(dir);
    assert_eq!(log.high_watermark(), kept, "{report:?}");
    let records = read_all(&log.reader(), 0);
    assert_eq!(records.len() as u64, kept);
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert!(
            value.starts_with(format!("b{i}-0-").as_bytes()),
            "record {i} damaged"
        );
    }
    let mut more = batch(&values("after", 2, 10), 99);
    assert_eq!(log.append(&mut more).unwrap().base_offset, kept);
    log.close().unwrap();
    report
}

#[test]
fn truncated_tail_is_cut_at_the_last_whole_batch() {
    let (dir, _) = crashed_log(30);
    let active = segments(dir.path(), "log").pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let report = assert_kept(dir.path(), 29);
    assert_eq!(report.truncations.len(), 1);
    let cut = &report.truncations[0];
    assert_eq!(cut.segment, active);
    assert_eq!(cut.next_offset, 29);
    assert!(cut.reason.contains("torn"), "{}", cut.reason);
    assert_eq!(cut.position + cut.bytes_cut, len - 100);
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let (dir, _) = crashed_log(30);
    let active = segments(dir.path(), "log").pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    let garbage: Vec<u8> = (0..777u32).map(|i| (i * 7919 % 251) as u8).collect();
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .write_all_at(&garbage, len)
        .unwrap();
    let report = assert_kept(dir.path(), 30);
    assert_eq!(report.truncations.len(), 1);
    assert_eq!(report.truncations[0].position, len);
    assert_eq!(report.truncations[0].bytes_cut, 777);
}

#[test]
fn zeroed_page_in_the_middle_of_the_active_segment_keeps_what_precedes_it() {
    // Segments of 4 KiB hold 11 batches of ~360 bytes; 30 batches leave 8 in the active one.
    let (dir, ranges) = crashed_log(30);
    let active = segments(dir.path(), "log").pop().unwrap();
    let base: u64 = active
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    assert!(len > 1500, "active segment too small for the test: {len}");
    // Zero 1 KiB starting inside the third batch of the active segment.
    let batch_len = ranges[0].1;
    let page_at = 2 * batch_len + 50;
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .write_all_at(&[0u8; 1024], page_at)
        .unwrap();
    let report = assert_kept(dir.path(), base + 2);
    assert_eq!(report.truncations.len(), 1);
    assert_eq!(report.truncations[0].position, 2 * batch_len);
    assert_eq!(report.truncations[0].bytes_cut, len - 2 * batch_len);
}

#[test]
fn damage_in_an_older_segment_cuts_there_and_removes_later_segments() {
    let (dir, _) = crashed_log(30);
    let logs = segments(dir.path(), "log");
    assert!(logs.len() >= 3);
    // Without a clean shutdown or checkpoint past them, every segment is scanned.
    std::fs::remove_file(dir.path().join("recovery-checkpoint")).ok();
    let second = &logs[1];
    let base: u64 = second
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Flip a byte inside the second segment's first batch body (covered by the CRC).
    OpenOptions::new()
        .write(true)
        .open(second)
        .unwrap()
        .write_all_at(&[0xAB], 100)
        .unwrap();
    let report = assert_kept(dir.path(), base);
    assert_eq!(report.truncations.len(), 1);
    assert!(
        report.truncations[0].reason.contains("CRC"),
        "{}",
        report.truncations[0].reason
    );
    assert_eq!(report.segments_removed.len(), logs.len() - 2);
}

/// Appends `n` batches of one 300-byte record each and closes cleanly.
fn closed_log(dir: &Path, n: i64) {
    let (mut log, _) = Log::open(dir, small_config()).unwrap();
    for i in 0..n {
        log.append(&mut batch(&values(&format!("b{i}"), 1, 300), i))
            .unwrap();
    }
    log.close().unwrap();
}

#[test]
fn missing_or_damaged_index_is_rebuilt_even_after_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path(), 30);
    let indexes = segments(dir.path(), "index");
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], b"not an index").unwrap();
    let (log, report) = reopen(dir.path());
    assert!(report.clean_shutdown);
    assert!(report.truncations.is_empty());
    assert_eq!(
        report.indexes_rebuilt,
        vec![indexes[0].clone(), indexes[1].clone()]
    );
    let records = read_all(&log.reader(), 0);
    assert_eq!(records.len(), 30);
    // Reads that must start in the middle of rebuilt segments use the new index.
    for offset in [3u64, 14, 17] {
        let first = super::support::decode(log.reader().read(offset, 1).unwrap().batches);
        assert_eq!(first[0].0 as u64, offset);
    }
    drop(log);
    // A crash right after leaves indexes the next open can use or rebuild again.
    let (log, report) = reopen(dir.path());
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(read_all(&log.reader(), 0).len(), 30);
}

#[test]
fn clean_shutdown_skips_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path(), 30);
    let (log, report) = reopen(dir.path());
    assert!(report.clean_shutdown);
    assert_eq!(report.segments_scanned, 0);
    assert_eq!(log.high_watermark(), 30);
    drop(log);
    // That open removed the marker, so a crash now means a scan next time.
    let (_, report) = reopen(dir.path());
    assert!(!report.clean_shutdown);
    assert!(report.segments_scanned >= 1);
}
