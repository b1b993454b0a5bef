//! Seeded property tests over damaged input: every reader of stored bytes
//! (the log, the manifest, segment and summary files) and the event parser
//! are fed mutated and arbitrary bytes. None may panic; each refuses with a
//! typed error, and a file it accepts answers queries without panicking.
//!
//! Files are mutated twice over: as they are (the checksum refuses them),
//! and with the checksum fixed up after the mutation, so that the structural
//! checks behind it are reached too.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use desa_engine::segment::Segment;
use desa_engine::summary::Summary;
use desa_engine::{wal, Engine, EngineConfig, Error, SystemClock, WriteRequest};
use desa_model::{parse_body, BodyFormat, Event, GeoBox, Limits, TimeWindow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;
/// Rounds per file kind; `DESA_FUZZ_ROUNDS` runs more.
fn rounds() -> usize {
    std::env::var("DESA_FUZZ_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

fn events(n: usize, days: i64) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            device_id: format!("d{}", i % 7),
            ts_secs: T0 + (i as i64 * 3_600) % (days * DAY),
            event_type: ["t", "h"][i % 2].to_owned(),
            value: i as f64,
            latitude: (i % 90) as f64,
            longitude: (i % 180) as f64 - 90.0,
            metadata: (i % 5 == 0).then(|| Box::from("{\"a\":1}")),
        })
        .collect()
}

/// A data dir holding segments, summaries, a manifest and a log.
fn stored_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = 100;
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    engine.write(WriteRequest::events(events(600, 12))).unwrap();
    engine.settle().unwrap();
    engine.write(WriteRequest::events(events(30, 1))).unwrap();
    drop(engine);
    dir
}

fn files_ending(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// Flips, overwrites, truncates or extends `bytes`.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..4) {
        if bytes.is_empty() {
            bytes.push(rng.gen());
            continue;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..5) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.gen(),
            2 => bytes.truncate(at),
            3 => {
                let n = rng.gen_range(1..64);
                bytes.splice(at..at, (0..n).map(|_| rng.gen::<u8>()));
            }
            _ => {
                // a plausible length or count: a small or huge u32
                let v: u32 = if rng.gen_bool(0.5) {
                    rng.gen_range(0..64)
                } else {
                    rng.gen()
                };
                let end = (at + 4).min(bytes.len());
                bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
    }
}

/// Recomputes the container's checksum (crc32c of every byte but the last
/// 16, stored in the first 4 of them), so structural checks are reached.
fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() >= 32 {
        let at = bytes.len() - 16;
        let crc = crc32c::crc32c(&bytes[..at]);
        bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The bytes of every file in `dir` ending in `ext` (at least one).
fn contents(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let files: Vec<Vec<u8>> = files_ending(dir, ext)
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    assert!(!files.is_empty(), "no .{ext} file was written");
    files
}

/// Round `round`'s damaged copy of one of `originals`: mutated, and every
/// other round with its checksum fixed, so that the reader's own checks
/// meet the damage.
fn damaged(rng: &mut StdRng, originals: &[Vec<u8>], round: usize) -> Vec<u8> {
    let mut bytes = originals[round % originals.len()].clone();
    mutate(rng, &mut bytes);
    if round % 2 == 1 {
        fix_checksum(&mut bytes);
    }
    bytes
}

fn typed(e: &Error) {
    assert!(
        matches!(e, Error::Corrupt { .. } | Error::Io { .. }),
        "untyped refusal: {e}"
    );
}

fn windows() -> Vec<TimeWindow> {
    vec![
        TimeWindow::new(0, i64::MAX).unwrap(),
        TimeWindow::new(T0, T0 + DAY).unwrap(),
        TimeWindow::new(T0 + 3_600, T0 + 5 * DAY + 7).unwrap(),
    ]
}

#[test]
fn damaged_segments_are_refused_or_answer_without_panicking() {
    let dir = stored_dir();
    let seg_dir = dir.path().join("segments");
    let originals = contents(&seg_dir, "seg");
    let target = dir.path().join("fuzzed.seg");
    let boxes = [
        GeoBox::new(-90.0, 90.0, -180.0, 180.0).unwrap(),
        GeoBox::new(10.0, 40.0, 170.0, -170.0).unwrap(),
    ];
    let mut rng = StdRng::seed_from_u64(1);
    for round in 0..rounds() {
        fs::write(&target, damaged(&mut rng, &originals, round)).unwrap();
        match Segment::open(&target, 1) {
            Err(e) => typed(&e),
            Ok(seg) => {
                for w in windows() {
                    for ty in ["t", "h", "x"] {
                        let _ = seg.avg("d3", ty, w);
                        for b in &boxes {
                            let _ = seg.geo(ty, b, w);
                        }
                        if let Some(t) = seg.find_type(ty) {
                            for s in seg.topk_order(t).iter().take(16) {
                                let _ = seg.series_count(s as usize, w);
                                let _ = seg.series_device(s as usize);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn damaged_summaries_are_refused_or_answer_without_panicking() {
    let dir = stored_dir();
    let seg_dir = dir.path().join("segments");
    let originals = contents(&seg_dir, "sum");
    let target = dir.path().join("fuzzed.sum");
    let all = GeoBox::new(-90.0, 90.0, -180.0, 180.0).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for round in 0..rounds() {
        fs::write(&target, damaged(&mut rng, &originals, round)).unwrap();
        for (level, first_day) in [(1, 0), (2, T0 / DAY), (1, T0 / DAY)] {
            match Summary::open(&target, level, first_day) {
                Err(e) => typed(&e),
                Ok(sum) => {
                    for ty in ["t", "h", "x"] {
                        let _ = sum.avg("d3", ty);
                        let _ = sum.geo(ty, &all);
                        if let Some(t) = sum.find_type(ty) {
                            for s in sum.topk_order(t).iter().take(16) {
                                let _ = sum.series_count(s as usize);
                                let _ = sum.series_device(s as usize);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn damaged_logs_and_manifests_are_refused_or_read_without_panicking() {
    let dir = stored_dir();
    let wal_dir = dir.path().join("wal");
    let logs = files_ending(&wal_dir, "wal");
    let log = logs.last().unwrap().clone();
    let log_bytes = fs::read(&log).unwrap();
    assert!(!log_bytes.is_empty());
    let manifest = dir.path().join("MANIFEST");
    let manifest_bytes = fs::read(&manifest).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..rounds() {
        let mut bytes = log_bytes.clone();
        mutate(&mut rng, &mut bytes);
        fs::write(&log, &bytes).unwrap();
        if let Err(e) = wal::scan(&wal_dir, 0, |_| {}) {
            typed(&e);
        }
        fs::write(&log, &log_bytes).unwrap();

        let mut bytes = manifest_bytes.clone();
        if round % 3 == 0 {
            bytes = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
        } else {
            mutate(&mut rng, &mut bytes);
        }
        fs::write(&manifest, &bytes).unwrap();
        match desa_engine::fsck::check(dir.path()) {
            Ok(report) => {
                let _ = report.stored_events;
            }
            Err(e) => typed(&e),
        }
        fs::write(&manifest, &manifest_bytes).unwrap();
    }
    // The data dir is whole again and opens.
    let engine = Engine::open(EngineConfig::new(dir.path()), Arc::new(SystemClock)).unwrap();
    assert_eq!(
        engine.stats().segment_rows + engine.stats().head_rows + engine.stats().frozen_rows,
        630
    );
}

#[test]
fn arbitrary_bodies_parse_or_are_refused_without_panicking() {
    let good = events(20, 2)
        .iter()
        .map(Event::to_json)
        .collect::<Vec<_>>()
        .join("\n");
    let limits = Limits::at(T0 + 10 * DAY);
    let mut rng = StdRng::seed_from_u64(4);
    for round in 0..rounds() * 10 {
        let mut bytes = if round % 4 == 0 {
            (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect()
        } else {
            good.as_bytes().to_vec()
        };
        mutate(&mut rng, &mut bytes);
        for format in [BodyFormat::Ndjson, BodyFormat::Json] {
            if let Ok(parsed) = parse_body(&bytes, format, &limits) {
                for (_, e) in &parsed.events {
                    assert!(e.value.is_finite() && (-90.0..=90.0).contains(&e.latitude));
                }
                for r in &parsed.rejected {
                    assert!(!r.error.is_empty());
                }
            }
        }
    }
}
