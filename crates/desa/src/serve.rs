//! `desa serve`: a node with the embedded storage engine (or, with
//! `--store postgres://...`, a cluster worker over PostgreSQL) behind the
//! HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser};
use desa_engine::{Clock, Engine, EngineConfig, SystemClock};
use desa_kafka::{DlqTarget, KafkaConfig, KafkaSource, KafkaStatus, LateObserver};
use desa_server::{AppState, Component, Metrics, ServerConfig};
use desa_store::Store;

use crate::units::{parse_secs, parse_size};

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Where the node keeps its log and segments.
    #[arg(long, env = "DESA_DATA_DIR", default_value = "./desa-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long, env = "DESA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Events further ahead of this node's clock are rejected.
    #[arg(long, env = "DESA_MAX_FUTURE", default_value = "1d", value_parser = parse_secs)]
    pub max_future: i64,
    /// Reject events further behind the event-time watermark than this
    /// (off by default: late events are accepted and counted exactly).
    #[arg(long, env = "DESA_MAX_LATENESS", value_parser = parse_secs)]
    pub max_lateness: Option<i64>,
    /// Largest request body, before and after gzip decoding.
    #[arg(long, env = "DESA_MAX_BODY", default_value = "16MiB", value_parser = parse_size)]
    pub max_body: u64,
    /// `POST /v1/events` requests parsed and written at once (others wait,
    /// their bodies read).
    #[arg(long, env = "DESA_MAX_CONCURRENT_INGEST", default_value_t = 4)]
    pub max_concurrent_ingest: usize,
    /// Open connections at most; past it new ones wait in the kernel's backlog.
    #[arg(long, env = "DESA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A request's headers must arrive within this, from the connection's
    /// start or the previous response (also the idle keep-alive timeout).
    #[arg(long, env = "DESA_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// A request's body must arrive within this after its headers (408).
    #[arg(long, env = "DESA_BODY_TIMEOUT", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub body_timeout: std::time::Duration,
    /// Queries running at once; more wait for a slot.
    #[arg(long, env = "DESA_MAX_CONCURRENT_QUERIES", default_value_t = 8)]
    pub max_concurrent_queries: usize,
    /// Longest a client waits for a query's answer, slot included (503 past it).
    #[arg(long, env = "DESA_QUERY_TIMEOUT", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub query_timeout: std::time::Duration,
    /// Longest a write waits for the store to confirm it; past it the
    /// answer is 503, saying that the events may still be stored (retry
    /// with the same Idempotency-Key).
    #[arg(long, env = "DESA_WRITE_TIMEOUT", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub write_timeout: std::time::Duration,
    /// On SIGTERM, how long requests in flight may take to finish before
    /// their connections are closed unanswered.
    #[arg(long, env = "DESA_SHUTDOWN_GRACE", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub shutdown_grace: std::time::Duration,
    /// Resident memory the node stays under.
    #[arg(long, env = "DESA_MEMORY_BUDGET", default_value = "1GiB", value_parser = parse_size)]
    pub memory_budget: u64,
    /// Memory for the result cache of query answers, inside
    /// `--memory-budget` (0: off). Answers are served from it only while no
    /// write since touched their type and days.
    #[arg(long, env = "DESA_CACHE_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// How often every stored file is read again to verify its checksum
    /// (damage since it was first read).
    #[arg(long, env = "DESA_SCRUB_INTERVAL", default_value = "24h", value_parser = crate::units::parse_duration)]
    pub scrub_interval: std::time::Duration,
    /// Keep this much event time: whole UTC days further behind the clock
    /// are dropped, segments and summaries together (off by default).
    #[arg(long, env = "DESA_RETENTION", value_parser = parse_secs)]
    pub retention: Option<i64>,
    /// Events held in memory before they are flushed to a segment.
    #[arg(long, env = "DESA_HEAD_MAX_EVENTS", default_value_t = 262_144)]
    pub head_max_events: usize,
    /// Cluster mode: store events in this PostgreSQL database
    /// (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, with libpq's `sslmode` and
    /// `sslrootcert` for TLS) instead of the embedded engine. Workers sharing
    /// it and a Kafka group split the partitions.
    #[arg(long, env = "DESA_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Cluster mode: the database password, when --store holds none (else
    /// PGPASSWORD, PGPASSFILE or ~/.pgpass, as libpq reads them).
    #[arg(long, env = "DESA_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// This worker's name in the database's partition owners (default: host:pid).
    #[arg(long, env = "DESA_WORKER_NAME")]
    pub worker_name: Option<String>,
    /// Cluster mode: shards of devices, used only by the worker that
    /// creates the schema (as `desa migrate --shards`).
    #[arg(long, env = "DESA_SHARDS", default_value_t = desa_postgres::schema::DEFAULT_SHARDS)]
    pub shards: u32,
    /// Cluster mode: the URL other workers reach this one's API at, to ask
    /// it for its shards' part of a query (default: `http://` and the
    /// listen address, the host's name in place of an unspecified address).
    #[arg(long, env = "DESA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Credentials, one per line `NAME SCOPES SHA256HEX` (`desa token new`
    /// makes them): every endpoint but /healthz then wants a bearer token
    /// with its scope. Read again on SIGHUP.
    #[arg(long, env = "DESA_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Speak HTTPS only, with this PEM certificate chain (and --tls-key);
    /// read again on SIGHUP.
    #[arg(long, env = "DESA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "DESA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Cluster mode with --auth-file: the token (with the `query` scope)
    /// this worker shows the others when it asks them for their parts.
    #[arg(long, env = "DESA_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
    /// Cluster mode with --tls-cert: PEM file of the CAs the other workers'
    /// certificates chain to (default: the well-known public CAs).
    #[arg(long, env = "DESA_PEER_CACERT")]
    pub peer_cacert: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl ServeArgs {
    /// `desa serve`'s defaults (and `DESA_...` settings) on `data_dir` and
    /// `listen`.
    pub fn defaults(data_dir: &std::path::Path, listen: &str) -> anyhow::Result<ServeArgs> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let args = [
            "desa".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
        ];
        Ok(Only::try_parse_from(args)?.serve)
    }
}

/// Consuming a Kafka topic (all optional: without brokers there is no consumer).
#[derive(Args, Clone, Debug, Default)]
pub struct KafkaArgs {
    /// Brokers to consume from, `host:port[,host:port]`.
    #[arg(long, env = "DESA_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic to consume.
    #[arg(long, env = "DESA_KAFKA_TOPIC", default_value = "events")]
    pub kafka_topic: String,
    /// Consumer group.
    #[arg(long, env = "DESA_KAFKA_GROUP", default_value = "desa")]
    pub kafka_group: String,
    /// Dead letters: `topic:NAME` or `file:PATH` (default: topic `<topic>.dlq`).
    #[arg(long, env = "DESA_KAFKA_DLQ")]
    pub kafka_dlq: Option<String>,
    #[command(flatten)]
    pub client: KafkaClientOptions,
    /// Events per write to the store at most.
    #[arg(long, env = "DESA_KAFKA_BATCH_EVENTS", default_value_t = 50_000)]
    pub kafka_batch_events: usize,
    /// A partition whose stored offset and Kafka's disagree: `halt` (do not
    /// consume it; /healthz says why), `store` (read again from the store's
    /// offset: after restoring a backup) or `kafka` (resume at Kafka's
    /// committed offset: when several embedded nodes share one group).
    #[arg(long, env = "DESA_KAFKA_ON_OFFSET_MISMATCH", default_value = "halt")]
    pub kafka_on_offset_mismatch: desa_kafka::OnMismatch,
    /// Longest a consumed event waits before it is written (freshness).
    #[arg(long, env = "DESA_KAFKA_BATCH_WAIT", default_value = "100ms", value_parser = crate::units::parse_duration)]
    pub kafka_batch_wait: std::time::Duration,
}

/// librdkafka settings beyond the brokers (security.protocol, sasl.*,
/// ssl.*), the same for the workers and for `desa autoscale`.
#[derive(Args, Clone, Debug, Default)]
pub struct KafkaClientOptions {
    /// Extra librdkafka setting `key=value` (security.protocol, sasl.*, ssl.*); repeatable.
    #[arg(
        long = "kafka-option",
        env = "DESA_KAFKA_OPTIONS",
        hide_env_values = true,
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<String>,
    /// librdkafka settings from a file, one `key=value` per line (`#`
    /// starts a comment): secrets such as `sasl.password` stay out of argv
    /// and the environment. --kafka-option settings come after them.
    #[arg(long, env = "DESA_KAFKA_OPTION_FILE")]
    pub kafka_option_file: Option<PathBuf>,
}

impl KafkaClientOptions {
    /// `key=value` options as pairs, the file's first; the error names the
    /// malformed one (by line in the file, without its value).
    pub fn pairs(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut pairs = Vec::new();
        if let Some(path) = &self.kafka_option_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --kafka-option-file {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!(
                        "--kafka-option-file {} line {}: expected key=value",
                        path.display(),
                        i + 1
                    )
                })?;
                pairs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        for o in self.kafka_options.iter().filter(|o| !o.trim().is_empty()) {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--kafka-option {o:?} must be key=value"))?;
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(pairs)
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DESA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: not in log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A running node inside this process.
pub struct Node {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    kafka: Option<KafkaSource>,
    /// Held until `stop`, so that the store is closed there and not by
    /// whichever async task drops its last handle.
    store: Option<Arc<dyn Store>>,
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
    cfg.options = k.client.pairs()?;
    cfg.batch_max_events = k.kafka_batch_events.max(1);
    cfg.batch_max_wait = k.kafka_batch_wait;
    cfg.max_future_secs = args.max_future;
    cfg.on_offset_mismatch = k.kafka_on_offset_mismatch;
    cfg.max_lateness_secs = args.max_lateness;
    cfg.retention_secs = args.retention;
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
        anyhow::ensure!(
            args.cache_size <= args.memory_budget / 2,
            "--cache-size ({} bytes) must be at most half of --memory-budget ({} bytes): the cache is counted inside the budget",
            args.cache_size,
            args.memory_budget
        );
        let metrics = Arc::new(Metrics::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let auth = Arc::new(desa_server::auth::Auth::new(match &args.auth_file {
            Some(path) => {
                Some(desa_server::auth::AuthFile::load(path).map_err(anyhow::Error::msg)?)
            }
            None => None,
        }));
        if args.auth_file.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "no --auth-file: anyone who reaches {addr} can write events and read every device's data"
            );
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                desa_server::tls::Tls::open(cert, key).map_err(anyhow::Error::msg)?,
            )),
            _ => None,
        };
        reload_on_hangup(
            args.auth_file.clone().map(|p| (auth.clone(), p)),
            tls.clone(),
        )?;
        let store: Arc<dyn Store> = match &args.store {
            Some(url) => {
                let cfg = desa_postgres::PgConfig {
                    url: url.clone(),
                    worker: args.worker_name.clone().unwrap_or_else(default_worker_name),
                    blocks_dir: args.data_dir.join("blocks"),
                    retention_secs: args.retention,
                    shards: args.shards,
                    peer_token: args.peer_token.clone(),
                    peer_cacert: args.peer_cacert.clone(),
                    password_file: args.store_password_file.clone(),
                    advertise_url: Some(
                        args.advertise_url
                            .clone()
                            .unwrap_or_else(|| default_url(addr, args.tls_cert.is_some())),
                    ),
                };
                let store = tokio::task::spawn_blocking(move || desa_postgres::PgStore::open(cfg))
                    .await?
                    .map_err(|e| anyhow::anyhow!("opening --store: {}", e.describe()))?;
                Arc::new(store)
            }
            None => {
                let mut cfg = EngineConfig::new(&args.data_dir);
                cfg.head_max_rows = args.head_max_events.max(1);
                cfg.memory_budget_bytes = args.memory_budget - args.cache_size;
                cfg.retention_secs = args.retention;
                cfg.scrub_every = args.scrub_interval;
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
        let (kafka, mut components) = start_kafka(args, &store, &clock, &metrics)?;
        let cache = Arc::new(desa_server::cache::Cache::new(args.cache_size));
        components.push(cache.clone());
        let store: Arc<dyn Store> = Arc::new(desa_server::cache::Cached::new(store, cache));
        let cfg = ServerConfig {
            max_body_bytes: args.max_body as usize,
            max_future_secs: args.max_future,
            max_lateness_secs: args.max_lateness,
            retention_secs: args.retention,
            max_concurrent_ingest: args.max_concurrent_ingest.max(1),
            body_timeout: args.body_timeout,
            max_concurrent_queries: args.max_concurrent_queries.max(1),
            query_timeout: args.query_timeout,
            write_timeout: args.write_timeout,
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
            auth,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let door = desa_server::FrontDoor {
            max_connections: args.max_connections.max(1),
            header_timeout: args.header_timeout,
            shutdown_grace: args.shutdown_grace,
            tls,
        };
        let store = state.store.clone();
        let server = tokio::spawn(desa_server::serve(listener, state, door, async move {
            let _ = rx.await;
        }));
        Ok(Node {
            addr,
            shutdown: Some(tx),
            server,
            kafka,
            store: Some(store),
        })
    }

    /// Stops serving, then stops the Kafka source (its last batch written
    /// and committed, the group left) and closes the store. Both block
    /// (joining the consumer thread; the database client closes its
    /// connection with a runtime of its own), so they run off the async
    /// threads.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = self.server.await;
        let (kafka, store) = (self.kafka.take(), self.store.take());
        tokio::task::spawn_blocking(move || {
            drop(kafka);
            drop(store);
        })
        .await?;
        served??;
        Ok(())
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "desa".into())
}

fn default_worker_name() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// Where other workers reach this one when `--advertise-url` is not given.
fn default_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if addr.ip().is_unspecified() {
        format!("{scheme}://{}:{}", host_name(), addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

/// Reads the auth file and the TLS certificate again on each SIGHUP; a
/// file that does not parse leaves what is in force as it was, and says why.
fn reload_on_hangup(
    auth: Option<(Arc<desa_server::auth::Auth>, PathBuf)>,
    tls: Option<Arc<desa_server::tls::Tls>>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some((auth, path)) = &auth {
                match desa_server::auth::AuthFile::load(path) {
                    Ok(file) => {
                        tracing::info!(credentials = file.len(), path = %path.display(), "auth file read again");
                        auth.replace(file);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "auth file not read again; the previous credentials stay in force")
                    }
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate read again; new connections get it"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate not read again; the previous one stays in force")
                    }
                }
            }
        }
    });
    Ok(())
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
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        println!("desa listening on {scheme}://{}", node.addr);
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
