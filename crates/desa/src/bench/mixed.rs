//! `desa bench --mixed-clients N`: N clients asking the three query kinds
//! at random, at once, while ingest runs at a steady rate beside them:
//! queries per second and latency per kind under concurrency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use desa_gen::{GenConfig, Generator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::percentile;
use crate::client::Client;

/// What the mixed load runs against: the node, the dataset's shape and the
/// devices to ask about.
pub(super) struct Mixed<'a> {
    pub client: &'a Client,
    pub clients: usize,
    pub duration: Duration,
    /// Events per second posted beside the queries.
    pub ingest_rate: u64,
    pub start_ts: i64,
    pub span_secs: i64,
    pub devices: Vec<String>,
    pub gen: GenConfig,
}

impl Mixed<'_> {
    /// Event time of the live stream's first event: half a day past the
    /// dataset's end, so that events a few minutes out of order stay in
    /// the live day.
    pub fn live_start(&self) -> i64 {
        self.start_ts + self.span_secs + 43_200
    }
}

/// A random query of a random kind over the dataset's span.
fn query(
    rng: &mut StdRng,
    m: &Mixed<'_>,
) -> (&'static str, &'static str, Vec<(&'static str, String)>) {
    let len = [3_600, 86_400, 7 * 86_400, 30 * 86_400][rng.gen_range(0..4)];
    let s = rng.gen_range(m.start_ts..(m.start_ts + m.span_secs - len).max(m.start_ts + 1));
    let window = [("start", s.to_string()), ("end", (s + len).to_string())];
    let ty = ("type", "temperature".to_owned());
    match rng.gen_range(0..3) {
        0 => {
            let dev = m.devices[rng.gen_range(0..m.devices.len())].clone();
            let mut p = vec![("device_id", dev), ty];
            p.extend(window);
            ("avg", "/v1/query/avg", p)
        }
        1 => {
            let mut p = vec![ty, ("k", ["10", "100"][rng.gen_range(0..2)].to_owned())];
            p.extend(window);
            ("topk", "/v1/query/topk", p)
        }
        _ => {
            let mut p = vec![
                ty,
                ("min_lat", "43.0".to_owned()),
                ("max_lat", "52.0".to_owned()),
                ("min_lon", "-4.5".to_owned()),
                ("max_lon", "9.0".to_owned()),
            ];
            p.extend(window);
            ("geo", "/v1/query/geo", p)
        }
    }
}

/// Runs the mixed load; returns the report.
pub(super) fn run(m: &Mixed<'_>) -> Result<serde_json::Value> {
    let stop = AtomicBool::new(false);
    let latencies: Mutex<BTreeMap<&'static str, Vec<f64>>> = Mutex::new(BTreeMap::new());
    let errors = AtomicU64::new(0);
    let posted = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..m.clients {
            let (stop, latencies, errors) = (&stop, &latencies, &errors);
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(1_000 + c as u64);
                let mut mine: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let (kind, path, params) = query(&mut rng, m);
                    let t = Instant::now();
                    match m.client.get_json(path, &params) {
                        Ok(_) => mine
                            .entry(kind)
                            .or_default()
                            .push(t.elapsed().as_secs_f64() * 1e3),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut all) = latencies.lock() {
                    for (k, v) in mine {
                        all.entry(k).or_default().extend(v);
                    }
                }
            });
        }
        let (stop, posted) = (&stop, &posted);
        scope.spawn(move || ingest(m, stop, posted));
        std::thread::sleep(m.duration);
        stop.store(true, Ordering::Relaxed);
    });
    let secs = started.elapsed().as_secs_f64();
    let mut kinds = serde_json::Map::new();
    let all = latencies.into_inner().unwrap_or_default();
    for (kind, mut lat) in all {
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        let qps = lat.len() as f64 / secs;
        eprintln!("mixed {kind:>5}: {qps:8.1} queries/s   p50 {p50:8.3} ms   p99 {p99:8.3} ms");
        kinds.insert(
            kind.to_owned(),
            json!({"qps": qps, "p50_ms": p50, "p99_ms": p99, "n": lat.len()}),
        );
    }
    let ingest_rate = posted.load(Ordering::Relaxed) as f64 / secs;
    eprintln!(
        "mixed: {} clients for {secs:.1} s, ingest {ingest_rate:.0} events/s beside them (asked {}), {} errors",
        m.clients,
        m.ingest_rate,
        errors.load(Ordering::Relaxed)
    );
    Ok(json!({
        "clients": m.clients,
        "secs": secs,
        "ingest_events_per_sec": ingest_rate,
        "ingest_events_per_sec_asked": m.ingest_rate,
        "errors": errors.load(Ordering::Relaxed),
        "kinds": kinds,
    }))
}

/// Posts generated events at `m.ingest_rate`, in batches of a tenth of a
/// second, until `stop`: a live stream from [`Mixed::live_start`] whose
/// event time advances with the clock (late and out-of-order events as
/// `m.gen` has them).
pub(super) fn ingest(m: &Mixed<'_>, stop: &AtomicBool, posted: &AtomicU64) {
    let batch = (m.ingest_rate / 10).max(1) as usize;
    let secs = m.duration.as_secs().max(1) + 1;
    let mut lines = Generator::new(GenConfig {
        start_ts: m.live_start(),
        span_secs: secs as i64,
        count: m.ingest_rate.saturating_mul(secs),
        ..m.gen.clone()
    })
    .map(|g| g.line);
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && m.ingest_rate > 0 {
        let body: String = lines.by_ref().take(batch).map(|l| l + "\n").collect();
        if let Ok(reply) = m.client.post_ndjson(body.as_bytes(), None) {
            posted.fetch_add(reply.accepted, Ordering::Relaxed);
        }
        sent += batch as u64;
        let due = Duration::from_secs_f64(sent as f64 / m.ingest_rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
