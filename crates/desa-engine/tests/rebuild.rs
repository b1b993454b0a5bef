//! `desa fsck --rebuild-manifest`: a data dir that lost its MANIFEST is
//! restored exactly from the manifest's copy, even with what a crash left
//! beside it (a merge's output not yet named), which rebuilding from the
//! files alone would count twice; without a whole copy it falls back to
//! the files.

use std::sync::Arc;

use desa_engine::fsck::{rebuild_manifest, MANIFEST_COPY};
use desa_engine::{Engine, EngineConfig, SystemClock, WriteRequest};
use desa_model::{Event, TimeWindow};

/// A data dir of 3,000 events (several flushes and merges), closed.
fn stored(dir: &std::path::Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.head_max_rows = 400;
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    let t0 = 1_767_225_600;
    for batch in 0..10 {
        let events: Vec<Event> = (0..300)
            .map(|i| Event {
                device_id: format!("d{}", i % 6),
                ts_secs: t0 + batch * 3_600 + i,
                event_type: "t".into(),
                value: 1.0,
                latitude: 1.0,
                longitude: 2.0,
                metadata: None,
            })
            .collect();
        engine.write(WriteRequest::events(events)).unwrap();
    }
    engine.flush().unwrap();
    engine.settle().unwrap();
    cfg
}

fn total(cfg: &EngineConfig) -> u64 {
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    let all = TimeWindow::new(0, i64::MAX).unwrap();
    engine
        .topk("t", all, 10)
        .unwrap()
        .devices
        .iter()
        .map(|d| d.count)
        .sum()
}

/// A copy of a live segment under an id no manifest names: what a crash
/// leaves of a merge that wrote its output but did not commit it.
fn leave_an_uncommitted_merge(dir: &std::path::Path) {
    let seg_dir = dir.join("segments");
    let live = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    std::fs::copy(&live, seg_dir.join("000000999999.seg")).unwrap();
}

#[test]
fn a_lost_manifest_is_restored_exactly_from_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = stored(dir.path());
    assert_eq!(total(&cfg), 3_000);
    leave_an_uncommitted_merge(dir.path());
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    let done = rebuild_manifest(dir.path()).unwrap();
    assert!(done.from_copy);
    assert_eq!(total(&cfg), 3_000);
    // The leftover was set aside when the node opened the dir.
    assert!(dir.path().join("orphans/000000999999.seg").exists());
}

#[test]
fn without_a_whole_copy_the_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = stored(dir.path());
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    std::fs::remove_file(dir.path().join("segments").join(MANIFEST_COPY)).unwrap();
    let done = rebuild_manifest(dir.path()).unwrap();
    assert!(!done.from_copy);
    assert_eq!(total(&cfg), 3_000);
}
