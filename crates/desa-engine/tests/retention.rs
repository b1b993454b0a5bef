//! Retention against the brute-force oracle: whole expired days are dropped
//! (single-day segments, shared segments of sparse days, summaries), and
//! every answer then equals the oracle's over the events kept, also after
//! a reopen.

use std::sync::Arc;

use desa_engine::{Engine, EngineConfig, ManualClock, WriteRequest};
use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::{GeoBox, TimeWindow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;
const TYPES: [&str; 4] = ["temperature", "humidity", "pressure", "co2"];

fn check(engine: &Engine, oracle: &Oracle, devices: &[String], rng: &mut StdRng) {
    let all = GeoBox::new(-90.0, 90.0, -180.0, 180.0).unwrap();
    for _ in 0..300 {
        let start = T0 + rng.gen_range(-3 * DAY..20 * DAY);
        let end = if rng.gen_bool(0.3) {
            i64::MAX
        } else {
            start + rng.gen_range(1..25 * DAY)
        };
        let w = TimeWindow::new(start, end).unwrap();
        let ty = TYPES[rng.gen_range(0..4)];
        let dev = &devices[rng.gen_range(0..devices.len())];
        let (got, want) = (engine.avg(dev, ty, w).unwrap(), oracle.avg(dev, ty, w));
        assert_eq!(got.count, want.count, "avg {dev} {ty} {w:?}");
        if let (Some(a), Some(b)) = (got.avg, want.avg) {
            assert!(close(a, b, 1e-9), "avg {a} vs {b}");
        }
        let k = [1, 5, 40][rng.gen_range(0..3)];
        assert_eq!(
            engine.topk(ty, w, k).unwrap().devices,
            oracle.topk(ty, w, k).devices,
            "topk {ty} {w:?}"
        );
        let (got, want) = (engine.geo(ty, &all, w).unwrap(), oracle.geo(ty, &all, w));
        assert_eq!(got.count, want.count, "geo {ty} {w:?}");
    }
}

#[test]
fn retention_drops_whole_expired_days_and_answers_what_remains() {
    let dir = tempfile::tempdir().unwrap();
    let keep = 30 * DAY;
    let clock = Arc::new(ManualClock::new(T0 + 10 * DAY));
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = 2_000;
    cfg.compaction_fanin = 3;
    cfg.retention_secs = Some(keep);
    let engine = Engine::open(cfg.clone(), clock.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let mut oracle = Oracle::default();
    let events: Vec<_> = Generator::new(GenConfig {
        seed: 11,
        devices: 150,
        count: 30_000,
        start_ts: T0,
        span_secs: 16 * DAY,
        late_fraction: 0.1,
        late_secs: 12 * DAY,
        ..GenConfig::default()
    })
    .filter_map(|g| g.event)
    .collect();
    for batch in events.chunks(700) {
        for e in batch {
            oracle.add(e.clone());
        }
        engine.write(WriteRequest::events(batch.to_vec())).unwrap();
    }
    let mut devices: Vec<String> = oracle.events.iter().map(|e| e.device_id.clone()).collect();
    devices.sort();
    devices.dedup();
    engine.settle().unwrap();
    let before = engine.stats();
    assert!(before.summaries > 0);
    // Some segments hold sparse days together, and some straddle the day
    // that will be the first kept: those are rewritten, not dropped.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("MANIFEST")).unwrap()).unwrap();
    let straddling = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["min_ts"].as_i64().unwrap() < T0 + 7 * DAY
                && m["max_ts"].as_i64().unwrap() >= T0 + 7 * DAY
        })
        .count();
    assert!(straddling > 0, "no segment straddles the first kept day");
    check(&engine, &oracle, &devices, &mut rng);

    // Now the first 7 days expire, to the second: the clock stands 30 days
    // and a few seconds past the start of day 7.
    clock.set(T0 + 7 * DAY + keep + 5);
    engine.settle().unwrap();
    let mut kept = Oracle::default();
    for e in oracle.events.iter().filter(|e| e.ts_secs >= T0 + 7 * DAY) {
        kept.add(e.clone());
    }
    assert!(kept.events.len() < oracle.events.len());
    let after = engine.stats();
    assert_eq!(
        after.segment_rows + after.head_rows,
        kept.events.len() as u64
    );
    assert!(
        after.segments < before.segments,
        "{} -> {}",
        before.segments,
        after.segments
    );
    check(&engine, &kept, &devices, &mut rng);
    drop(engine);
    let engine = Engine::open(cfg, clock).unwrap();
    check(&engine, &kept, &devices, &mut rng);
}
