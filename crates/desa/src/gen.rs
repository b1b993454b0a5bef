//! `desa gen`: the seeded stream as NDJSON, to a file or stdout, or POSTed to a node.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use desa_gen::Generator;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Client;
use crate::units::parse_secs;

#[derive(Args, Clone, Debug)]
pub struct GenArgs {
    #[arg(long, env = "DESA_GEN_SEED", default_value_t = 42)]
    pub seed: u64,
    #[arg(long, env = "DESA_GEN_DEVICES", default_value_t = 10_000)]
    pub devices: u64,
    /// Sensor types used (1 to 6).
    #[arg(long, env = "DESA_GEN_TYPES", default_value_t = 4)]
    pub types: usize,
    /// Events to generate.
    #[arg(long, env = "DESA_GEN_COUNT", default_value_t = 1_000_000)]
    pub count: u64,
    /// Event time of the first event (unix seconds).
    #[arg(long, env = "DESA_GEN_START", default_value_t = 1_767_225_600)]
    pub start: i64,
    /// Event time the stream covers.
    #[arg(long, env = "DESA_GEN_SPAN", default_value = "7d", value_parser = parse_secs)]
    pub span: i64,
    /// Zipf exponent of device activity (0 = uniform).
    #[arg(long, env = "DESA_GEN_ZIPF", default_value_t = 1.1)]
    pub zipf: f64,
    #[arg(long, env = "DESA_GEN_OUT_OF_ORDER", default_value_t = 0.05)]
    pub out_of_order_fraction: f64,
    /// How far back an out-of-order event may be.
    #[arg(long, env = "DESA_GEN_OUT_OF_ORDER_MAX", default_value = "5m", value_parser = parse_secs)]
    pub out_of_order_max: i64,
    #[arg(long, env = "DESA_GEN_LATE", default_value_t = 0.01)]
    pub late_fraction: f64,
    /// How far back a late event may be (at least 1 hour).
    #[arg(long, env = "DESA_GEN_LATE_MAX", default_value = "3d", value_parser = parse_secs)]
    pub late_max: i64,
    #[arg(long, env = "DESA_GEN_DUPLICATES", default_value_t = 0.001)]
    pub duplicate_fraction: f64,
    #[arg(long, env = "DESA_GEN_INVALID", default_value_t = 0.0)]
    pub invalid_fraction: f64,
    /// Fraction of events that carry a small `metadata` object.
    #[arg(long, env = "DESA_GEN_METADATA", default_value_t = 0.05)]
    pub metadata_fraction: f64,
    /// Moving devices: each event its own GPS fix about this many metres
    /// from the device's home (0: devices report from home).
    #[arg(long, env = "DESA_GEN_MOVE_METRES", default_value_t = 0.0)]
    pub move_metres: f64,
    /// Write NDJSON here ("-" is stdout).
    #[arg(long, short, env = "DESA_GEN_OUTPUT", default_value = "-")]
    pub output: String,
    /// POST to this node instead (e.g. http://127.0.0.1:8080).
    #[arg(long, env = "DESA_GEN_POST")]
    pub post: Option<String>,
    /// With --post: bearer token for a node with --auth-file.
    #[arg(long, env = "DESA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --post: PEM file of the CAs to trust for an `https://` node.
    #[arg(long, env = "DESA_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Events per POST.
    #[arg(long, env = "DESA_GEN_BATCH", default_value_t = 5_000)]
    pub batch: usize,
    /// Concurrent POSTs.
    #[arg(long, env = "DESA_GEN_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Events per second to send at most (0 = as fast as possible).
    #[arg(long, env = "DESA_GEN_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Produce into Kafka instead (idempotent, acks=all, keyed by device_id).
    #[arg(long, env = "DESA_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic to produce to.
    #[arg(long, env = "DESA_KAFKA_TOPIC", default_value = "events")]
    pub kafka_topic: String,
}

impl GenArgs {
    pub fn config(&self) -> desa_gen::GenConfig {
        desa_gen::GenConfig {
            seed: self.seed,
            devices: self.devices,
            types: self.types,
            count: self.count,
            start_ts: self.start,
            span_secs: self.span,
            zipf_s: self.zipf,
            out_of_order_fraction: self.out_of_order_fraction,
            out_of_order_secs: self.out_of_order_max,
            late_fraction: self.late_fraction,
            late_secs: self.late_max,
            duplicate_fraction: self.duplicate_fraction,
            invalid_fraction: self.invalid_fraction,
            metadata_fraction: self.metadata_fraction,
            move_metres: self.move_metres,
        }
    }
}

/// What a POSTed stream achieved.
#[derive(Debug, Default, Clone)]
pub struct PostSummary {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub elapsed: Duration,
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{elapsed_precise}}] {{bar:40.cyan/blue}} {{human_pos}}/{{human_len}} ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// POSTs NDJSON bodies of `batch` lines with `concurrency` connections,
/// pacing to `rate` lines/s when it is not 0.
pub fn post_lines(
    client: &Client,
    lines: impl Iterator<Item = String>,
    batch: usize,
    concurrency: usize,
    rate: u64,
    bar: &ProgressBar,
) -> Result<PostSummary> {
    let started = Instant::now();
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, u64)>(concurrency * 2);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, rx, accepted, rejected, failure, bar) = (
            client.clone(),
            rx.clone(),
            accepted.clone(),
            rejected.clone(),
            failure.clone(),
            bar.clone(),
        );
        workers.push(std::thread::spawn(move || loop {
            let next = rx.lock().map(|r| r.recv());
            let Ok(Ok((body, n))) = next else { return };
            match client.post_ndjson(&body, None) {
                Ok(reply) => {
                    accepted.fetch_add(reply.accepted, Ordering::Relaxed);
                    rejected.fetch_add(reply.rejected_total, Ordering::Relaxed);
                    bar.inc(n);
                }
                Err(e) => {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
            }
        }));
    }
    let mut sent = 0u64;
    let mut body = Vec::with_capacity(batch * 200);
    let mut in_body = 0u64;
    for line in lines {
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
        in_body += 1;
        sent += 1;
        if in_body as usize >= batch {
            if tx.send((std::mem::take(&mut body), in_body)).is_err() {
                break;
            }
            in_body = 0;
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
            break;
        }
    }
    if in_body > 0 {
        let _ = tx.send((body, in_body));
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    if let Some(e) = failure.lock().map_err(|_| anyhow!("poisoned lock"))?.take() {
        return Err(e.context(format!("posting to {}", client.base())));
    }
    Ok(PostSummary {
        lines: sent,
        accepted: accepted.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

pub fn run(args: GenArgs) -> Result<()> {
    let cfg = args.config();
    let total = cfg.count;
    let generator = Generator::new(cfg);
    if let Some(brokers) = &args.kafka_brokers {
        let bar = progress_bar(total, "producing");
        let messages = generator.map(|g| (g.event.as_ref().map(|e| e.device_id.clone()), g.line));
        let s = desa_kafka::produce_lines(brokers, &args.kafka_topic, &[], messages, |n| {
            bar.set_position(n)
        })?;
        bar.finish_and_clear();
        eprintln!(
            "produced {} messages to {} on {brokers} in {:.1}s ({:.0} msgs/s): {} delivered, {} failed",
            s.sent,
            args.kafka_topic,
            s.elapsed.as_secs_f64(),
            s.sent as f64 / s.elapsed.as_secs_f64().max(1e-9),
            s.delivered,
            s.failed
        );
        if s.failed > 0 {
            anyhow::bail!("{} messages were not delivered", s.failed);
        }
        return Ok(());
    }
    if let Some(url) = &args.post {
        let client = Client::new(url)
            .with_token(args.token.clone())
            .with_cacert(args.cacert.as_deref())?;
        let bar = progress_bar(total, "posting");
        let s = post_lines(
            &client,
            generator.map(|g| g.line),
            args.batch,
            args.concurrency,
            args.rate,
            &bar,
        )?;
        bar.finish_and_clear();
        eprintln!(
            "posted {} lines to {url} in {:.1}s ({:.0} lines/s): {} accepted, {} rejected",
            s.lines,
            s.elapsed.as_secs_f64(),
            s.lines as f64 / s.elapsed.as_secs_f64().max(1e-9),
            s.accepted,
            s.rejected
        );
        return Ok(());
    }
    let started = Instant::now();
    let to_stdout = args.output == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(File::create(&args.output).with_context(|| format!("creating {}", args.output))?)
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let bar = if to_stdout {
        ProgressBar::hidden()
    } else {
        progress_bar(total, "writing")
    };
    let (mut lines, mut valid) = (0u64, 0u64);
    for g in generator {
        out.write_all(g.line.as_bytes())?;
        out.write_all(b"\n")?;
        lines += 1;
        valid += g.event.is_some() as u64;
        if lines % 10_000 == 0 {
            bar.set_position(lines.min(total));
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {lines} lines ({valid} valid events, {} invalid) to {} in {:.1}s",
        lines - valid,
        if to_stdout { "stdout" } else { &args.output },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
