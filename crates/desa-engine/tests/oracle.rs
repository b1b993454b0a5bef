//! Model-based test: seeded random event sets written in random batches, then
//! random queries compared with the brute-force oracle — before and after
//! flushes, compactions and a reopen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use desa_engine::{Engine, EngineConfig, EngineObserver, SystemClock, WriteRequest};
use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::{Event, GeoBox, TimeWindow};
use desa_store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;

/// Events chosen to sit on the edges: poles, the antimeridian, integer
/// coordinates (so integer query boxes hit them exactly), day boundaries.
fn edge_event(rng: &mut StdRng) -> Event {
    let lat = match rng.gen_range(0..5) {
        0 => 90.0,
        1 => -90.0,
        _ => rng.gen_range(-10..=10) as f64 * 9.0,
    };
    let lon = match rng.gen_range(0..5) {
        0 => 180.0,
        1 => -180.0,
        _ => rng.gen_range(-18..=18) as f64 * 10.0,
    };
    let ts = match rng.gen_range(0..4) {
        0 => T0 + rng.gen_range(0..6) * DAY,
        1 => T0 + rng.gen_range(0..6) * DAY - 1,
        _ => T0 + rng.gen_range(-DAY..6 * DAY),
    };
    Event {
        device_id: format!("edge-{}", rng.gen_range(0..20)),
        ts_secs: ts,
        event_type: ["temperature", "humidity"][rng.gen_range(0..2)].to_owned(),
        value: rng.gen_range(-1e6..1e6),
        latitude: lat,
        longitude: lon,
        metadata: None,
    }
}

fn random_window(rng: &mut StdRng, oracle: &Oracle) -> TimeWindow {
    if rng.gen_bool(0.3) {
        // Bounds on stored timestamps: the half-open edges must hold exactly.
        let mut a = oracle.events[rng.gen_range(0..oracle.events.len())].ts_secs;
        let mut b = oracle.events[rng.gen_range(0..oracle.events.len())].ts_secs;
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        if rng.gen_bool(0.3) {
            // ending on the newest or oldest event tests whole-segment covers
            b = oracle.events.iter().map(|e| e.ts_secs).max().unwrap();
            a = a.min(oracle.events.iter().map(|e| e.ts_secs).min().unwrap() + 1);
        }
        return TimeWindow::new(a, b.max(a + 1)).unwrap();
    }
    let start = T0 + rng.gen_range(-2 * DAY..7 * DAY);
    let len = match rng.gen_range(0..5) {
        0 => 1,
        1 => rng.gen_range(1..3_600),
        2 => rng.gen_range(3_600..2 * DAY),
        3 => DAY,
        _ => rng.gen_range(DAY..30 * DAY),
    };
    let start = if rng.gen_bool(0.2) {
        start - start.rem_euclid(DAY)
    } else {
        start
    };
    TimeWindow::new(start, start + len).unwrap()
}

fn random_box(rng: &mut StdRng, oracle: &Oracle) -> GeoBox {
    if rng.gen_bool(0.15) {
        return GeoBox::new(-90.0, 90.0, -180.0, 180.0).unwrap();
    }
    if rng.gen_bool(0.2) {
        // Edges on stored coordinates (GPS fixes that no f32 holds): the
        // inclusive edges must hold exactly, whatever the index rounds.
        let mut at = || &oracle.events[rng.gen_range(0..oracle.events.len())];
        let (a, b) = (at(), at());
        let lat = [a.latitude.min(b.latitude), a.latitude.max(b.latitude)];
        let (c, d) = (at(), at());
        return GeoBox::new(lat[0], lat[1], c.longitude, d.longitude).unwrap();
    }
    let mut lat = [
        rng.gen_range(-10..=10) as f64 * 9.0,
        rng.gen_range(-10..=10) as f64 * 9.0,
    ];
    lat.sort_by(f64::total_cmp);
    if rng.gen_bool(0.3) {
        lat = [rng.gen_range(-90.0..0.0), rng.gen_range(0.0..90.0)];
    }
    let lon = [
        rng.gen_range(-18..=18) as f64 * 10.0,
        rng.gen_range(-18..=18) as f64 * 10.0,
    ];
    // unsorted longitudes on purpose: min > max crosses the antimeridian
    GeoBox::new(lat[0], lat[1], lon[0], lon[1]).unwrap()
}

fn check_all(
    engine: &Engine,
    oracle: &Oracle,
    rng: &mut StdRng,
    devices: &[String],
    rounds: usize,
) {
    assert_eq!(engine.types().unwrap(), oracle.types());
    check_windows(engine, oracle, rng, devices, rounds, random_window);
}

fn check_windows(
    engine: &Engine,
    oracle: &Oracle,
    rng: &mut StdRng,
    devices: &[String],
    rounds: usize,
    window: fn(&mut StdRng, &Oracle) -> TimeWindow,
) {
    for _ in 0..rounds {
        let w = window(rng, oracle);
        let ty = ["temperature", "humidity", "pressure", "co2"][rng.gen_range(0..4)];
        let dev = &devices[rng.gen_range(0..devices.len())];
        let (got, want) = (engine.avg(dev, ty, w).unwrap(), oracle.avg(dev, ty, w));
        assert_eq!(got.count, want.count, "avg count {dev} {ty} {w:?}");
        match (got.avg, want.avg) {
            (Some(a), Some(b)) => assert!(close(a, b, 1e-9), "avg {a} vs {b} for {dev} {ty} {w:?}"),
            (a, b) => assert_eq!(a, b),
        }
        let step = ((w.end - w.start) / rng.gen_range(1..50)).max(1) + rng.gen_range(0..2);
        let (got, want) = (
            Store::series(engine, dev, ty, w, step).unwrap().unwrap(),
            oracle.series(dev, ty, w, step),
        );
        assert_eq!(got.points.len(), want.points.len(), "series {w:?} {step}");
        for (g, p) in got.points.iter().zip(&want.points) {
            assert_eq!(
                (g.start, g.count),
                (p.start, p.count),
                "series {dev} {ty} {w:?}"
            );
            match (g.avg, p.avg) {
                (Some(a), Some(b)) => assert!(close(a, b, 1e-9), "series {a} vs {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
        assert_eq!(got.count, want.count);

        let k = [1, 3, 10, 50][rng.gen_range(0..4)];
        let (got, want) = (engine.topk(ty, w, k).unwrap(), oracle.topk(ty, w, k));
        assert_eq!(got.devices, want.devices, "topk {ty} {w:?} k={k}");
        let b = random_box(rng, oracle);
        let (got, want) = (engine.geo(ty, &b, w).unwrap(), oracle.geo(ty, &b, w));
        assert_eq!(got.count, want.count, "geo count {ty} {b:?} {w:?}");
        match (got.avg, want.avg) {
            (Some(x), Some(y)) => assert!(close(x, y, 1e-9), "geo avg {x} vs {y}"),
            (x, y) => assert_eq!(x, y),
        }
    }
}

/// Writes the generated stream (5% of it replaced by edge events) in
/// batches of a size drawn from `batch_sizes`; returns the oracle over what was
/// written and the devices to query (plus one that never sends).
fn write_stream(
    engine: &Engine,
    gen: Generator,
    rng: &mut StdRng,
    batch_sizes: std::ops::Range<usize>,
) -> (Oracle, Vec<String>) {
    let mut oracle = Oracle::default();
    let mut devices: Vec<String> = vec!["nobody".into()];
    let mut batch = Vec::new();
    for g in gen {
        let mut e = g.event.unwrap();
        if rng.gen_bool(0.05) {
            e = edge_event(rng);
        }
        if devices.len() < 400 && !devices.contains(&e.device_id) {
            devices.push(e.device_id.clone());
        }
        oracle.add(e.clone());
        batch.push(e);
        if batch.len() >= rng.gen_range(batch_sizes.clone()) {
            engine
                .write(WriteRequest::events(std::mem::take(&mut batch)))
                .unwrap();
        }
    }
    engine.write(WriteRequest::events(batch)).unwrap();
    (oracle, devices)
}

/// Counts how top-K queries read their lists.
#[derive(Default)]
struct TopkPaths {
    merged: AtomicU64,
    counted_segments: AtomicU64,
}

impl EngineObserver for TopkPaths {
    fn topk_merged(&self) {
        self.merged.fetch_add(1, Ordering::Relaxed);
    }
    fn topk_counted(&self, segments: usize) {
        self.counted_segments
            .fetch_add(segments as u64, Ordering::Relaxed);
    }
}

/// Writes a seeded stream, checks random queries against the oracle, then
/// again after a flush (segments only, some of which the windows cut and
/// top-K counts from their rows in the window) and after a reopen.
fn run(seed: u64, events: u64, head_max_rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = head_max_rows;
    cfg.compaction_fanin = 3;
    let mut rng = StdRng::seed_from_u64(seed);
    let gen = Generator::new(GenConfig {
        seed,
        devices: 300,
        count: events,
        start_ts: T0,
        span_secs: 5 * DAY,
        duplicate_fraction: 0.02,
        late_fraction: 0.05,
        ..GenConfig::default()
    });
    let paths = Arc::new(TopkPaths::default());
    let engine =
        Engine::open_with_observer(cfg.clone(), Arc::new(SystemClock), paths.clone()).unwrap();
    let (oracle, devices) = write_stream(&engine, gen, &mut rng, 1..400);
    check_all(&engine, &oracle, &mut rng, &devices, 300);
    engine.flush().unwrap();
    check_all(&engine, &oracle, &mut rng, &devices, 300);
    assert!(
        paths.counted_segments.load(Ordering::Relaxed) > 0,
        "no top-K window was counted from a segment's rows"
    );
    let stats = engine.stats();
    assert_eq!(
        stats.head_rows + stats.frozen_rows + stats.segment_rows,
        oracle.events.len() as u64
    );
    drop(engine);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    check_all(&engine, &oracle, &mut rng, &devices, 300);
}

#[test]
fn small_heads_many_segments() {
    run(1, 20_000, 700);
}

/// Windows over 40 days, mostly long ones that summaries answer, with
/// starts and ends on day boundaries, one second off them, or anywhere.
fn long_window(rng: &mut StdRng, _: &Oracle) -> TimeWindow {
    let day = |rng: &mut StdRng| T0 + rng.gen_range(-2..42) * DAY;
    let nudge = |rng: &mut StdRng| [0, 0, 1, -1, rng.gen_range(0..DAY)][rng.gen_range(0..5)];
    let a = day(rng) + nudge(rng);
    let b = if rng.gen_bool(0.2) {
        a + rng.gen_range(1..2 * DAY)
    } else {
        day(rng) + nudge(rng)
    };
    TimeWindow::new(a.min(b), a.max(b).max(a.min(b) + 1)).unwrap()
}

/// An engine that summarizes small blocks soon: 3,000-row heads, merges of
/// three segments, a summary refreshed once two late segments lie beside it.
fn summarizing(dir: &std::path::Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.head_max_rows = 3_000;
    cfg.compaction_fanin = 3;
    cfg.summary_max_extras = 2;
    cfg
}

/// 40,000 events of 200 devices over 40 days (5% late), seeded, with
/// `tweak` applied to the generator's settings.
fn forty_days(seed: u64, tweak: impl FnOnce(&mut GenConfig)) -> Generator {
    let mut g = GenConfig {
        seed,
        devices: 200,
        count: 40_000,
        start_ts: T0,
        span_secs: 40 * DAY,
        late_fraction: 0.05,
        ..GenConfig::default()
    };
    tweak(&mut g);
    Generator::new(g)
}

/// Bytes the summaries of the data dir at `dir` spend on points and trees.
fn summary_point_bytes(dir: &std::path::Path) -> u64 {
    summary_bytes(dir, "summaries: k-d trees")
}

/// Bytes the files of the data dir at `dir` spend on `part` (a part of
/// `desa_engine::breakdown`).
fn summary_bytes(dir: &std::path::Path, part: &str) -> u64 {
    let parts = desa_engine::breakdown::storage_breakdown(dir).unwrap();
    parts.bytes.get(part).copied().unwrap_or(0)
}

/// Whole-day blocks of 2 to 32 days are summarized once event time has
/// moved on; windows over them are answered from the summaries plus the
/// segments they do not hold — late events added afterwards, before and
/// after the summaries absorb them — and match the oracle, also after a
/// reopen.
#[test]
fn summaries_answer_long_windows_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = summarizing(dir.path());
    let mut rng = StdRng::seed_from_u64(11);
    let gen = forty_days(11, |g| g.duplicate_fraction = 0.02);
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    let (mut oracle, devices) = write_stream(&engine, gen, &mut rng, 500..501);
    engine.settle().unwrap();
    let summaries = engine.stats().summaries;
    assert!(summaries >= 15, "only {summaries} summaries over 40 days");
    check_windows(&engine, &oracle, &mut rng, &devices, 300, long_window);

    // Late events into summarized days, in several flushes: first beside the
    // summaries, then absorbed by them.
    for round in 0..6 {
        let late: Vec<Event> = (0..400)
            .map(|_| {
                let mut e = oracle.events[rng.gen_range(0..oracle.events.len())].clone();
                e.ts_secs = T0 + rng.gen_range(0..36 * DAY);
                e.value = rng.gen_range(-1e3..1e3);
                e
            })
            .collect();
        oracle.events.extend(late.iter().cloned());
        engine.write(WriteRequest::events(late)).unwrap();
        engine.flush().unwrap();
        if round % 2 == 1 {
            check_windows(&engine, &oracle, &mut rng, &devices, 100, long_window);
        }
    }
    engine.settle().unwrap();
    check_windows(&engine, &oracle, &mut rng, &devices, 300, long_window);
    assert_eq!(engine.types().unwrap(), oracle.types());
    let stats = engine.stats();
    assert_eq!(stats.segment_rows, oracle.events.len() as u64);
    drop(engine);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    assert_eq!(engine.types().unwrap(), oracle.types());
    assert_eq!(engine.stats().summaries, stats.summaries);
    check_windows(&engine, &oracle, &mut rng, &devices, 300, long_window);
}

/// Under flat activity (every device equally likely, most with one event a
/// day) the threshold algorithm cannot stop early, and top-K adds up the
/// count lists of heads, segments and summaries instead: the answers still
/// match the oracle, before and after the days are summarized.
#[test]
fn topk_under_flat_activity_adds_up_every_list() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = summarizing(dir.path());
    let mut rng = StdRng::seed_from_u64(12);
    let gen = Generator::new(GenConfig {
        seed: 12,
        devices: 5_000,
        zipf_s: 0.0,
        count: 30_000,
        start_ts: T0,
        span_secs: 20 * DAY,
        duplicate_fraction: 0.02,
        late_fraction: 0.05,
        ..GenConfig::default()
    });
    let paths = Arc::new(TopkPaths::default());
    let engine = Engine::open_with_observer(cfg, Arc::new(SystemClock), paths.clone()).unwrap();
    let (oracle, devices) = write_stream(&engine, gen, &mut rng, 500..501);
    check_windows(&engine, &oracle, &mut rng, &devices, 100, long_window);
    let before_summaries = paths.merged.load(Ordering::Relaxed);
    assert!(before_summaries > 0, "no top-K query added up its lists");
    engine.settle().unwrap();
    assert!(engine.stats().summaries > 0);
    check_windows(&engine, &oracle, &mut rng, &devices, 100, long_window);
    assert!(paths.merged.load(Ordering::Relaxed) > before_summaries);
}

/// Devices that move (a new GPS fix for every event) give summaries no
/// locations to fold: instead of points they keep each device's extent, so
/// that they stay a small fraction of the segments, and geo windows over
/// them read only the devices a box's edge cuts from the segments the
/// summaries hold, still matching the oracle.
#[test]
fn moving_devices_leave_summaries_without_points() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = summarizing(dir.path());
    let mut rng = StdRng::seed_from_u64(13);
    let gen = forty_days(13, |g| g.move_metres = 50.0);
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    let (oracle, devices) = write_stream(&engine, gen, &mut rng, 500..501);
    engine.settle().unwrap();
    assert!(engine.stats().summaries >= 15);
    let points = summary_point_bytes(dir.path());
    let extents = summary_bytes(dir.path(), "summaries: device extents");
    let segments = engine.stats().segment_bytes;
    // One extent per device and block: at 5 events per device and day
    // here, a third of the segments; at 10M events, where a device has tens
    // per block, a small fraction (`docs/BENCHMARKS.md`). A point per event
    // would be several times the segments.
    assert!(
        points * 100 <= segments && extents > 0 && extents * 2 <= segments,
        "summaries hold {points} bytes of points and {extents} of extents \
         beside {segments} of segments"
    );
    check_windows(&engine, &oracle, &mut rng, &devices, 300, long_window);
    drop(engine);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    check_windows(&engine, &oracle, &mut rng, &devices, 100, long_window);
}

/// 300 devices that roam 5 km around homes packed into one square degree:
/// boxes of a few kilometres cut a handful of devices' extents, which geo
/// answers read one by one from the segments; boxes of tens of kilometres
/// cut more than that, and the segments answer for the whole box. Either
/// way, over summarized days, before and after a reopen, and with late
/// events beside the summaries, the answers match the oracle.
#[test]
fn boxes_that_cut_roaming_devices_match_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = summarizing(dir.path());
    let mut rng = StdRng::seed_from_u64(15);
    let homes: Vec<(f64, f64)> = (0..300)
        .map(|_| (rng.gen_range(10.0..11.0), rng.gen_range(20.0..21.0)))
        .collect();
    let event = |rng: &mut StdRng, ts: i64| {
        let d = rng.gen_range(0..homes.len());
        let (lat, lon) = homes[d];
        Event {
            device_id: format!("roamer-{d}"),
            ts_secs: ts,
            event_type: "temperature".into(),
            value: f64::from(rng.gen_range(-400..400)) * 0.125,
            latitude: lat + rng.gen_range(-0.05..0.05),
            longitude: lon + rng.gen_range(-0.05..0.05),
            metadata: None,
        }
    };
    let mut oracle = Oracle::default();
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    for day in 0..40 {
        let batch: Vec<Event> = (0..1_000)
            .map(|_| {
                let ts = T0 + day * DAY + rng.gen_range(0..DAY);
                event(&mut rng, ts)
            })
            .collect();
        oracle.events.extend(batch.iter().cloned());
        engine.write(WriteRequest::events(batch)).unwrap();
    }
    engine.settle().unwrap();
    assert!(engine.stats().summaries >= 15);
    assert!(summary_bytes(dir.path(), "summaries: device extents") > 0);
    let check = |engine: &Engine, oracle: &Oracle, rng: &mut StdRng| {
        for _ in 0..300 {
            let w = long_window(rng, oracle);
            let size = [0.005, 0.02, 0.1, 0.5][rng.gen_range(0..4)];
            let (lat, lon) = (rng.gen_range(9.9..11.1), rng.gen_range(19.9..21.1));
            let b = GeoBox::new(lat, lat + size, lon, lon + size).unwrap();
            let (got, want) = (
                engine.geo("temperature", &b, w).unwrap(),
                oracle.geo("temperature", &b, w),
            );
            assert_eq!(got.count, want.count, "geo count {b:?} {w:?}");
            match (got.avg, want.avg) {
                (Some(x), Some(y)) => assert!(close(x, y, 1e-9), "geo avg {x} vs {y}"),
                (x, y) => assert_eq!(x, y),
            }
        }
    };
    check(&engine, &oracle, &mut rng);
    let late: Vec<Event> = (0..500)
        .map(|_| {
            let ts = T0 + rng.gen_range(0..36 * DAY);
            event(&mut rng, ts)
        })
        .collect();
    oracle.events.extend(late.iter().cloned());
    engine.write(WriteRequest::events(late)).unwrap();
    engine.flush().unwrap();
    check(&engine, &oracle, &mut rng);
    drop(engine);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    check(&engine, &oracle, &mut rng);
}

/// Fixed sensors that report once every two days: a two-day block has one
/// event per location, too few to keep points for, but four-day and larger
/// blocks fold them. Those are built from the two-day summaries and read the
/// points from the segments those cover, and geo answers match the oracle.
#[test]
fn larger_blocks_read_points_their_halves_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = 500;
    cfg.compaction_fanin = 3;
    let mut rng = StdRng::seed_from_u64(14);
    let homes: Vec<(f64, f64)> = (0..150)
        .map(|_| (rng.gen_range(-60.0..60.0), rng.gen_range(-170.0..170.0)))
        .collect();
    let mut oracle = Oracle::default();
    let mut devices = vec!["nobody".to_owned()];
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    for period in 0..20 {
        let batch: Vec<Event> = homes
            .iter()
            .enumerate()
            .map(|(d, &(lat, lon))| Event {
                device_id: format!("fixed-{d}"),
                ts_secs: T0 + period * 2 * DAY + rng.gen_range(0..2 * DAY),
                event_type: "temperature".into(),
                value: f64::from(rng.gen_range(-400..400)) * 0.125,
                latitude: lat,
                longitude: lon,
                metadata: None,
            })
            .collect();
        for e in &batch {
            if devices.len() < 40 && !devices.contains(&e.device_id) {
                devices.push(e.device_id.clone());
            }
            oracle.add(e.clone());
        }
        engine.write(WriteRequest::events(batch)).unwrap();
    }
    engine.settle().unwrap();
    assert!(engine.stats().summaries >= 10);
    // Summaries hold the 150 locations (packed, about ten bytes a point;
    // without them only the per-type offsets, a few hundred bytes).
    let points = summary_point_bytes(dir.path());
    assert!(points > 150 * 8, "summaries hold {points} bytes of points");
    check_windows(&engine, &oracle, &mut rng, &devices, 300, long_window);
}

#[test]
fn head_only() {
    run(2, 3_000, 1_000_000);
}

#[test]
fn several_seeds() {
    for seed in 3..6 {
        run(seed, 8_000, 2_000);
    }
}

#[test]
fn unflushed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig::new(dir.path());
    let mut rng = StdRng::seed_from_u64(9);
    let mut oracle = Oracle::default();
    {
        let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
        for _ in 0..50 {
            let events: Vec<Event> = (0..20).map(|_| edge_event(&mut rng)).collect();
            oracle.events.extend(events.iter().cloned());
            engine.write(WriteRequest::events(events)).unwrap();
        }
    }
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let devices: Vec<String> = (0..20).map(|i| format!("edge-{i}")).collect();
    check_all(&engine, &oracle, &mut rng, &devices, 200);
}

#[test]
fn source_offsets_are_durable_with_their_events() {
    use desa_engine::SourceOffset;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = 50;
    let mut rng = StdRng::seed_from_u64(3);
    let mut expected = std::collections::BTreeMap::new();
    {
        let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
        for i in 0..40i64 {
            let p = (i % 4) as i32;
            let mut req = WriteRequest::events((0..7).map(|_| edge_event(&mut rng)).collect());
            req.source_offsets = vec![SourceOffset {
                source: "kafka:events".into(),
                partition: p,
                next_offset: 100 + i,
            }];
            engine.write(req).unwrap();
            expected.insert(p, 100 + i);
        }
        // some positions are in segments (head of 50 rows), the rest only in the log
        assert!(engine.stats().segment_rows > 0);
        for (p, o) in &expected {
            assert_eq!(engine.source_offset("kafka:events", *p), Some(*o));
        }
    }
    let engine = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    for (p, o) in &expected {
        assert_eq!(engine.source_offset("kafka:events", *p), Some(*o));
    }
    assert_eq!(engine.source_offset("kafka:events", 9), None);
    engine.flush().unwrap();
    drop(engine);
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    assert_eq!(engine.source_offsets().len(), 4);
    for (p, o) in &expected {
        assert_eq!(engine.source_offset("kafka:events", *p), Some(*o));
    }
}

#[test]
fn large_metadata_freezes_the_head_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_bytes = 1 << 20;
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let meta: Box<str> = format!("{{\"blob\":\"{}\"}}", "x".repeat(8_000)).into();
    for _ in 0..10 {
        let events = (0..30)
            .map(|_| Event {
                metadata: Some(meta.clone()),
                ..edge_event(&mut rng)
            })
            .collect();
        engine.write(WriteRequest::events(events)).unwrap();
    }
    // 300 events of 8 KB cannot all stay in a 1 MiB head.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.stats().segment_rows == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the head was never frozen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(engine.stats().head_rows < 300);
}

/// A merge holds its rows in memory, so no merge writes a segment of more
/// than `max_segment_rows`, whatever the size tier of its inputs; answers
/// stay exact.
#[test]
fn merges_stay_within_the_segment_row_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_max_rows = 500;
    cfg.max_segment_rows = 1_200;
    cfg.compaction_fanin = 4;
    let mut rng = StdRng::seed_from_u64(12);
    let gen = Generator::new(GenConfig {
        seed: 12,
        devices: 100,
        count: 20_000,
        start_ts: T0,
        span_secs: DAY,
        ..GenConfig::default()
    });
    let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let (oracle, devices) = write_stream(&engine, gen, &mut rng, 1..400);
    engine.flush().unwrap();
    engine.settle().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("MANIFEST")).unwrap()).unwrap();
    let rows: Vec<u64> = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .collect();
    assert!(rows.iter().all(|&r| r <= 1_200), "segment rows {rows:?}");
    assert!(rows.iter().any(|&r| r > 500), "no merge ran: {rows:?}");
    assert_eq!(rows.iter().sum::<u64>(), oracle.events.len() as u64);
    check_all(&engine, &oracle, &mut rng, &devices, 200);
}
