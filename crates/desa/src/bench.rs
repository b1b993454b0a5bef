//! `desa bench`: generate a dataset, load it into a fresh `desa serve` child
//! process over HTTP, then time the three queries and read the node's memory.
//!
//! The dataset is written to an NDJSON file first, so that the ingest rate
//! measures desa and not the generator. With `--in-process` the queries are
//! instead asked of the engine opened in this process, with no HTTP, the way
//! `bench/peers.py` times the peers inside its own process.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use desa_gen::{GenConfig, Generator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::client::Client;
use crate::gen::progress_bar;
use crate::units::parse_secs;

mod cluster;
mod dashboard;
mod kafka;
mod mixed;
mod target;

use target::{memory_of, open_in_process, start_node, ChildNode, Target};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Events in the dataset.
    #[arg(long, env = "DESA_BENCH_EVENTS", default_value_t = 10_000_000)]
    pub events: u64,
    #[arg(long, env = "DESA_BENCH_DEVICES", default_value_t = 100_000)]
    pub devices: u64,
    /// Event time the dataset covers.
    #[arg(long, env = "DESA_BENCH_SPAN", default_value = "30d", value_parser = parse_secs)]
    pub span: i64,
    #[arg(long, env = "DESA_BENCH_ZIPF", default_value_t = 1.1)]
    pub zipf: f64,
    #[arg(long, env = "DESA_BENCH_SEED", default_value_t = 7)]
    pub seed: u64,
    /// After the timed queries, this many clients ask the three kinds at
    /// random, at once, while ingest runs beside them (0: off).
    #[arg(long, env = "DESA_BENCH_MIXED_CLIENTS", default_value_t = 0)]
    pub mixed_clients: usize,
    /// How long the mixed load runs.
    #[arg(long, env = "DESA_BENCH_MIXED_SECS", default_value = "30s", value_parser = parse_secs)]
    pub mixed_secs: i64,
    /// Events per second posted during the mixed load (default: half the
    /// load's measured rate).
    #[arg(long, env = "DESA_BENCH_MIXED_INGEST_RATE")]
    pub mixed_ingest_rate: Option<u64>,
    /// Share of the live stream's events (mixed load and dashboards) that
    /// arrive late, up to 3 days behind (default: the dataset's 0.01).
    #[arg(long, env = "DESA_BENCH_MIXED_LATE_FRACTION")]
    pub mixed_late_fraction: Option<f64>,
    /// After the mixed load, this many dashboards ask the same 20 queries
    /// once a second for `--mixed-secs` while ingest runs at the mixed
    /// load's rate (0: off): latency and node CPU, with `--cache-size` on
    /// or off.
    #[arg(long, env = "DESA_BENCH_DASHBOARD_CLIENTS", default_value_t = 0)]
    pub dashboard_clients: usize,
    /// The node's result cache (`desa serve --cache-size`); off by default,
    /// so that the timed queries measure the store.
    #[arg(long, env = "DESA_BENCH_CACHE_SIZE", default_value = "0", value_parser = crate::units::parse_size)]
    pub cache_size: u64,
    /// Fraction of events that carry a small `metadata` object.
    #[arg(long, env = "DESA_BENCH_METADATA", default_value_t = 0.05)]
    pub metadata_fraction: f64,
    /// Moving devices: each event its own GPS fix about this many metres
    /// from the device's home (0: devices report from home).
    #[arg(long, env = "DESA_BENCH_MOVE_METRES", default_value_t = 0.0)]
    pub move_metres: f64,
    /// Where the dataset and the node's data go (default: a temporary directory).
    #[arg(long, env = "DESA_BENCH_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Use this NDJSON file instead of generating one.
    #[arg(long, env = "DESA_BENCH_INPUT")]
    pub input: Option<PathBuf>,
    /// Bytes per POST body.
    #[arg(long, env = "DESA_BENCH_BODY_BYTES", default_value_t = 4 << 20)]
    pub body_bytes: usize,
    #[arg(long, env = "DESA_BENCH_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Queries timed per kind.
    #[arg(long, env = "DESA_BENCH_QUERIES", default_value_t = 300)]
    pub queries: usize,
    /// Measure consuming from Kafka instead: produce the dataset to this
    /// broker's topic, then time a fresh node consuming it into durable storage.
    #[arg(long, env = "DESA_BENCH_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    #[arg(long, env = "DESA_BENCH_KAFKA_TOPIC", default_value = "bench")]
    pub kafka_topic: String,
    /// With --kafka-brokers: once the node has consumed the dataset, produce
    /// a live stream for this long (event time continuing where the dataset
    /// ends) and measure end-to-end freshness under that load: the time from
    /// handing a probe event to the producer until the node's avg query
    /// counts it. 0: no live phase.
    #[arg(long, env = "DESA_BENCH_LIVE", default_value = "0s", value_parser = parse_secs, requires = "kafka_brokers")]
    pub live: i64,
    /// Events per second of the live stream.
    #[arg(long, env = "DESA_BENCH_LIVE_RATE", default_value_t = 10_000)]
    pub live_rate: u64,
    /// With --store: this many workers over the database (one consumer
    /// group with --kafka-brokers, else HTTP posts spread over them), their
    /// load rate in all and each, the share of the blocks each keeps, and
    /// query latency on the first (its answers gather the others' parts).
    #[arg(long, env = "DESA_BENCH_WORKERS", requires = "store", conflicts_with_all = ["reuse_data", "live"])]
    pub workers: Option<usize>,
    /// Query the data a previous run left in the work dir (or the store)
    /// instead of loading.
    #[arg(long)]
    pub reuse_data: bool,
    /// Time the queries with a cold page cache (needs --reuse-data, and
    /// root): once the node has started on the stored data, drop the
    /// kernel's page cache, then run the query mix with no warm-up (not with
    /// --store: the database's own buffers would stay warm). The
    /// warm-up's parameters are still drawn, so the timed queries are the
    /// ones a warm run with the same seed times.
    #[arg(long, requires = "reuse_data", conflicts_with = "store")]
    pub cold: bool,
    /// Time the queries on the engine opened in this process over the
    /// stored data (needs --reuse-data), calling it directly instead of
    /// over HTTP: the engine's own cost, measured as `bench/peers.py`
    /// measures the peers. The queries and their parameters are the same.
    #[arg(long, requires = "reuse_data", conflicts_with_all = ["store", "kafka_brokers"])]
    pub in_process: bool,
    /// Write every timed query, with its parameters and desa's answer, to
    /// this file as JSON lines (`bench/peers.py` replays them on other
    /// systems and checks that they answer the same).
    #[arg(long, env = "DESA_BENCH_RECORD")]
    pub record: Option<PathBuf>,
    /// Benchmark a cluster worker over this PostgreSQL database (which must
    /// hold no desa events unless --reuse-data) instead of the embedded engine.
    #[arg(long, env = "DESA_BENCH_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Write the results as JSON here.
    #[arg(long, env = "DESA_BENCH_OUT")]
    pub out: Option<PathBuf>,
    /// Bearer token for the nodes the bench starts, when they read an auth
    /// file (`DESA_AUTH_FILE` in the environment they inherit).
    #[arg(long, env = "DESA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CAs to trust when the nodes speak HTTPS
    /// (`DESA_TLS_CERT` and `DESA_TLS_KEY` in their environment).
    #[arg(long, env = "DESA_CACERT")]
    pub cacert: Option<PathBuf>,
    /// The node's `--memory-budget`: the peak resident memory is reported
    /// against it, and marked when over.
    #[arg(long, env = "DESA_BENCH_MEMORY_BUDGET", default_value = "1GiB", value_parser = crate::units::parse_size)]
    pub memory_budget: u64,
}

impl BenchArgs {
    /// A client of a node the bench started, with --token and --cacert.
    fn client(&self, base: &str) -> Result<Client> {
        Client::new(base)
            .with_token(self.token.clone())
            .with_cacert(self.cacert.as_deref())
    }
}

/// Draws the parameters of one timed query.
type ParamGen = Box<dyn FnMut(&mut StdRng) -> Vec<(&'static str, String)>>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Posts the NDJSON file in bodies of about `body_bytes`, cut at line ends,
/// over `concurrency` connections. The file is mapped, not read: the load
/// client shares the machine with the node, and copying the input through
/// read buffers cost it about a tenth of the CPU of a load run.
fn post_file(
    clients: &[Client],
    path: &std::path::Path,
    body_bytes: usize,
    concurrency: usize,
    total_hint: u64,
) -> Result<(u64, Duration)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the input is a file this run reads and nothing writes; were it
    // truncated meanwhile, reading the mapping would fault (SIGBUS), not
    // return wrong events.
    let map = Arc::new(
        unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?,
    );
    let _ = map.advise(memmap2::Advice::Sequential);
    let bar = progress_bar(total_hint, "ingest");
    let accepted = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::sync_channel::<std::ops::Range<usize>>(concurrency * 2);
    let rx = Arc::new(Mutex::new(rx));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|i| {
            let (client, rx, accepted, failure, bar, map) = (
                clients[i % clients.len()].clone(),
                rx.clone(),
                accepted.clone(),
                failure.clone(),
                bar.clone(),
                map.clone(),
            );
            std::thread::spawn(move || loop {
                let Ok(Ok(range)) = rx.lock().map(|r| r.recv()) else {
                    return;
                };
                match client.post_ndjson(&map[range], None) {
                    Ok(r) => {
                        accepted.fetch_add(r.accepted, Ordering::Relaxed);
                        bar.inc(r.accepted);
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            })
        })
        .collect();
    // Only the workers hold the receiver: when they have all failed, a send
    // fails instead of waiting for a reader forever.
    drop(rx);
    let mut start = 0;
    while start < map.len() {
        let end = if map.len() - start <= body_bytes {
            map.len()
        } else {
            // Cut after the last line end in the body, or after the first
            // line end past it if one line is longer than a body.
            let limit = start + body_bytes;
            match map[start..limit].iter().rposition(|&b| b == b'\n') {
                Some(p) => start + p + 1,
                None => map[limit..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(map.len(), |p| limit + p + 1),
            }
        };
        if tx.send(start..end).is_err() {
            break;
        }
        start = end;
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    bar.finish_and_clear();
    if let Some(e) = failure.lock().map_err(|_| anyhow!("poisoned lock"))?.take() {
        return Err(e);
    }
    Ok((accepted.load(Ordering::Relaxed), started.elapsed()))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("desa-bench-").tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&work)?;
    let start_ts = 1_767_225_600;
    let cfg = GenConfig {
        seed: args.seed,
        devices: args.devices,
        count: args.events,
        start_ts,
        span_secs: args.span,
        zipf_s: args.zipf,
        metadata_fraction: args.metadata_fraction,
        move_metres: args.move_metres,
        ..GenConfig::default()
    };
    let data_dir = work.join("data");
    let reuse = args.reuse_data && (args.store.is_some() || data_dir.join("MANIFEST").exists());
    let mut node_args: Vec<String> = args
        .store
        .iter()
        .flat_map(|url| ["--store".to_owned(), url.clone()])
        .collect();
    node_args.extend([
        "--memory-budget".to_owned(),
        args.memory_budget.to_string(),
        "--cache-size".to_owned(),
        args.cache_size.to_string(),
    ]);
    let input = match &args.input {
        Some(p) => p.clone(),
        None if reuse => PathBuf::new(),
        None => {
            let path = work.join("events.ndjson");
            let bar = progress_bar(args.events, "generate");
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            for (i, g) in Generator::new(cfg.clone()).enumerate() {
                out.write_all(g.line.as_bytes())?;
                out.write_all(b"\n")?;
                if i % 50_000 == 0 {
                    bar.set_position(i as u64);
                }
            }
            // On disk before the load is timed: the kernel writing back
            // gigabytes of the new file would otherwise compete with the
            // node's own writes (the peers load it later, after writeback).
            out.into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()
                .with_context(|| format!("flushing {}", path.display()))?;
            bar.finish_and_clear();
            path
        }
    };
    let input_bytes = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
    if !reuse {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if let Some(workers) = args.workers {
        let hottest = Generator::new(cfg).device_id(0);
        return cluster::bench_workers(&args, workers.max(1), &input, &work, start_ts, &hottest);
    }
    if let Some(brokers) = &args.kafka_brokers {
        return kafka::bench_kafka(&args, brokers, &input, &data_dir, start_ts + args.span);
    }
    let (target, accepted, elapsed) = if args.in_process {
        if !reuse {
            bail!(
                "--in-process queries the data an earlier run stored, and {} holds none",
                data_dir.display()
            );
        }
        open_in_process(&data_dir)?
    } else {
        start_and_load(&args, reuse, &data_dir, &node_args, &input)?
    };

    // Queries.
    if args.cold {
        drop_page_cache()?;
        eprintln!("page cache dropped: the queries below are cold, with no warm-up");
    }
    let cfg_for_mixed = cfg.clone();
    let g = Generator::new(cfg);
    let devices = [
        ("hottest", g.device_id(0)),
        ("rank_100", g.device_id(100.min(args.devices - 1))),
        ("median", g.device_id(args.devices / 2)),
        // The least likely device: with Zipf skew it often has no event in
        // the window, which every system must answer as such.
        ("coldest", g.device_id(args.devices - 1)),
    ];
    let windows: [(&str, i64); 5] = [
        ("1m", 60),
        ("1h", 3_600),
        ("1d", 86_400),
        ("7d", 7 * 86_400),
        ("30d", 30 * 86_400),
    ];
    let boxes: [(&str, [f64; 4]); 4] = [
        ("10km", [48.81, 48.90, 2.29, 2.42]),
        ("100km", [48.4, 49.3, 1.7, 3.0]),
        ("1000km", [43.0, 52.0, -4.5, 9.0]),
        ("europe", [35.0, 71.0, -11.0, 40.0]),
    ];
    let mut rng = StdRng::seed_from_u64(args.seed);
    let span_end = start_ts + args.span;
    let mut results = serde_json::Map::new();
    let mut record = match &args.record {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut time = |kind: &str, label: String, path: &str, mut params: ParamGen| -> Result<()> {
        // Warm runs: the timings below are warm, as the peers' are. A node
        // that just started has none of its segment pages mapped.
        for _ in 0..args.queries.div_ceil(4) {
            let p = params(&mut rng);
            if !args.cold {
                target.ask(path, &p)?;
            }
        }
        let mut lat = Vec::with_capacity(args.queries);
        for _ in 0..args.queries {
            let p = params(&mut rng);
            let t = Instant::now();
            let answer = target.ask(path, &p)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            // The console's queries are not recorded: the peers have no
            // such endpoint to replay them on.
            if let Some(out) = record
                .as_mut()
                .filter(|_| kind != "series" && kind != "types")
            {
                let params: serde_json::Map<String, serde_json::Value> =
                    p.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                let line =
                    json!({"kind": kind, "label": label, "params": params, "answer": answer});
                writeln!(out, "{line}")?;
            }
        }
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        eprintln!("{kind:>5} {label:<22} p50 {p50:8.3} ms   p99 {p99:8.3} ms");
        results.insert(
            format!("{kind}/{label}"),
            json!({"p50_ms": p50, "p99_ms": p99, "n": lat.len()}),
        );
        Ok(())
    };
    for (dname, dev) in &devices {
        for (wname, len) in windows {
            let dev = dev.clone();
            time(
                "avg",
                format!("{dname}/{wname}"),
                "/v1/query/avg",
                Box::new(move |rng| {
                    let s = rng.gen_range(start_ts..(span_end - len).max(start_ts + 1));
                    vec![
                        ("device_id", dev.clone()),
                        ("type", "temperature".into()),
                        ("start", s.to_string()),
                        ("end", (s + len).to_string()),
                    ]
                }),
            )?;
        }
    }
    for k in [10, 100] {
        for (wname, len) in windows.iter().skip(1) {
            let len = *len;
            time(
                "topk",
                format!("k{k}/{wname}"),
                "/v1/query/topk",
                Box::new(move |rng| {
                    let s = rng.gen_range(start_ts..(span_end - len).max(start_ts + 1));
                    vec![
                        ("type", "temperature".into()),
                        ("start", s.to_string()),
                        ("end", (s + len).to_string()),
                        ("k", k.to_string()),
                    ]
                }),
            )?;
        }
    }
    for (bname, b) in boxes {
        for (wname, len) in [("1h", 3_600), ("7d", 7 * 86_400), ("30d", 30 * 86_400)] {
            time(
                "geo",
                format!("{bname}/{wname}"),
                "/v1/query/geo",
                Box::new(move |rng| {
                    let s = rng.gen_range(start_ts..(span_end - len).max(start_ts + 1));
                    vec![
                        ("type", "temperature".into()),
                        ("min_lat", b[0].to_string()),
                        ("max_lat", b[1].to_string()),
                        ("min_lon", b[2].to_string()),
                        ("max_lon", b[3].to_string()),
                        ("start", s.to_string()),
                        ("end", (s + len).to_string()),
                    ]
                }),
            )?;
        }
    }
    // The console's queries: a day and a month of hourly averages of the
    // hottest device, and the stored types.
    for (wname, len, step) in [("1d", 86_400, 3_600), ("30d", 30 * 86_400, 3_600)] {
        let dev = devices[0].1.clone();
        time(
            "series",
            format!("hottest/{wname}/{}pts", len / step),
            "/v1/query/series",
            Box::new(move |rng| {
                let s = rng.gen_range(start_ts..(span_end - len).max(start_ts + 1));
                vec![
                    ("device_id", dev.clone()),
                    ("type", "temperature".into()),
                    ("start", s.to_string()),
                    ("end", (s + len).to_string()),
                    ("step", step.to_string()),
                ]
            }),
        )?;
    }
    time("types", "all".into(), "/v1/types", Box::new(|_| Vec::new()))?;
    if let Some(mut out) = record {
        out.flush()?;
    }
    let (mut mixed_report, mut dashboard_report) = (None, None);
    if let Target::Node { client, node } = &target {
        let load_rate = accepted as f64 / elapsed.as_secs_f64().max(1e-9);
        let load = |clients| mixed::Mixed {
            client,
            clients,
            duration: Duration::from_secs(args.mixed_secs.max(1) as u64),
            ingest_rate: args.mixed_ingest_rate.unwrap_or(if reuse {
                0
            } else {
                (load_rate / 2.0) as u64
            }),
            start_ts,
            span_secs: args.span,
            devices: devices.iter().map(|(_, d)| d.clone()).collect(),
            gen: GenConfig {
                seed: args.seed + 1,
                late_fraction: args
                    .mixed_late_fraction
                    .unwrap_or(cfg_for_mixed.late_fraction),
                ..cfg_for_mixed.clone()
            },
        };
        if args.mixed_clients > 0 {
            mixed_report = Some(mixed::run(&load(args.mixed_clients))?);
        }
        if args.dashboard_clients > 0 {
            let pid = node.child.id();
            dashboard_report = Some(dashboard::run(&load(args.dashboard_clients), pid)?);
        }
    }
    let (rss, hwm) = memory_of(target.pid());
    let health = match &target {
        Target::Node { client, .. } => client.get_json("/healthz", &[])?,
        Target::InProcess(engine) => {
            let st = engine.stats();
            json!({"in_process": true, "segments": st.segments, "summaries": st.summaries})
        }
    };
    let storage = match &target {
        // Tables and indexes, as the worker last measured them.
        Target::Node { client, .. } if args.store.is_some() => client
            .get_text("/metrics")?
            .lines()
            .find_map(|l| l.strip_prefix("desa_storage_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64,
        _ => std::fs::read_dir(data_dir.join("segments"))?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>(),
    };
    let over_budget = matches!(target, Target::Node { .. }) && hwm > args.memory_budget;
    eprintln!(
        "memory: resident {:.0} MiB now, peak {}; segments {:.1} bytes/event; input {:.1} bytes/event",
        rss as f64 / 1048576.0,
        peak_against_budget(hwm, args.memory_budget, over_budget),
        storage as f64 / accepted.max(1) as f64,
        input_bytes as f64 / args.events.max(1) as f64
    );
    // Where the embedded engine's bytes go, by part of the format.
    let by_part = match &target {
        Target::Node { .. } if args.store.is_some() => None,
        _ => Some(desa_engine::breakdown::storage_breakdown(&data_dir)?),
    };
    // Per stored event: the events still in the log are counted in its part.
    let events = accepted.max(1) as f64;
    let per_event: Option<serde_json::Map<String, serde_json::Value>> = by_part.as_ref().map(|b| {
        b.bytes
            .iter()
            .map(|(part, bytes)| ((*part).to_owned(), json!(*bytes as f64 / events)))
            .collect()
    });
    if let Some(b) = &by_part {
        let parts: Vec<String> = b
            .bytes
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(part, &n)| format!("{part} {:.1}", n as f64 / events))
            .collect();
        eprintln!(
            "bytes/event by part ({:.1} in all): {}",
            b.total() as f64 / events,
            parts.join(", ")
        );
    }
    let report = json!({
        "events": accepted,
        "devices": args.devices,
        "span_secs": args.span,
        // null when this run loaded nothing (--reuse-data).
        "ingest_events_per_sec": (!reuse).then(|| accepted as f64 / elapsed.as_secs_f64()),
        "ingest_secs": elapsed.as_secs_f64(),
        "cold": args.cold,
        "resident_bytes": rss,
        "peak_resident_bytes": hwm,
        "memory_budget_bytes": args.memory_budget,
        "peak_over_budget": over_budget,
        "segment_bytes_per_event": storage as f64 / accepted.max(1) as f64,
        "bytes_per_event_by_part": per_event,
        "mixed": mixed_report,
        "dashboard": dashboard_report,
        "cache_size_bytes": args.cache_size,
        "node": health,
        "queries": results,
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

/// "N MiB", with the budget and in red (on a terminal) when it is over.
fn peak_against_budget(peak: u64, budget: u64, over: bool) -> String {
    use std::io::IsTerminal;
    let mib = |b: u64| b as f64 / 1048576.0;
    if !over {
        return format!("{:.0} MiB (budget {:.0} MiB)", mib(peak), mib(budget));
    }
    let text = format!(
        "{:.0} MiB, OVER the {:.0} MiB budget",
        mib(peak),
        mib(budget)
    );
    if std::io::stderr().is_terminal() {
        format!("\x1b[1;31m{text}\x1b[0m")
    } else {
        text
    }
}

/// Starts a `desa serve` child, loads the input over HTTP unless `reuse`,
/// and waits until its compaction and summaries settle: (target, events
/// stored, load time).
fn start_and_load(
    args: &BenchArgs,
    reuse: bool,
    data_dir: &Path,
    node_args: &[String],
    input: &Path,
) -> Result<(Target, u64, Duration)> {
    let node = start_node(data_dir, node_args)?;
    let client = args.client(&node.base)?;
    client.wait_ready(Duration::from_secs(300))?;
    if !reuse && args.store.is_some() {
        let stored = client.get_json("/healthz", &[])?["stored_events"]
            .as_u64()
            .unwrap_or(0);
        if stored > 0 {
            bail!("--store already holds {stored} events: use an empty database, or --reuse-data to query them");
        }
    }
    let (accepted, elapsed) = if reuse {
        let stored = client.get_json("/healthz", &[])?["stored_events"]
            .as_u64()
            .unwrap_or(0);
        eprintln!("reusing {stored} events stored in {}", data_dir.display());
        (stored, Duration::ZERO)
    } else {
        post_file(
            std::slice::from_ref(&client),
            input,
            args.body_bytes,
            args.concurrency,
            args.events,
        )?
    };
    let ingest_rate = accepted as f64 / elapsed.as_secs_f64().max(1e-9);
    if !reuse {
        eprintln!(
            "ingest: {accepted} events in {:.1}s = {ingest_rate:.0} events/s (durable, over HTTP)",
            elapsed.as_secs_f64()
        );
    }

    // Let compaction and summaries finish, so queries see the steady state
    // (the newest events stay in the in-memory head until it fills). A
    // database store counts its blocks as segments and reports merges due
    // as maintenance; it has no summaries.
    let settle_started = Instant::now();
    let mut last = ((u64::MAX, 0), 0u32);
    while settle_started.elapsed() < Duration::from_secs(900) {
        let h = client.get_json("/healthz", &[])?;
        let files = (
            h["segments"].as_u64().unwrap_or(0),
            h["summaries"].as_u64().unwrap_or(0),
        );
        let idle = h["maintenance"].as_str() != Some("pending");
        last = if files == last.0 && idle {
            (files, last.1 + 1)
        } else {
            (files, 0)
        };
        if last.1 >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "compaction settled after {:.0}s: {} segments, {} summaries",
        settle_started.elapsed().as_secs_f64(),
        last.0 .0,
        last.0 .1
    );
    Ok((Target::Node { node, client }, accepted, elapsed))
}

/// Writes back dirty pages and drops the kernel's page cache, so that the
/// next reads of every file come from the disk.
fn drop_page_cache() -> Result<()> {
    // SAFETY: sync has no arguments and no memory effects.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("--cold drops the page cache through /proc/sys/vm/drop_caches, which needs root")
}
