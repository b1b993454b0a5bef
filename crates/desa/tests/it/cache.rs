//! The result cache against the oracle: a dashboard of fixed queries asked
//! again and again while on-time and late events arrive, every answer
//! exact; and a late event dropping exactly the cached answers whose type
//! and days it touches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use desa_gen::{GenConfig, Generator};
use desa_model::oracle::Oracle;
use desa_model::{Event, GeoBox, TimeWindow};

use crate::oracle::{check_avg, check_geo, check_series, check_topk, geo_params};
use crate::support::{window, TestServer};

const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;
const TYPES: [&str; 2] = ["temperature", "humidity"];

/// The sum of a counter's samples (every label) in `/metrics`.
fn counter(s: &TestServer, name: &str) -> u64 {
    s.get_text("/metrics")
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The windows the dashboard asks about: each day, days cut in the
/// middle, the whole span and the last hour.
fn windows() -> Vec<TimeWindow> {
    let mut out: Vec<TimeWindow> = (0..5)
        .map(|d| TimeWindow::new(T0 + d * DAY, T0 + (d + 1) * DAY).unwrap())
        .collect();
    out.push(TimeWindow::new(T0 + DAY / 2, T0 + 3 * DAY + 7).unwrap());
    out.push(TimeWindow::new(T0 - DAY, T0 + 6 * DAY).unwrap());
    out.push(TimeWindow::new(T0 + 5 * DAY - 3_600, T0 + 5 * DAY).unwrap());
    out
}

fn europe() -> GeoBox {
    GeoBox::new(35.0, 60.0, -10.0, 30.0).unwrap()
}

/// Every query of the dashboard, against the oracle.
fn ask_dashboard(s: &TestServer, oracle: &Oracle, devices: &[String]) {
    for (i, w) in windows().into_iter().enumerate() {
        let ty = TYPES[i % 2];
        let dev = &devices[i % devices.len()];
        check_avg(s, oracle, dev, ty, w);
        check_topk(s, oracle, ty, w, 5);
        check_geo(s, oracle, ty, &europe(), w);
        check_series(s, oracle, (dev, ty), w, 3_600);
    }
}

fn events(seed: u64, count: u64) -> Vec<Event> {
    Generator::new(GenConfig {
        seed,
        devices: 60,
        types: 2,
        count,
        start_ts: T0,
        span_secs: 5 * DAY,
        late_fraction: 0.1,
        late_secs: 4 * DAY,
        duplicate_fraction: 0.02,
        ..GenConfig::default()
    })
    .filter_map(|g| g.event)
    .collect()
}

fn post(s: &TestServer, chunk: &[Event]) {
    let body: String = chunk.iter().map(|e| e.to_json() + "\n").collect();
    let r = s.post_ndjson(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"].as_u64(), Some(chunk.len() as u64));
}

/// The count the avg and geo queries of the dashboard should give over
/// `events`, brute force.
fn counts(events: &[Event], devices: &[String]) -> Vec<(u64, u64)> {
    windows()
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let (ty, dev) = (TYPES[i % 2], &devices[i % devices.len()]);
            let of_type = |e: &&Event| e.event_type == ty && w.contains(e.ts_secs);
            let avg = events
                .iter()
                .filter(of_type)
                .filter(|e| &e.device_id == dev)
                .count();
            let geo = events
                .iter()
                .filter(of_type)
                .filter(|e| europe().contains(e.latitude, e.longitude))
                .count();
            (avg as u64, geo as u64)
        })
        .collect()
}

#[test]
fn cached_answers_equal_the_oracle_while_late_and_on_time_events_arrive() {
    let s = TestServer::start(&["--head-max-events", "2000", "--cache-size", "4MiB"]);
    let all = events(5, 24_000);
    let mut devices: Vec<String> = Vec::new();
    for e in &all {
        if devices.len() < 4 && !devices.contains(&e.device_id) {
            devices.push(e.device_id.clone());
        }
    }
    let chunks: Vec<&[Event]> = all.chunks(1_000).collect();
    let (first, rest) = chunks.split_at(12);

    // One write at a time: after each, the dashboard twice, every answer
    // exact (the second round served from the cache).
    let mut oracle = Oracle::default();
    for chunk in first {
        post(&s, chunk);
        chunk.iter().for_each(|e| oracle.add(e.clone()));
        ask_dashboard(&s, &oracle, &devices);
        ask_dashboard(&s, &oracle, &devices);
    }
    let hits = counter(&s, "desa_cache_hits_total");
    assert!(
        hits >= 12 * 32,
        "the repeated dashboard was served from the cache {hits} times"
    );

    // Writes beside the queries: each count lies between what was
    // acknowledged before the query and what was sent by its end.
    let written: Vec<Event> = first.concat();
    let acked = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        let (acked_w, sent_w, s_w) = (acked.clone(), sent.clone(), &s);
        scope.spawn(move || {
            for (i, chunk) in rest.iter().enumerate() {
                sent_w.store(i + 1, Ordering::SeqCst);
                post(s_w, chunk);
                acked_w.store(i + 1, Ordering::SeqCst);
            }
        });
        let upto = |n: usize| -> Vec<Event> {
            let mut v = written.clone();
            v.extend(rest[..n].concat());
            v
        };
        let mut rounds = 0;
        while acked.load(Ordering::SeqCst) < rest.len() || rounds < 3 {
            rounds += 1;
            let before = acked.load(Ordering::SeqCst);
            let got: Vec<(u64, u64)> = windows()
                .into_iter()
                .enumerate()
                .map(|(i, w)| {
                    let (ty, dev) = (TYPES[i % 2], &devices[i % devices.len()]);
                    let mut a = window(w.start, w.end);
                    a.push(("type", ty.to_owned()));
                    a.push(("device_id", dev.clone()));
                    let avg = s.get("/v1/query/avg", &a).body["count"].as_u64().unwrap();
                    let p = geo_params(ty, &europe(), w);
                    let geo = s.get("/v1/query/geo", &p).body["count"].as_u64().unwrap();
                    (avg, geo)
                })
                .collect();
            let after = sent.load(Ordering::SeqCst);
            let (low, high) = (
                counts(&upto(before), &devices),
                counts(&upto(after), &devices),
            );
            for (i, ((g, l), h)) in got.iter().zip(&low).zip(&high).enumerate() {
                assert!(
                    l.0 <= g.0 && g.0 <= h.0 && l.1 <= g.1 && g.1 <= h.1,
                    "window {:?}: answered (avg, geo) counts {g:?}, acknowledged before {l:?}, sent by the end {h:?}",
                    windows()[i]
                );
            }
        }
    });
    let mut oracle = Oracle::default();
    all.iter().for_each(|e| oracle.add(e.clone()));
    ask_dashboard(&s, &oracle, &devices);
    ask_dashboard(&s, &oracle, &devices);
    assert!(counter(&s, "desa_cache_invalidations_total") > 0);
}

#[test]
fn a_late_event_drops_exactly_the_cached_answers_of_its_type_and_day() {
    let s = TestServer::start(&[]);
    let all = events(9, 5_000);
    post(&s, &all);
    let dev = all[0].device_id.clone();
    let day = |d: i64| TimeWindow::new(T0 + d * DAY, T0 + (d + 1) * DAY).unwrap();
    let asked = |w: TimeWindow, ty: &str| {
        let mut p = window(w.start, w.end);
        p.push(("device_id", dev.clone()));
        p.push(("type", ty.to_owned()));
        s.get("/v1/query/avg", &p).body["count"].as_u64().unwrap()
    };
    let queries = [
        (day(1), "temperature"),
        (day(3), "temperature"),
        (day(1), "humidity"),
        (TimeWindow::new(T0, T0 + 5 * DAY).unwrap(), "temperature"),
    ];
    let first: Vec<u64> = queries.iter().map(|(w, t)| asked(*w, t)).collect();
    let hits = counter(&s, "desa_cache_hits_total");
    let again: Vec<u64> = queries.iter().map(|(w, t)| asked(*w, t)).collect();
    assert_eq!(again, first);
    assert_eq!(counter(&s, "desa_cache_hits_total"), hits + 4);

    // A late temperature event of day 1, for the device asked about.
    let mut late = all[0].clone();
    late.event_type = "temperature".into();
    late.ts_secs = T0 + DAY + 100;
    post(&s, &[late]);
    let (hits, dropped) = (
        counter(&s, "desa_cache_hits_total"),
        counter(&s, "desa_cache_invalidations_total"),
    );
    let after: Vec<u64> = queries.iter().map(|(w, t)| asked(*w, t)).collect();
    assert_eq!(
        after,
        vec![first[0] + 1, first[1], first[2], first[3] + 1],
        "the windows of day 1 count the late event, the others do not"
    );
    assert_eq!(
        counter(&s, "desa_cache_invalidations_total"),
        dropped + 2,
        "the two temperature answers over day 1 are dropped"
    );
    assert_eq!(
        counter(&s, "desa_cache_hits_total"),
        hits + 2,
        "day 3's temperature and day 1's humidity are still served"
    );
    let health = s.get("/healthz", &[]);
    assert!(
        health.body["components"]["cache"]["entries"]
            .as_u64()
            .unwrap()
            >= 4
    );

    // Off: nothing is served from the cache.
    let off = TestServer::start(&["--cache-size", "0"]);
    post(&off, &all[..100]);
    for _ in 0..3 {
        let mut p = window(T0, T0 + DAY);
        p.push(("type", "temperature".to_owned()));
        p.push(("k", "3".to_owned()));
        assert_eq!(off.get("/v1/query/topk", &p).status, 200);
    }
    assert_eq!(counter(&off, "desa_cache_hits_total"), 0);
}

#[test]
fn a_cluster_worker_drops_cached_answers_when_another_worker_writes_their_days() {
    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let a = TestServer::start(&["--store", url.as_str()]);
    let b = TestServer::start(&["--store", url.as_str()]);
    let all = events(13, 3_000);
    post(&b, &all);
    let mut oracle = Oracle::default();
    all.iter().for_each(|e| oracle.add(e.clone()));
    let dev = all[0].device_id.clone();
    let day = |d: i64| TimeWindow::new(T0 + d * DAY, T0 + (d + 1) * DAY).unwrap();
    let dashboard = |oracle: &Oracle| {
        for d in [1, 3] {
            check_avg(&a, oracle, &dev, "temperature", day(d));
            check_topk(&a, oracle, "temperature", day(d), 5);
        }
    };
    dashboard(&oracle);
    let hits = counter(&a, "desa_cache_hits_total");
    dashboard(&oracle);
    assert_eq!(counter(&a, "desa_cache_hits_total"), hits + 4);

    // Another worker stores a late event of day 1: the first worker's
    // answers over day 1 count it at once; those over day 3 are still
    // served from its cache.
    let mut late = all[0].clone();
    late.event_type = "temperature".into();
    late.ts_secs = T0 + DAY + 100;
    post(&b, std::slice::from_ref(&late));
    oracle.add(late);
    let hits = counter(&a, "desa_cache_hits_total");
    dashboard(&oracle);
    assert_eq!(counter(&a, "desa_cache_hits_total"), hits + 2);
    assert!(counter(&a, "desa_cache_invalidations_total") >= 2);
}

/// A worker's stamp follows the catalog for the shards it does not hold
/// too (it reads their rows, not their blocks), day by day.
#[test]
fn a_workers_stamp_follows_writes_to_shards_it_does_not_hold() {
    use desa_postgres::schema::DEFAULT_SHARDS;
    use desa_store::{Store, WriteRequest};
    let pg = crate::pg::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, advertise_url: Option<String>| {
        desa_postgres::PgStore::open(desa_postgres::PgConfig {
            url: pg.url(),
            worker: name.into(),
            blocks_dir: dir.path().join(name),
            retention_secs: None,
            shards: DEFAULT_SHARDS,
            advertise_url,
            peer_token: None,
            peer_cacert: None,
            password_file: None,
        })
        .unwrap()
    };
    let a = open("a", Some("http://127.0.0.1:9".into()));
    let b = open("b", None);
    // a holds the shards of partition 0 of 6.
    a.claim("kafka:ev", &[0], 6).unwrap();
    let other = (0..)
        .map(|i| format!("d{i}"))
        .find(|d| !desa_model::shard_of(d, DEFAULT_SHARDS).is_multiple_of(6))
        .unwrap();
    let event = |ts_secs: i64| Event {
        device_id: other.clone(),
        ts_secs,
        event_type: "temperature".into(),
        value: 1.5,
        latitude: 1.0,
        longitude: 2.0,
        metadata: None,
    };
    let day0 = TimeWindow::new(T0, T0 + DAY).unwrap();
    let stamp = || a.stamp("temperature", day0).unwrap().unwrap();
    let before = stamp();
    b.write(WriteRequest::events(vec![event(T0 + 10)])).unwrap();
    let after = stamp();
    assert_ne!(after, before, "a write of day 0 in a shard a does not hold");
    b.write(WriteRequest::events(vec![event(T0 + 3 * DAY)]))
        .unwrap();
    assert_eq!(stamp(), after, "a write of day 3 leaves day 0's stamp");
}
