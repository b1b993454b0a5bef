//! `desa autoscale`: sizes a consumer group of cluster workers from the
//! topic's lag, by the policy in `policy.rs`.
//!
//! With a command after `--`, it runs that many worker processes on this
//! host (`workers.rs`). Without one it only advises: it exports
//! `desa_autoscale_desired_workers` for an orchestrator (a Kubernetes HPA
//! on that metric) and takes the count it advised as the one running.
//! Either way it serves `/metrics` and `/healthz` on `--listen`, and logs
//! every decision with the figures it was made from.

mod policy;
mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::routing::get;
use clap::Args;
use desa_kafka::{GroupLag, LagSnapshot};
use parking_lot::Mutex;
use policy::{Decision, Policy, Sample, Scaler};
use workers::Pool;

use crate::units::parse_duration;

#[derive(Args, Clone, Debug)]
pub struct AutoscaleArgs {
    /// Brokers of the workers' topic, `host:port[,host:port]`.
    #[arg(long, env = "DESA_KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// The topic the workers consume.
    #[arg(long, env = "DESA_KAFKA_TOPIC", default_value = "events")]
    pub kafka_topic: String,
    /// The workers' consumer group.
    #[arg(long, env = "DESA_KAFKA_GROUP", default_value = "desa")]
    pub kafka_group: String,
    #[command(flatten)]
    pub kafka_client: crate::serve::KafkaClientOptions,
    /// Fewest workers (at least 1: workers also answer queries).
    #[arg(long, env = "DESA_AUTOSCALE_MIN", default_value_t = 1)]
    pub min: u32,
    /// Most workers; never more than the topic's partitions.
    #[arg(long, env = "DESA_AUTOSCALE_MAX", default_value_t = 8)]
    pub max: u32,
    /// Messages a second one worker consumes (its `desa_kafka_messages_total`
    /// rate while it lags; measure yours).
    #[arg(long, env = "DESA_AUTOSCALE_WORKER_RATE", default_value_t = 50_000.0)]
    pub worker_rate: f64,
    /// The lag is to drain within this.
    #[arg(long, env = "DESA_AUTOSCALE_DRAIN_TIME", default_value = "60s", value_parser = parse_duration)]
    pub drain_time: Duration,
    /// No change while the need is within this share of the current
    /// workers' rate.
    #[arg(long, env = "DESA_AUTOSCALE_TOLERANCE", default_value_t = 0.1)]
    pub tolerance: f64,
    /// Fewer workers only once every probe over this long called for fewer.
    #[arg(long, env = "DESA_AUTOSCALE_SCALE_DOWN_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub scale_down_after: Duration,
    /// No change for this long after a change (the group rebalances).
    #[arg(long, env = "DESA_AUTOSCALE_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Produce and consume rates are measured over this window.
    #[arg(long, env = "DESA_AUTOSCALE_RATE_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub rate_window: Duration,
    /// How often the lag is probed.
    #[arg(long, env = "DESA_AUTOSCALE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "DESA_AUTOSCALE_LISTEN", default_value = "127.0.0.1:9180")]
    pub listen: String,
    /// `{port}` in the worker command is this plus the worker's slot.
    #[arg(long, env = "DESA_AUTOSCALE_BASE_PORT", default_value_t = 8200)]
    pub base_port: u16,
    /// A stopped worker has this long to leave the group before SIGKILL.
    #[arg(long, env = "DESA_AUTOSCALE_STOP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// The worker command (after `--`), `{slot}` and `{port}` replaced;
    /// none: only advise.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl AutoscaleArgs {
    fn policy(&self) -> Result<Policy> {
        if self.min == 0 {
            bail!("--min must be at least 1: workers answer queries too");
        }
        if self.max < self.min {
            bail!("--max {} is below --min {}", self.max, self.min);
        }
        if !(self.worker_rate.is_finite() && self.worker_rate > 0.0) {
            bail!("--worker-rate must be a positive number of messages a second");
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            bail!("--tolerance must be at least 0 and below 1");
        }
        if self.drain_time.is_zero() || self.interval.is_zero() {
            bail!("--drain-time and --interval must be above zero");
        }
        Ok(Policy {
            min_workers: self.min,
            max_workers: self.max,
            worker_rate: self.worker_rate,
            drain_time: self.drain_time,
            tolerance: self.tolerance,
            scale_down_window: self.scale_down_after,
            cooldown: self.cooldown,
            rate_window: self.rate_window,
        })
    }
}

/// What `/metrics` and `/healthz` show.
#[derive(Default)]
struct Status {
    topic: String,
    supervising: bool,
    last: Option<(LagSnapshot, Decision)>,
    running: u32,
    probe_error: Option<String>,
    last_probe: Option<Instant>,
    probe_errors: u64,
    scaled_up: u64,
    scaled_down: u64,
    restarts: u64,
}

pub fn run(args: AutoscaleArgs) -> Result<()> {
    crate::serve::init_logging();
    let policy = args.policy()?;
    let options = args.kafka_client.pairs()?;
    let lag = GroupLag::new(
        &args.kafka_brokers,
        &args.kafka_topic,
        &args.kafka_group,
        &options,
    )?;
    let status = Arc::new(Mutex::new(Status {
        topic: args.kafka_topic.clone(),
        supervising: !args.command.is_empty(),
        ..Status::default()
    }));
    let rt = crate::serve::runtime()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state((status.clone(), args.interval));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(desa_server::serve_router(
        listener,
        router,
        desa_server::FrontDoor::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    println!("desa autoscale listening on http://{addr}");

    let stop = Arc::new(AtomicBool::new(false));
    let control = {
        let (stop, status) = (stop.clone(), status.clone());
        std::thread::Builder::new()
            .name("desa-autoscale".into())
            .spawn(move || control_loop(&args, policy, &lag, &status, &stop))?
    };
    rt.block_on(crate::serve::shutdown_signal());
    tracing::info!("stopping the workers and shutting down");
    stop.store(true, Ordering::SeqCst);
    let result = control
        .join()
        .map_err(|_| anyhow::anyhow!("the control loop panicked"))?;
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    result
}

fn control_loop(
    args: &AutoscaleArgs,
    policy: Policy,
    lag: &GroupLag,
    status: &Mutex<Status>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut scaler = Scaler::new(policy, args.min);
    let mut pool = (!args.command.is_empty())
        .then(|| Pool::new(args.command.clone(), args.base_port, args.stop_timeout));
    if let Some(pool) = &mut pool {
        pool.scale_to(args.min).context("starting the workers")?;
        status.lock().running = pool.running();
    }
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // From now, not from the last deadline: a probe slower than the
        // interval (a broker timing out) is not followed by a burst of them.
        next = Instant::now() + args.interval;
        if let Some(pool) = &mut pool {
            let restarted = pool.restart_exited();
            status.lock().restarts += restarted as u64;
        }
        let snapshot = match lag.probe() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's lag; the workers stay as they are");
                let mut st = status.lock();
                st.probe_error = Some(e.to_string());
                st.probe_errors += 1;
                continue;
            }
        };
        let before = scaler.current();
        let decision = scaler.observe(Sample {
            at: snapshot.at,
            produced: snapshot.produced(),
            consumed: snapshot.consumed(),
            lag: snapshot.lag_messages(),
            partitions: snapshot.partitions.len() as u32,
        });
        if decision.desired != before {
            tracing::info!(
                from = before,
                to = decision.desired,
                why = decision.why,
                lag_messages = snapshot.lag_messages(),
                lag_event_secs = snapshot.lag_event_secs(),
                produce_rate = decision.produce_rate.round(),
                consume_rate = decision.consume_rate.round(),
                need_rate = decision.need_rate.round(),
                partitions = snapshot.partitions.len(),
                "scaling"
            );
        }
        if let Some(pool) = &mut pool {
            if let Err(e) = pool.scale_to(decision.desired) {
                tracing::error!(error = %e, "cannot start a worker");
            }
        }
        let mut st = status.lock();
        if decision.desired > before {
            st.scaled_up += 1;
        } else if decision.desired < before {
            st.scaled_down += 1;
        }
        st.running = pool.as_ref().map_or(decision.desired, |p| p.running());
        st.probe_error = None;
        st.last_probe = Some(Instant::now());
        st.last = Some((snapshot, decision));
    }
    if let Some(pool) = &mut pool {
        pool.stop_all();
    }
    Ok(())
}

type Shared = (Arc<Mutex<Status>>, Duration);

async fn healthz(
    axum::extract::State((status, interval)): axum::extract::State<Shared>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let st = status.lock();
    let fresh = st
        .last_probe
        .is_some_and(|t| t.elapsed() < 3 * interval + Duration::from_secs(10));
    let (code, state) = if fresh {
        (axum::http::StatusCode::OK, "ok")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    let last = st.last.as_ref().map(|(snap, d)| {
        serde_json::json!({
            "desired_workers": d.desired,
            "why": d.why,
            "lag_messages": snap.lag_messages(),
            "lag_event_seconds": snap.lag_event_secs(),
            "produce_rate": d.produce_rate,
            "consume_rate": d.consume_rate,
            "partitions": snap.partitions.len(),
        })
    });
    let body = serde_json::json!({
        "status": state,
        "topic": st.topic,
        "supervising": st.supervising,
        "running_workers": st.running,
        "last_probe": last,
        "probe_error": st.probe_error,
    });
    (code, axum::Json(body))
}

async fn metrics(axum::extract::State((status, _)): axum::extract::State<Shared>) -> String {
    use std::fmt::Write;
    let st = status.lock();
    let topic = &st.topic;
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{topic=\"{topic}\"}} {v}"
        );
    };
    if let Some((snap, d)) = &st.last {
        one(
            "desa_autoscale_desired_workers",
            "gauge",
            "Workers the policy calls for (an HPA's target with AverageValue 1).",
            d.desired as f64,
        );
        one(
            "desa_autoscale_raw_workers",
            "gauge",
            "Workers the need alone calls for, before hysteresis and cooldown.",
            d.raw as f64,
        );
        one(
            "desa_autoscale_lag_messages",
            "gauge",
            "Messages produced and not yet consumed by the group, all partitions.",
            snap.lag_messages() as f64,
        );
        one(
            "desa_autoscale_lag_event_seconds",
            "gauge",
            "Event time the unconsumed messages span, in the partition furthest behind.",
            snap.lag_event_secs() as f64,
        );
        one(
            "desa_autoscale_produce_rate",
            "gauge",
            "Messages a second produced to the topic, over the rate window.",
            d.produce_rate,
        );
        one(
            "desa_autoscale_consume_rate",
            "gauge",
            "Messages a second the group consumed, over the rate window.",
            d.consume_rate,
        );
        one(
            "desa_autoscale_need_rate",
            "gauge",
            "Messages a second to consume to keep up and drain the lag within the drain time.",
            d.need_rate,
        );
        one(
            "desa_autoscale_partitions",
            "gauge",
            "Partitions of the topic (the most workers that get any).",
            snap.partitions.len() as f64,
        );
    }
    one(
        "desa_autoscale_running_workers",
        "gauge",
        "Workers running (advising only: the count last advised).",
        st.running as f64,
    );
    one(
        "desa_autoscale_probe_errors_total",
        "counter",
        "Lag probes the broker did not answer.",
        st.probe_errors as f64,
    );
    one(
        "desa_autoscale_worker_restarts_total",
        "counter",
        "Workers started again after they exited on their own.",
        st.restarts as f64,
    );
    let _ = writeln!(
        out,
        "# HELP desa_autoscale_decisions_total Changes of the worker count, by direction.\n# TYPE desa_autoscale_decisions_total counter\ndesa_autoscale_decisions_total{{topic=\"{topic}\",direction=\"up\"}} {}\ndesa_autoscale_decisions_total{{topic=\"{topic}\",direction=\"down\"}} {}",
        st.scaled_up, st.scaled_down
    );
    if let Some((snap, _)) = &st.last {
        let _ = writeln!(out, "# HELP desa_autoscale_partition_lag_messages Messages not yet consumed, by partition.\n# TYPE desa_autoscale_partition_lag_messages gauge");
        for (p, l) in &snap.partitions {
            let _ = writeln!(
                out,
                "desa_autoscale_partition_lag_messages{{topic=\"{topic}\",partition=\"{p}\"}} {}",
                l.lag_messages
            );
        }
        let _ = writeln!(out, "# HELP desa_autoscale_partition_lag_event_seconds Event time the partition's unconsumed messages span.\n# TYPE desa_autoscale_partition_lag_event_seconds gauge");
        for (p, l) in &snap.partitions {
            let _ = writeln!(out, "desa_autoscale_partition_lag_event_seconds{{topic=\"{topic}\",partition=\"{p}\"}} {}", l.lag_event_secs);
        }
    }
    out
}
