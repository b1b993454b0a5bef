//! Data dirs written by earlier versions of the engine, committed under
//! `tests/fixtures/`, must open and answer exactly: each holds segments,
//! summaries, a manifest and a log with unflushed events (one of them keyed
//! by an idempotency key), from the same deterministic events.
//!
//! When the format changes, the current writer's dir is committed beside
//! the older ones: `DESA_WRITE_FIXTURE=NAME cargo test -p desa-engine --test
//! fixtures -- --ignored` writes `tests/fixtures/NAME`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use desa_engine::{Engine, EngineConfig, ManualClock, SystemClock, WriteRequest};
use desa_model::oracle::{close, Oracle};
use desa_model::{Event, GeoBox, TimeWindow};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;

/// 600 events over 6 days, 5 devices, 2 types, some with metadata; the
/// last 40 stay in the log.
fn events() -> Vec<Event> {
    (0..600i64)
        .map(|i| Event {
            device_id: format!("dev-{}", (i * 7) % 5),
            ts_secs: T0 + (i * 863) % (6 * DAY),
            event_type: ["temperature", "humidity"][(i % 2) as usize].to_owned(),
            value: (i % 97) as f64 * 0.25 - 3.0,
            latitude: ((i * 13) % 170) as f64 - 85.0,
            longitude: ((i * 29) % 350) as f64 - 175.0,
            metadata: (i % 9 == 0).then(|| format!("{{\"fw\":\"1.{}\"}}", i % 4).into_boxed_str()),
        })
        .collect()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn data_dirs_of_every_committed_format_open_and_answer_exactly() {
    let mut oracle = Oracle::default();
    for e in events() {
        oracle.add(e);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no fixture under {}",
        fixtures().display()
    );
    let boxes = [
        GeoBox::new(-90.0, 90.0, -180.0, 180.0).unwrap(),
        GeoBox::new(-30.0, 40.0, 100.0, -120.0).unwrap(),
    ];
    for fixture in dirs {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&fixture, tmp.path());
        // The clock at the events' time: before any fixture was written, so
        // its idempotency key is inside the 24 h it is kept, whatever day
        // the test runs (with the system clock it expired a day after the
        // fixture was made).
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::open(EngineConfig::new(tmp.path()), clock)
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
        assert!(
            engine.idempotent_response("fixture-key").is_some(),
            "{}: the keyed write's response",
            fixture.display()
        );
        for start_day in 0..6 {
            for len in [3_600, DAY, 3 * DAY + 7, 9 * DAY] {
                let w = TimeWindow::new(T0 + start_day * DAY + 11, T0 + start_day * DAY + 11 + len)
                    .unwrap();
                for ty in ["temperature", "humidity"] {
                    for d in 0..5 {
                        let dev = format!("dev-{d}");
                        let (got, want) =
                            (engine.avg(&dev, ty, w).unwrap(), oracle.avg(&dev, ty, w));
                        assert_eq!(
                            got.count,
                            want.count,
                            "{}: avg {dev} {ty} {w:?}",
                            fixture.display()
                        );
                        if let (Some(a), Some(b)) = (got.avg, want.avg) {
                            assert!(close(a, b, 1e-12), "{}: avg {a} vs {b}", fixture.display());
                        }
                    }
                    assert_eq!(
                        engine.topk(ty, w, 3).unwrap().devices,
                        oracle.topk(ty, w, 3).devices
                    );
                    for b in &boxes {
                        assert_eq!(
                            engine.geo(ty, b, w).unwrap().count,
                            oracle.geo(ty, b, w).count
                        );
                    }
                }
            }
        }
    }
}

/// Writes the current format's fixture (see the module docs).
#[test]
#[ignore]
fn write_fixture() {
    let Ok(name) = std::env::var("DESA_WRITE_FIXTURE") else {
        return;
    };
    let dir = fixtures().join(name);
    assert!(!dir.exists(), "{} exists", dir.display());
    let mut cfg = EngineConfig::new(&dir);
    cfg.head_max_rows = 100;
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let all = events();
    let (stored, unflushed) = all.split_at(all.len() - 40);
    for batch in stored.chunks(50) {
        engine.write(WriteRequest::events(batch.to_vec())).unwrap();
    }
    engine.settle().unwrap();
    let mut keyed = WriteRequest::events(unflushed.to_vec());
    keyed.idempotency_key = Some("fixture-key".into());
    keyed.response = "{\"accepted\":40,\"rejected\":[],\"rejected_total\":0}".into();
    engine.write(keyed).unwrap();
    drop(engine);
    let _ = std::fs::remove_file(dir.join("LOCK"));
}
