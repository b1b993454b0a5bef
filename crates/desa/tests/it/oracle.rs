//! Answers of the real process over HTTP against the brute-force oracle, with
//! NDJSON, JSON-array and gzip bodies, invalid lines, duplicates and late
//! events, across flushes, compactions and a kill -9 restart.

use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::{GeoBox, TimeWindow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{devices_of, gzip, window, TestServer};

const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

fn compare(s: &TestServer, oracle: &Oracle, devices: &[String], rng: &mut StdRng, rounds: usize) {
    let types = ["temperature", "humidity", "pressure", "co2"];
    let got = s.get("/v1/types", &[]);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, serde_json::to_value(oracle.types()).unwrap());
    for _ in 0..rounds {
        let start = T0 + rng.gen_range(-DAY..6 * DAY);
        let len =
            [1, 60, 3_600, DAY, 3 * DAY, 40 * DAY][rng.gen_range(0..6)] + rng.gen_range(0..100);
        let w = TimeWindow::new(start, start + len).unwrap();
        let ty = types[rng.gen_range(0..types.len())];
        let dev = &devices[rng.gen_range(0..devices.len())];
        check_avg(s, oracle, dev, ty, w);
        compare_series(s, oracle, (dev, ty), w, 2_000, rng);
        check_topk(s, oracle, ty, w, [1, 5, 20][rng.gen_range(0..3)]);
        let lat: [f64; 2] = [rng.gen_range(-90.0..90.0), rng.gen_range(-90.0..90.0)];
        let (min_lat, max_lat) = (lat[0].min(lat[1]), lat[0].max(lat[1]));
        let (min_lon, max_lon) = (rng.gen_range(-180.0..180.0), rng.gen_range(-180.0..180.0));
        let b = GeoBox::new(min_lat, max_lat, min_lon, max_lon).unwrap();
        check_geo(s, oracle, ty, &b, w);
    }
}

/// `GET /v1/query/avg` against the oracle.
pub fn check_avg(s: &TestServer, oracle: &Oracle, dev: &str, ty: &str, w: TimeWindow) {
    let mut p = window(w.start, w.end);
    p.push(("device_id", dev.to_owned()));
    p.push(("type", ty.to_owned()));
    let got = s.get("/v1/query/avg", &p);
    assert_eq!(got.status, 200, "{}", got.body);
    let want = oracle.avg(dev, ty, w);
    assert_eq!(
        got.body["count"].as_u64(),
        Some(want.count),
        "avg {dev} {ty} {w:?}"
    );
    match want.avg {
        Some(a) => assert!(close(got.body["avg"].as_f64().unwrap(), a, 1e-9)),
        None => assert!(got.body["avg"].is_null()),
    }
}

/// `GET /v1/query/topk` against the oracle.
pub fn check_topk(s: &TestServer, oracle: &Oracle, ty: &str, w: TimeWindow, k: usize) {
    let mut p = window(w.start, w.end);
    p.push(("type", ty.to_owned()));
    p.push(("k", k.to_string()));
    let got = s.get("/v1/query/topk", &p);
    assert_eq!(got.status, 200, "{}", got.body);
    let want: Vec<(String, u64)> = oracle
        .topk(ty, w, k)
        .devices
        .iter()
        .map(|d| (d.device_id.clone(), d.count))
        .collect();
    assert_eq!(devices_of(&got.body), want, "topk {ty} {w:?} k={k}");
}

/// The parameters of `GET /v1/query/geo`.
pub fn geo_params(ty: &str, b: &GeoBox, w: TimeWindow) -> Vec<(&'static str, String)> {
    let mut p = window(w.start, w.end);
    p.push(("type", ty.to_owned()));
    for (name, v) in [
        ("min_lat", b.min_lat),
        ("max_lat", b.max_lat),
        ("min_lon", b.min_lon),
        ("max_lon", b.max_lon),
    ] {
        p.push((name, format!("{v:?}")));
    }
    p
}

/// `GET /v1/query/geo` against the oracle.
pub fn check_geo(s: &TestServer, oracle: &Oracle, ty: &str, b: &GeoBox, w: TimeWindow) {
    let got = s.get("/v1/query/geo", &geo_params(ty, b, w));
    assert_eq!(got.status, 200, "{}", got.body);
    let want = oracle.geo(ty, b, w);
    assert_eq!(
        got.body["count"].as_u64(),
        Some(want.count),
        "geo {ty} {b:?} {w:?}"
    );
    if let Some(a) = want.avg {
        assert!(close(got.body["avg"].as_f64().unwrap(), a, 1e-9));
    }
}

/// `GET /v1/query/series` over `w` with a step that gives 1 to about
/// `points` points, each point and the whole window against the oracle's
/// buckets.
pub fn compare_series(
    s: &TestServer,
    oracle: &Oracle,
    (dev, ty): (&str, &str),
    w: TimeWindow,
    points: i64,
    rng: &mut StdRng,
) {
    let len = w.end - w.start;
    let n = rng.gen_range(1..=points);
    let step = ((len + n - 1) / n).max(1) + rng.gen_range(0..3);
    check_series(s, oracle, (dev, ty), w, step);
}

/// `GET /v1/query/series` with `step`, each point and the whole window
/// against the oracle's buckets.
pub fn check_series(
    s: &TestServer,
    oracle: &Oracle,
    (dev, ty): (&str, &str),
    w: TimeWindow,
    step: i64,
) {
    let mut p = window(w.start, w.end);
    p.push(("device_id", dev.to_owned()));
    p.push(("type", ty.to_owned()));
    p.push(("step", step.to_string()));
    let got = s.get("/v1/query/series", &p);
    assert_eq!(got.status, 200, "{}", got.body);
    let want = oracle.series(dev, ty, w, step);
    assert_eq!(
        got.body["count"].as_u64(),
        Some(want.count),
        "series {dev} {ty} {w:?}"
    );
    let points = got.body["points"].as_array().unwrap();
    assert_eq!(points.len(), want.points.len(), "series {w:?} step {step}");
    for (g, p) in points.iter().zip(&want.points) {
        assert_eq!(g["start"].as_i64(), Some(p.start));
        assert_eq!(g["count"].as_u64(), Some(p.count), "series point {p:?}");
        match p.avg {
            Some(a) => assert!(close(g["avg"].as_f64().unwrap(), a, 1e-9), "{g} {p:?}"),
            None => assert!(g["avg"].is_null()),
        }
    }
}

#[test]
fn http_answers_match_the_oracle_across_flushes_and_restarts() {
    let mut s = TestServer::start(&["--head-max-events", "3000"]);
    let mut rng = StdRng::seed_from_u64(11);
    let gen = Generator::new(GenConfig {
        seed: 11,
        devices: 150,
        count: 40_000,
        start_ts: T0,
        span_secs: 5 * DAY,
        invalid_fraction: 0.02,
        duplicate_fraction: 0.02,
        late_fraction: 0.05,
        ..GenConfig::default()
    });
    let items: Vec<_> = gen.collect();
    let mut oracle = Oracle::default();
    let mut devices = vec!["no-such-device".to_owned()];
    for (n, chunk) in items.chunks(777).enumerate() {
        // A JSON array cannot hold a line that is not JSON at all: that would
        // make the whole body unreadable (tested in bad_input).
        let chunk: Vec<_> = chunk
            .iter()
            .filter(|g| n % 3 != 1 || serde_json::from_str::<serde_json::Value>(&g.line).is_ok())
            .cloned()
            .collect();
        let (body, ct): (Vec<u8>, &str) = match n % 3 {
            0 => (
                chunk
                    .iter()
                    .map(|g| g.line.clone() + "\n")
                    .collect::<String>()
                    .into_bytes(),
                "application/x-ndjson",
            ),
            1 => (
                format!(
                    "[{}]",
                    chunk
                        .iter()
                        .map(|g| g.line.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .into_bytes(),
                "application/json",
            ),
            _ => (
                gzip(
                    chunk
                        .iter()
                        .map(|g| g.line.clone() + "\n")
                        .collect::<String>()
                        .as_bytes(),
                ),
                "application/x-ndjson",
            ),
        };
        let headers: &[(&str, &str)] = if n % 3 == 2 {
            &[("Content-Encoding", "gzip")]
        } else {
            &[]
        };
        let r = s.post(&body, ct, headers).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let valid: Vec<_> = chunk
            .iter()
            .enumerate()
            .filter(|(_, g)| g.event.is_some())
            .collect();
        assert_eq!(r.body["accepted"].as_u64(), Some(valid.len() as u64));
        let rejected: Vec<u64> = r.body["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["index"].as_u64().unwrap())
            .collect();
        let invalid: Vec<u64> = chunk
            .iter()
            .enumerate()
            .filter(|(_, g)| g.event.is_none())
            .map(|(i, _)| i as u64)
            .collect();
        assert_eq!(rejected, invalid);
        for (_, g) in valid {
            let e = g.event.clone().unwrap();
            if devices.len() < 60 && !devices.contains(&e.device_id) {
                devices.push(e.device_id.clone());
            }
            oracle.add(e);
        }
    }
    compare(&s, &oracle, &devices, &mut rng, 150);
    s.restart();
    compare(&s, &oracle, &devices, &mut rng, 100);
}
