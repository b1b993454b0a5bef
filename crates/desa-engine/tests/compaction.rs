//! Compaction of days the watermark has left behind: a settled day's
//! segments end as one file (so a query over it searches one k-d tree and
//! one count list), a handful of late events does not make the day be
//! rewritten, and every answer still equals the brute-force oracle's.

use std::collections::BTreeMap;

use desa_engine::{Engine, EngineConfig, ManualClock, WriteRequest};
use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::{Event, GeoBox, TimeWindow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;

/// Segments per UTC day (segments of one day only), with their ids.
fn segments_by_day(dir: &std::path::Path) -> BTreeMap<i64, Vec<u64>> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("MANIFEST")).unwrap()).unwrap();
    let mut days: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for m in manifest["segments"].as_array().unwrap() {
        let (lo, hi) = (m["min_ts"].as_i64().unwrap(), m["max_ts"].as_i64().unwrap());
        if lo.div_euclid(DAY) == hi.div_euclid(DAY) {
            days.entry(lo.div_euclid(DAY) - T0 / DAY)
                .or_default()
                .push(m["id"].as_u64().unwrap());
        }
    }
    days
}

fn check(engine: &Engine, oracle: &Oracle, rng: &mut StdRng) {
    let devices: Vec<&str> = oracle.events.iter().map(|e| e.device_id.as_str()).collect();
    for _ in 0..200 {
        let start = T0 + rng.gen_range(-DAY..5 * DAY);
        let w = TimeWindow::new(start, start + rng.gen_range(1..6 * DAY)).unwrap();
        let ty = ["temperature", "humidity"][rng.gen_range(0..2)];
        let dev = devices[rng.gen_range(0..devices.len())];
        let (got, want) = (engine.avg(dev, ty, w).unwrap(), oracle.avg(dev, ty, w));
        assert_eq!(got.count, want.count, "avg {dev} {ty} {w:?}");
        if let (Some(a), Some(b)) = (got.avg, want.avg) {
            assert!(close(a, b, 1e-9), "avg {a} vs {b}");
        }
        let k = rng.gen_range(1..30);
        assert_eq!(
            engine.topk(ty, w, k).unwrap().devices,
            oracle.topk(ty, w, k).devices,
            "topk {ty} {w:?} {k}"
        );
        let lat = rng.gen_range(-80.0..50.0);
        let lon = rng.gen_range(-180.0..140.0);
        let bbox = GeoBox::new(lat, lat + rng.gen_range(1.0..40.0), lon, lon + 40.0).unwrap();
        let (got, want) = (engine.geo(ty, &bbox, w).unwrap(), oracle.geo(ty, &bbox, w));
        assert_eq!(got.count, want.count, "geo {ty} {bbox:?} {w:?}");
    }
}

#[test]
fn a_settled_day_ends_in_one_segment_and_a_few_late_events_do_not_rewrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    // Each day of 2,500 events flushes as segments of 1,000, 1,000 and 500
    // rows: one size tier, fewer than `compaction_fanin`, so size-tiered
    // merging alone leaves them apart.
    cfg.head_max_rows = 1_000;
    cfg.compaction_fanin = 4;
    let engine = Engine::open(cfg, std::sync::Arc::new(ManualClock::new(T0 + 10 * DAY))).unwrap();
    let mut oracle = Oracle::default();
    let mut events: Vec<Event> = Generator::new(GenConfig {
        seed: 5,
        devices: 60,
        types: 2,
        count: 10_000,
        start_ts: T0,
        span_secs: 4 * DAY,
        out_of_order_fraction: 0.0,
        late_fraction: 0.0,
        duplicate_fraction: 0.0,
        invalid_fraction: 0.0,
        move_metres: 50.0,
        ..GenConfig::default()
    })
    .filter_map(|g| g.event)
    .collect();
    events.sort_by_key(|e| e.ts_secs);
    for day in events.chunk_by(|a, b| a.ts_secs / DAY == b.ts_secs / DAY) {
        for head in day.chunks(1_000) {
            head.iter().for_each(|e| oracle.add(e.clone()));
            engine.write(WriteRequest::events(head.to_vec())).unwrap();
            engine.flush().unwrap();
        }
    }
    engine.settle().unwrap();
    let days = segments_by_day(dir.path());
    assert_eq!(days.len(), 4, "{days:?}");
    // Days 0-2 lie behind the watermark (which stands in day 3).
    for d in 0..3 {
        assert_eq!(days[&d].len(), 1, "day {d}: {days:?}");
    }
    let mut rng = StdRng::seed_from_u64(5);
    check(&engine, &oracle, &mut rng);

    // Three late events for day 1: a segment of their own beside the day's,
    // which is not rewritten for them.
    let late: Vec<Event> = (0..3)
        .map(|i| Event {
            device_id: format!("late-{i}"),
            ts_secs: T0 + DAY + 100 + i,
            event_type: "temperature".into(),
            value: 20.5,
            latitude: 10.0,
            longitude: 20.0,
            metadata: None,
        })
        .collect();
    late.iter().for_each(|e| oracle.add(e.clone()));
    engine.write(WriteRequest::events(late)).unwrap();
    engine.settle().unwrap();
    let after = segments_by_day(dir.path());
    assert!(after[&1].contains(&days[&1][0]), "{days:?} -> {after:?}");
    assert_eq!(after[&1].len(), 2, "{after:?}");
    check(&engine, &oracle, &mut rng);
}

/// A head that takes no write for `idle_flush_after` is flushed to a
/// segment when it holds at least `idle_flush_rows` rows, and stays in
/// memory when smaller; answers are the same either way.
#[test]
fn an_idle_head_is_flushed_once_it_is_large_enough() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.idle_flush_after = std::time::Duration::from_millis(300);
    cfg.idle_flush_rows = 1_000;
    let engine = Engine::open(cfg, std::sync::Arc::new(ManualClock::new(T0 + DAY))).unwrap();
    let event = |i: i64| Event {
        device_id: format!("d{}", i % 37),
        ts_secs: T0 + i,
        event_type: "temperature".into(),
        value: i as f64,
        latitude: 10.0,
        longitude: 20.0,
        metadata: None,
    };
    let mut oracle = Oracle::default();
    let mut write = |range: std::ops::Range<i64>| {
        let events: Vec<Event> = range.map(event).collect();
        events.iter().for_each(|e| oracle.add(e.clone()));
        engine.write(WriteRequest::events(events)).unwrap();
    };
    // Five lulls long, then until the flusher is done (`settle` would
    // flush the head itself).
    let stats_after_a_lull = |engine: &Engine| {
        std::thread::sleep(std::time::Duration::from_millis(1_500));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let s = engine.stats();
            if s.frozen_rows == 0 || std::time::Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // 999 rows: under the threshold, they stay in the head.
    write(0..999);
    let s = stats_after_a_lull(&engine);
    assert_eq!((s.head_rows, s.segment_rows), (999, 0), "{s:?}");
    // One more row makes the head large enough: the lull flushes it.
    write(999..1_000);
    let s = stats_after_a_lull(&engine);
    assert_eq!(
        (s.head_rows, s.frozen_rows, s.segment_rows),
        (0, 0, 1_000),
        "{s:?}"
    );
    let w = TimeWindow::new(T0, T0 + DAY).unwrap();
    assert_eq!(
        engine.topk("temperature", w, 5).unwrap().devices,
        oracle.topk("temperature", w, 5).devices
    );
    assert_eq!(engine.avg("d3", "temperature", w).unwrap().count, 27);
}
