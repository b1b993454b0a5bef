//! `desa bench --dashboard-clients N`: N dashboards, each asking the same
//! 20 queries once a second, while ingest runs at a steady rate at the
//! data's live edge: latency per kind, and the node's CPU, as a result
//! cache (`--cache-size`) sees them.
//!
//! Eight of the queries hold the live edge (last hour, last day) and are
//! changed by every write; twelve are over closed windows (yesterday, the
//! last 7 and 30 days up to the live day) and change only with late
//! events (`--mixed-late-fraction`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::mixed::{ingest, Mixed};
use super::percentile;

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

type Query = (&'static str, &'static str, Vec<(&'static str, String)>);

/// The dashboard: 20 queries over the dataset, which ends at the live edge.
fn queries(m: &Mixed<'_>) -> Vec<Query> {
    // The live stream writes [now, now + a minute); closed windows end
    // before its day.
    let now = m.live_start();
    let today = now.div_euclid(DAY) * DAY;
    let live = |len: i64| (now + HOUR - len, now + HOUR);
    let ty = || ("type", "temperature".to_owned());
    let win = |(s, e): (i64, i64)| [("start", s.to_string()), ("end", e.to_string())];
    let (hot, median) = (&m.devices[0], &m.devices[m.devices.len() / 2]);
    let avg = |dev: &str, w| {
        let mut p = vec![ty(), ("device_id", dev.to_owned())];
        p.extend(win(w));
        ("avg", "/v1/query/avg", p)
    };
    let topk = |k: usize, w| {
        let mut p = vec![ty(), ("k", k.to_string())];
        p.extend(win(w));
        ("topk", "/v1/query/topk", p)
    };
    let geo = |b: [f64; 4], w| {
        let mut p = vec![ty()];
        for (name, v) in ["min_lat", "max_lat", "min_lon", "max_lon"]
            .into_iter()
            .zip(b)
        {
            p.push((name, v.to_string()));
        }
        p.extend(win(w));
        ("geo", "/v1/query/geo", p)
    };
    let series = |dev: &str, w, step: i64| {
        let mut p = vec![
            ty(),
            ("device_id", dev.to_owned()),
            ("step", step.to_string()),
        ];
        p.extend(win(w));
        ("series", "/v1/query/series", p)
    };
    let europe = [35.0, 71.0, -11.0, 40.0];
    let france = [43.0, 52.0, -4.5, 9.0];
    let closed = |days: i64| (today - days * DAY, today);
    vec![
        topk(10, live(HOUR)),
        topk(10, live(DAY)),
        geo(europe, live(HOUR)),
        geo(europe, live(DAY)),
        avg(hot, live(HOUR)),
        avg(hot, live(DAY)),
        avg(median, live(DAY)),
        series(hot, live(DAY), HOUR),
        topk(10, closed(7)),
        topk(100, closed(30)),
        topk(10, (today - DAY, today)),
        geo(europe, closed(7)),
        geo(europe, closed(30)),
        geo(france, closed(7)),
        avg(hot, closed(7)),
        avg(hot, closed(30)),
        avg(median, closed(7)),
        avg(m.devices.last().map_or(hot, |d| d), closed(30)),
        series(hot, closed(7), HOUR),
        series(median, closed(30), 6 * HOUR),
    ]
}

/// CPU seconds process `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// The node's result cache hits and misses so far (0 when it has none).
fn cache_counts(m: &Mixed<'_>) -> Result<(u64, u64)> {
    let text = m.client.get_text("/metrics")?;
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Ok((
        sum("desa_cache_hits_total{"),
        sum("desa_cache_misses_total{"),
    ))
}

/// Runs the dashboards against the node of process `pid`; returns the
/// report.
pub(super) fn run(m: &Mixed<'_>, pid: u32) -> Result<serde_json::Value> {
    let dashboard = queries(m);
    let stop = AtomicBool::new(false);
    let latencies: Mutex<BTreeMap<&'static str, Vec<f64>>> = Mutex::new(BTreeMap::new());
    let errors = AtomicU64::new(0);
    let posted = AtomicU64::new(0);
    let cpu_before = cpu_secs(pid);
    let cache_before = cache_counts(m)?;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..m.clients {
            let (stop, latencies, errors, dashboard) = (&stop, &latencies, &errors, &dashboard);
            scope.spawn(move || {
                // Spread the clients over the second.
                let offset = Duration::from_secs_f64(c as f64 / m.clients as f64);
                std::thread::sleep(offset);
                let mut mine: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    for (kind, path, params) in dashboard {
                        let t = Instant::now();
                        match m.client.get_json(path, params) {
                            Ok(_) => mine
                                .entry(kind)
                                .or_default()
                                .push(t.elapsed().as_secs_f64() * 1e3),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    round += 1;
                    let due = offset + Duration::from_secs(round.into());
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
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
    let cpu = (cpu_secs(pid) - cpu_before) / secs;
    let cache = cache_counts(m)?;
    let (hits, misses) = (cache.0 - cache_before.0, cache.1 - cache_before.1);
    let mut kinds = serde_json::Map::new();
    let all = latencies.into_inner().unwrap_or_default();
    let mut every: Vec<f64> = all.values().flatten().copied().collect();
    for (kind, mut lat) in all {
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        eprintln!(
            "dashboard {kind:>6}: {:6} queries   p50 {p50:8.3} ms   p99 {p99:8.3} ms",
            lat.len()
        );
        kinds.insert(
            kind.to_owned(),
            json!({"p50_ms": p50, "p99_ms": p99, "n": lat.len()}),
        );
    }
    every.sort_by(f64::total_cmp);
    let p99 = percentile(&every, 0.99);
    let ingest_rate = posted.load(Ordering::Relaxed) as f64 / secs;
    eprintln!(
        "dashboard: {} clients x {} queries a second for {secs:.1} s: p99 {p99:.3} ms over all {} queries, node CPU {cpu:.2} cores, cache hits {hits} misses {misses}, ingest {ingest_rate:.0} events/s beside them, {} errors",
        m.clients,
        dashboard.len(),
        every.len(),
        errors.load(Ordering::Relaxed)
    );
    Ok(json!({
        "clients": m.clients,
        "queries_per_dashboard": dashboard.len(),
        "secs": secs,
        "p99_ms": p99,
        "node_cpu_cores": cpu,
        "cache_hits": hits,
        "cache_misses": misses,
        "ingest_events_per_sec": ingest_rate,
        "errors": errors.load(Ordering::Relaxed),
        "kinds": kinds,
    }))
}
