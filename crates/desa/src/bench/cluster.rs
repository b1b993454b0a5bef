//! `desa bench --store URL --workers N`: N cluster workers over one
//! database, fed from Kafka in one consumer group (`--kafka-brokers`) or
//! over HTTP with the posts spread over them. Reports the load rate in all
//! and each worker's part of it, the bytes of blocks each keeps against
//! the catalog's, and the latency of a few queries asked of the first
//! worker, whose answers gather the other owners' parts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::kafka::{consumer_args, produce_input};
use super::{percentile, post_file, start_node, BenchArgs, ChildNode};
use crate::client::Client;

/// A counter or gauge of a worker's `/metrics`, its series added up
/// whatever their labels (0 when absent).
fn metric(client: &Client, name: &str) -> Result<f64> {
    Ok(client
        .get_text("/metrics")?
        .lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn stored(client: &Client) -> Result<u64> {
    Ok(client.get_json("/healthz", &[])?["stored_events"]
        .as_u64()
        .unwrap_or(0))
}

/// Waits until every worker owns partitions and the assignment has not
/// changed for three seconds.
fn wait_assigned(clients: &[Client]) -> Result<()> {
    let started = Instant::now();
    let (mut last, mut since) = (Vec::new(), Instant::now());
    loop {
        let mut now = Vec::new();
        for c in clients {
            now.push(
                c.get_json("/healthz", &[])?["components"]["kafka"]["assigned_partitions"].clone(),
            );
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if last
            .iter()
            .all(|a| a.as_array().is_some_and(|a| !a.is_empty()))
            && since.elapsed() >= Duration::from_secs(3)
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the workers' assignment did not settle in 2 minutes: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the workers have consumed the topic: every worker with no
/// lag, and the events stored unchanged for a second (messages that are not
/// valid events go to the dead-letter file, so fewer than `produced` may
/// be stored). Returns the events stored and when they last grew.
fn wait_consumed(clients: &[Client], started: Instant, produced: u64) -> Result<(u64, Duration)> {
    let (mut last, mut grew) = (0, started.elapsed());
    loop {
        let now = stored(&clients[0])?;
        if now != last {
            (last, grew) = (now, started.elapsed());
        }
        let mut caught_up = now > 0;
        for c in clients {
            let kafka = &c.get_json("/healthz", &[])?["components"]["kafka"];
            caught_up &= kafka["lag"].as_u64() == Some(0);
        }
        if caught_up && started.elapsed() - grew >= Duration::from_secs(1) {
            return Ok((last, grew));
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the workers stored {now} of {produced} messages' events in an hour");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until no worker has merges due, three looks in a row.
fn settle(clients: &[Client]) -> Result<Duration> {
    let started = Instant::now();
    let mut quiet = 0;
    while quiet < 3 && started.elapsed() < Duration::from_secs(600) {
        let mut pending = false;
        for c in clients {
            pending |= c.get_json("/healthz", &[])?["maintenance"].as_str() == Some("pending");
        }
        quiet = if pending { 0 } else { quiet + 1 };
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(started.elapsed())
}

pub(super) fn bench_workers(
    args: &BenchArgs,
    n: usize,
    input: &Path,
    work: &Path,
    start_ts: i64,
    hottest: &str,
) -> Result<()> {
    let url = args
        .store
        .as_deref()
        .ok_or_else(|| anyhow!("--workers needs --store"))?;
    let mut extra = vec![
        "--store".to_owned(),
        url.to_owned(),
        "--memory-budget".to_owned(),
        args.memory_budget.to_string(),
    ];
    if let Some(brokers) = &args.kafka_brokers {
        extra.extend(consumer_args(args, brokers));
    }
    let mut nodes: Vec<ChildNode> = Vec::with_capacity(n);
    for i in 0..n {
        let dir = work.join(format!("worker-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        nodes.push(start_node(&dir, &extra)?);
    }
    let clients: Vec<Client> = nodes
        .iter()
        .map(|w| args.client(&w.base))
        .collect::<Result<_>>()?;
    for c in &clients {
        c.wait_ready(Duration::from_secs(300))?;
    }
    let produced = match &args.kafka_brokers {
        Some(brokers) => {
            // The group settles before the first message: a partition
            // handed over while it is read is not what this measures.
            wait_assigned(&clients)?;
            Some(brokers)
        }
        None => None,
    };
    let started = Instant::now();
    let (events, elapsed, path) = match produced {
        Some(brokers) => {
            let total = produce_input(args, brokers, input)?.delivered;
            let (stored, took) = wait_consumed(&clients, started, total)?;
            (stored, took, "from Kafka, from the first message produced")
        }
        None => {
            if stored(&clients[0])? > 0 {
                bail!("--store already holds events: use an empty database");
            }
            let (accepted, took) = post_file(
                &clients,
                input,
                args.body_bytes,
                args.concurrency,
                args.events,
            )?;
            (accepted, took, "over HTTP")
        }
    };
    let rate = events as f64 / elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{n} workers: {events} events in {:.1}s = {rate:.0} events/s in all ({path})",
        elapsed.as_secs_f64()
    );
    let counter = if produced.is_some() {
        "desa_kafka_events_total"
    } else {
        "desa_events_accepted_total"
    };
    let settled = settle(&clients)?;
    let mut per_worker = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let loaded = metric(c, counter)?;
        let bytes = metric(c, "desa_postgres_block_bytes")?;
        let shards = metric(c, "desa_postgres_shards_held")?;
        eprintln!(
            "  worker {i}: {loaded:.0} events ({:.0}/s), keeps {:.1} MB of blocks, {shards:.0} shards",
            loaded / elapsed.as_secs_f64().max(1e-9),
            bytes / 1e6
        );
        per_worker.push(json!({"events": loaded, "block_bytes": bytes, "shards_held": shards}));
    }
    eprintln!("merges settled after {:.0}s", settled.as_secs_f64());
    let queries = time_queries(args, &clients[0], start_ts, hottest)?;
    if let Some(out) = &args.out {
        let report = json!({
            "workers": n,
            "events": events,
            "source": if produced.is_some() { "kafka" } else { "http" },
            "load_secs": elapsed.as_secs_f64(),
            "events_per_sec": rate,
            "per_worker": per_worker,
            "queries": queries,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

/// p50 and p99 of a few queries of each kind, asked of one worker.
fn time_queries(
    args: &BenchArgs,
    client: &Client,
    start_ts: i64,
    hottest: &str,
) -> Result<serde_json::Value> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let end_ts = start_ts + args.span;
    let mut out = serde_json::Map::new();
    for (kind, label, len) in [
        ("avg", "hottest/1d", 86_400),
        ("avg", "hottest/30d", 30 * 86_400),
        ("topk", "k10/1d", 86_400),
        ("topk", "k10/30d", 30 * 86_400),
        ("geo", "100km/1d", 86_400),
        ("geo", "100km/30d", 30 * 86_400),
    ] {
        let mut lat = Vec::with_capacity(args.queries);
        for i in 0..args.queries + args.queries.div_ceil(4) {
            let s = rng.gen_range(start_ts..(end_ts - len).max(start_ts + 1));
            let mut p = vec![
                ("type", "temperature".to_owned()),
                ("start", s.to_string()),
                ("end", (s + len).to_string()),
            ];
            match kind {
                "avg" => p.push(("device_id", hottest.to_owned())),
                "topk" => p.push(("k", "10".into())),
                _ => {
                    for (k, v) in [
                        ("min_lat", "48.4"),
                        ("max_lat", "49.3"),
                        ("min_lon", "1.7"),
                        ("max_lon", "3.0"),
                    ] {
                        p.push((k, v.into()));
                    }
                }
            }
            let t = Instant::now();
            client.get_json(&format!("/v1/query/{kind}"), &p)?;
            // The first quarter warms the workers' page caches.
            if i >= args.queries.div_ceil(4) {
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        eprintln!("{kind:>5} {label:<22} p50 {p50:8.3} ms   p99 {p99:8.3} ms");
        out.insert(
            format!("{kind}/{label}"),
            json!({"p50_ms": p50, "p99_ms": p99, "n": lat.len()}),
        );
    }
    Ok(out.into())
}
