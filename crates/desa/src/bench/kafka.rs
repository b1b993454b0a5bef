//! `desa bench --kafka-brokers`: the node fed from Kafka, and with `--live`
//! the freshness of a live stream (produced to visible in a query).

use std::fs::File;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use desa_gen::{GenConfig, Generator};
use serde_json::json;

use super::{percentile, start_node, BenchArgs};
use crate::client::Client;
use crate::gen::progress_bar;

/// Produces the dataset into Kafka, then times a fresh node consuming all of
/// it into durable storage; with `--live`, then measures freshness under a
/// live stream that continues from `live_start_ts`.
pub(super) fn bench_kafka(
    args: &BenchArgs,
    brokers: &str,
    input: &std::path::Path,
    data_dir: &std::path::Path,
    live_start_ts: i64,
) -> Result<()> {
    let produced = produce_input(args, brokers, input)?;
    let _ = std::fs::remove_dir_all(data_dir);
    let mut extra = consumer_args(args, brokers);
    if let Some(url) = &args.store {
        extra.extend(["--store".to_owned(), url.clone()]);
    }
    extra.extend(["--memory-budget".to_owned(), args.memory_budget.to_string()]);
    let started = Instant::now();
    let node = start_node(data_dir, &extra)?;
    let client = args.client(&node.base)?;
    let bar = progress_bar(produced.delivered, "consume");
    loop {
        let stored = client.get_json("/healthz", &[])?["stored_events"]
            .as_u64()
            .unwrap_or(0);
        bar.set_position(stored);
        if stored >= produced.delivered {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(anyhow!(
                "only {stored} of {} events consumed in an hour",
                produced.delivered
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    eprintln!(
        "consume: {} events from Kafka into durable storage in {:.1}s = {:.0} events/s (node start included)",
        produced.delivered,
        elapsed.as_secs_f64(),
        produced.delivered as f64 / elapsed.as_secs_f64()
    );
    let freshness = if args.live > 0 {
        Some(measure_freshness(args, brokers, &client, live_start_ts)?)
    } else {
        None
    };
    if let Some(out) = &args.out {
        let report = json!({
            "events": produced.delivered,
            "produce_msgs_per_sec": produced.delivered as f64 / produced.elapsed.as_secs_f64().max(1e-9),
            "consume_events_per_sec": produced.delivered as f64 / elapsed.as_secs_f64(),
            "store": if args.store.is_some() { "postgres" } else { "embedded" },
            "freshness": freshness,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

/// Produces the input file to the bench's topic, keyed by `device_id`.
pub(super) fn produce_input(
    args: &BenchArgs,
    brokers: &str,
    input: &std::path::Path,
) -> Result<desa_kafka::ProduceSummary> {
    use std::io::BufRead;
    let file = std::io::BufReader::with_capacity(1 << 20, File::open(input)?);
    let bar = progress_bar(args.events, "produce");
    let lines = file.lines().map_while(|l| l.ok()).map(|l| {
        let key = serde_json::from_str::<serde_json::Value>(&l)
            .ok()
            .and_then(|v| v["device_id"].as_str().map(str::to_owned));
        (key, l)
    });
    let produced = desa_kafka::produce_lines(brokers, &args.kafka_topic, &[], lines, |n| {
        bar.set_position(n)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "produce: {} messages in {:.1}s = {:.0} msgs/s (idempotent, acks=all)",
        produced.delivered,
        produced.elapsed.as_secs_f64(),
        produced.delivered as f64 / produced.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(produced)
}

/// A bench node's arguments to consume the bench's topic in its group.
pub(super) fn consumer_args(args: &BenchArgs, brokers: &str) -> Vec<String> {
    [
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        &args.kafka_topic,
        "--kafka-group",
        "desa-bench",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The probe events of the live phase: one device and a type of their own,
/// so that they change no answer about the dataset's types.
const PROBE_DEVICE: &str = "desa-bench-freshness-probe";
const PROBE_TYPE: &str = "freshness_probe";
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often the probe's query is asked while it is not yet visible: the
/// figures' resolution. Asking more often loads a cluster worker's database
/// with queries and slows the writes being measured.
const PROBE_POLL: Duration = Duration::from_millis(20);
/// A probe not visible after this long fails the run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Produces `args.live` seconds of generated events at `args.live_rate`
/// events/s into the node's topic, with a probe event every 250 ms, while
/// another thread asks the node's avg query until it counts each probe.
/// Freshness is the time from handing a probe to the producer (it then waits
/// for librdkafka's linger and the broker's acknowledgement like any event)
/// until the answer includes it; probes are keyed alike, so they reach one
/// partition in order and the k-th probe is visible when the count is k.
fn measure_freshness(
    args: &BenchArgs,
    brokers: &str,
    client: &Client,
    live_start_ts: i64,
) -> Result<serde_json::Value> {
    let rate = args.live_rate.max(1);
    let events = rate.saturating_mul(args.live as u64);
    let cfg = GenConfig {
        seed: args.seed.wrapping_add(1),
        devices: args.devices,
        count: events,
        start_ts: live_start_ts,
        span_secs: args.live,
        zipf_s: args.zipf,
        ..GenConfig::default()
    };
    let window = [
        ("device_id", PROBE_DEVICE.to_owned()),
        ("type", PROBE_TYPE.to_owned()),
        ("start", (live_start_ts - 86_400).to_string()),
        ("end", (live_start_ts + args.live + 86_400).to_string()),
    ];
    let (sent_tx, sent_rx) = mpsc::channel::<(u64, Instant)>();
    let poller = {
        let client = client.clone();
        std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut lat = Vec::new();
            for (k, sent) in sent_rx {
                loop {
                    let count = client.get_json("/v1/query/avg", &window)?["count"]
                        .as_u64()
                        .unwrap_or(0);
                    if count > k {
                        lat.push(sent.elapsed().as_secs_f64() * 1e3);
                        break;
                    }
                    if sent.elapsed() > PROBE_TIMEOUT {
                        bail!("probe {k} not visible after {PROBE_TIMEOUT:?} (count {count})");
                    }
                    std::thread::sleep(PROBE_POLL);
                }
            }
            Ok(lat)
        })
    };
    let bar = progress_bar(events, "live");
    let started = Instant::now();
    let mut probes = 0u64;
    let mut next_probe = started;
    let mut newest_ts = live_start_ts;
    let mut stream = Generator::new(cfg).enumerate();
    let lines = std::iter::from_fn(|| {
        let now = Instant::now();
        if now >= next_probe {
            next_probe += PROBE_EVERY;
            let line = format!(
                r#"{{"device_id":"{PROBE_DEVICE}","timestamp":{newest_ts},"type":"{PROBE_TYPE}","value":{probes},"location":{{"latitude":0.0,"longitude":0.0}}}}"#
            );
            // The poller only stops at the end of the stream.
            let _ = sent_tx.send((probes, now));
            probes += 1;
            return Some((Some(PROBE_DEVICE.to_owned()), line));
        }
        let (n, g) = stream.next()?;
        // Paced: event n is due n / rate seconds after the start.
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if n % 10_000 == 0 {
            bar.set_position(n as u64);
        }
        let key = g.event.as_ref().map(|e| {
            // The newest event time so far: the stream's late events go
            // back days, past the probes' query window.
            newest_ts = newest_ts.max(e.ts_secs);
            e.device_id.clone()
        });
        Some((key, g.line))
    });
    let produced = desa_kafka::produce_lines(brokers, &args.kafka_topic, &[], lines, |_| {})?;
    let produce_secs = started.elapsed().as_secs_f64();
    // The last probe is sent: the poller stops once it has seen it.
    drop(sent_tx);
    bar.finish_and_clear();
    let mut lat = poller
        .join()
        .map_err(|_| anyhow!("the freshness poller panicked"))??;
    lat.sort_by(f64::total_cmp);
    let rate_seen = produced.delivered as f64 / produce_secs.max(1e-9);
    let (p50, p90, p99) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
    );
    let max = lat.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "freshness under {rate_seen:.0} events/s for {produce_secs:.0}s, {} probes: produced to visible p50 {p50:.0} ms, p90 {p90:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        lat.len()
    );
    Ok(json!({
        "live_secs": produce_secs,
        "live_events_per_sec": rate_seen,
        "probes": lat.len(),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max,
    }))
}
