//! Group commit, durable waits and long-polling, driven from async tasks as the server will.

use std::sync::{Arc, Mutex};

use strand_broker::log::{FsyncPolicy, Log, LogConfig};

use super::support::{batch, small_config, values};

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync,
        ..small_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_appends_share_fsyncs_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    let reader = log.reader();
    let log = Arc::new(Mutex::new(log));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let log = log.clone();
        let reader = reader.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let mut b = batch(&values(&format!("t{t}-{i}"), 2, 50), 0);
                let info = log.lock().unwrap().append(&mut b).unwrap();
                reader.wait_durable(info.last_offset + 1).await.unwrap();
                assert!(reader.durable_offset() > info.last_offset);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(reader.high_watermark(), 16 * 20 * 2);
    assert_eq!(reader.durable_offset(), reader.high_watermark());
}

#[tokio::test]
async fn durable_wait_triggers_an_fsync_even_when_the_policy_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let info = log.append(&mut batch(&values("x", 3, 10), 0)).unwrap();
    let reader = log.reader();
    assert_eq!(reader.durable_offset(), 0);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.wait_durable(info.last_offset + 1),
    )
    .await
    .expect("durable wait hung")
    .unwrap();
    assert_eq!(reader.durable_offset(), 3);
}

#[tokio::test]
async fn interval_policy_syncs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), config(FsyncPolicy::IntervalMs(5))).unwrap();
    log.append(&mut batch(&values("x", 1, 10), 0)).unwrap();
    let reader = log.reader();
    let mut rx_wait = 0;
    while reader.durable_offset() < 1 {
        rx_wait += 1;
        assert!(rx_wait < 2000, "interval flusher never synced");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn long_poll_wakes_when_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    let reader = log.reader();
    let waiter = tokio::spawn(async move { reader.wait_for_data(0).await });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    log.append(&mut batch(&values("x", 2, 10), 0)).unwrap();
    let hw = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hw, Some(2));
}

#[test]
fn rejected_batches_leave_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    log.append(&mut batch(&values("ok", 1, 10), 0)).unwrap();
    let before = std::fs::read(dir.path().join("00000000000000000000.log")).unwrap();
    let good = batch(&values("bad", 2, 10), 0);
    let mut crc = good.clone();
    *crc.last_mut().unwrap() ^= 1;
    let mut magic = good.clone();
    magic[16] = 1;
    let mut short = good[..good.len() - 3].to_vec();
    let mut huge = batch(&values("big", 1, 2 << 20), 0);
    for bad in [&mut crc, &mut magic, &mut short, &mut huge] {
        assert!(log.append(bad).is_err());
    }
    assert_eq!(log.high_watermark(), 1);
    assert_eq!(
        std::fs::read(dir.path().join("00000000000000000000.log")).unwrap(),
        before
    );
}

#[test]
fn a_run_of_batches_is_appended_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small_config()).unwrap();
    let mut run = batch(&values("a", 2, 10), 0);
    run.extend(batch(&values("b", 3, 10), 0));
    let info = log.append_all(&mut run).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 4));
    let mut bad = batch(&values("c", 1, 10), 0);
    let mut corrupt = batch(&values("d", 1, 10), 0);
    *corrupt.last_mut().unwrap() ^= 0x55;
    bad.extend(corrupt);
    assert!(log.append_all(&mut bad).is_err());
    let mut torn = batch(&values("e", 1, 10), 0);
    torn.extend_from_slice(&[0, 0, 0]);
    assert!(log.append_all(&mut torn).is_err());
    assert!(log.append_all(&mut []).is_err());
    assert_eq!(log.high_watermark(), 5);
    let records = super::support::read_all(&log.reader(), 0);
    assert_eq!(records.len(), 5);
}
