//! `desa serve`: a node with the embedded storage engine (or, with
//! `--store postgres://...`, a cluster worker over PostgreSQL) behind the
//! HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use desa_engine::{Clock, Engine, EngineConfig, SystemClock};
use desa_kafka::{DlqTarget, KafkaConfig, KafkaSource, KafkaStatus, LateObserver};
use desa_server::{AppState, Component, Metrics, ServerConfig};
use desa_store::Store;

use crate::cli::ServeArgs;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DESA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A running node inside this process.
pub struct Node {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _kafka: Option<KafkaSource>,
}

/// The Kafka source as a component of `/healthz` and `/metrics`.
struct KafkaComponent(Arc<KafkaStatus>);

impl Component for KafkaComponent {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn health(&self) -> (bool, serde_json::Value) {
        self.0.health()
    }
    fn metrics(&self) -> String {
        self.0.render_prometheus()
    }
}

type Components = Vec<Arc<dyn Component>>;

fn start_kafka(
    args: &ServeArgs,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> Result<(Option<KafkaSource>, Components)> {
    let k = &args.kafka;
    let Some(brokers) = &k.kafka_brokers else {
        return Ok((None, Vec::new()));
    };
    let mut cfg = KafkaConfig::new(brokers, &k.kafka_topic, &k.kafka_group);
    if let Some(dlq) = &k.kafka_dlq {
        cfg.dlq = dlq.parse::<DlqTarget>().map_err(anyhow::Error::msg)?;
    }
    cfg.options = k.option_pairs()?;
    cfg.batch_max_events = k.kafka_batch_events.max(1);
    cfg.batch_max_wait = k.kafka_batch_wait;
    cfg.max_future_secs = args.max_future;
    cfg.on_offset_mismatch = k.kafka_on_offset_mismatch;
    cfg.max_lateness_secs = args.max_lateness;
    let lateness = metrics.event_lateness.clone();
    cfg.on_late = Some(LateObserver(Arc::new(move |secs| {
        lateness.observe(secs as f64)
    })));
    let source = KafkaSource::start(
        cfg,
        store.clone(),
        clock.clone(),
        args.data_dir.join("dlq.ndjson"),
    )
    .context("starting the Kafka consumer")?;
    let component: Arc<dyn Component> = Arc::new(KafkaComponent(source.status()));
    Ok((Some(source), vec![component]))
}

impl Node {
    /// Opens the store (recovering the engine, or connecting to and
    /// migrating the database) and starts serving.
    pub async fn start(args: &ServeArgs) -> Result<Node> {
        let metrics = Arc::new(Metrics::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store: Arc<dyn Store> = match &args.store {
            Some(url) => {
                let cfg = desa_postgres::PgConfig {
                    url: url.clone(),
                    worker: args.worker_name.clone().unwrap_or_else(default_worker_name),
                    blocks_dir: args.data_dir.join("blocks"),
                };
                let store = tokio::task::spawn_blocking(move || desa_postgres::PgStore::open(cfg))
                    .await?
                    .map_err(|e| anyhow::anyhow!("opening --store: {}", e.describe()))?;
                Arc::new(store)
            }
            None => {
                let mut cfg = EngineConfig::new(&args.data_dir);
                cfg.head_max_rows = args.head_max_events.max(1);
                cfg.memory_budget_bytes = args.memory_budget;
                let clock = clock.clone();
                let metrics = metrics.clone();
                let engine = tokio::task::spawn_blocking(move || {
                    Engine::open_with_observer(cfg, clock, metrics)
                })
                .await?
                .with_context(|| format!("opening the data dir {}", args.data_dir.display()))?;
                Arc::new(engine)
            }
        };
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let (kafka, components) = start_kafka(args, &store, &clock, &metrics)?;
        let cfg = ServerConfig {
            max_body_bytes: args.max_body as usize,
            max_future_secs: args.max_future,
            max_lateness_secs: args.max_lateness,
            max_concurrent_ingest: args.max_concurrent_ingest.max(1),
            body_timeout: args.body_timeout,
            max_concurrent_queries: args.max_concurrent_queries.max(1),
            query_timeout: args.query_timeout,
        };
        let state = AppState {
            store,
            metrics,
            components,
            clock,
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_ingest)),
            body_budget: Arc::new(tokio::sync::Semaphore::new(AppState::body_budget_kib(&cfg))),
            query_permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_queries)),
            cfg: Arc::new(cfg),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let door = desa_server::FrontDoor {
            max_connections: args.max_connections.max(1),
            header_timeout: args.header_timeout,
            shutdown_grace: args.shutdown_grace,
        };
        let server = tokio::spawn(desa_server::serve(listener, state, door, async move {
            let _ = rx.await;
        }));
        Ok(Node {
            addr,
            shutdown: Some(tx),
            server,
            _kafka: kafka,
        })
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.await??;
        Ok(())
    }
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "desa".into());
    format!("{host}:{}", std::process::id())
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("desa-http")
        .build()
        .context("starting the async runtime")
}

pub fn run(args: ServeArgs) -> Result<()> {
    init_logging();
    let rt = runtime()?;
    let result = rt.block_on(async {
        let node = Node::start(&args).await?;
        // Tests and scripts read this line to learn the port.
        println!("desa listening on http://{}", node.addr);
        tracing::info!(addr = %node.addr, data_dir = %args.data_dir.display(), "serving");
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.stop().await
    });
    // Requests still running on blocking threads (a store write waiting on
    // its database) get the same grace as connections, no more.
    rt.shutdown_timeout(args.shutdown_grace);
    result
}
