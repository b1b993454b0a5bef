//! The scrub: a stored file damaged while the node runs (bit rot, a stray
//! write) is found by the scrub's next pass over every file, and from then
//! on never served.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use desa_engine::{Engine, EngineConfig, Error, SystemClock, WriteRequest};
use desa_model::{Event, TimeWindow};

#[test]
fn damage_found_by_a_later_scrub_pass_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = 100;
    cfg.scrub_every = Duration::from_millis(200);
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    let t0 = 1_767_225_600;
    let events: Vec<Event> = (0..300)
        .map(|i| Event {
            device_id: format!("d{}", i % 7),
            ts_secs: t0 + i,
            event_type: "t".into(),
            value: i as f64,
            latitude: 1.0,
            longitude: 2.0,
            metadata: None,
        })
        .collect();
    engine.write(WriteRequest::events(events)).unwrap();
    engine.flush().unwrap();
    engine.settle().unwrap();
    let all = TimeWindow::new(0, i64::MAX).unwrap();
    assert_eq!(engine.avg("d1", "t", all).unwrap().count, 43);
    // Reopened, the engine verifies its files in the background.
    drop(engine);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.stats().unverified_files > 0 {
        assert!(
            Instant::now() < deadline,
            "the scrub never verified every file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // One byte of a segment the node serves, changed in place.
    let seg = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(100)).unwrap();
    std::io::Read::read_exact(&mut f, &mut byte).unwrap();
    f.seek(SeekFrom::Start(100)).unwrap();
    f.write_all(&[byte[0] ^ 0x10]).unwrap();
    f.sync_all().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine
        .stats()
        .failing
        .unwrap_or_default()
        .contains("checksum")
    {
        assert!(
            Instant::now() < deadline,
            "the scrub never reported the damage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let failing = engine.stats().failing.unwrap();
    assert!(failing.contains(&name), "{failing}");
    match engine.avg("d1", "t", all) {
        Err(e @ Error::Corrupt { .. }) => assert!(e.to_string().contains(&name), "{e}"),
        other => panic!("a damaged segment was served: {other:?}"),
    }
}
