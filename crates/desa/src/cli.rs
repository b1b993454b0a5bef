//! Command-line interface. Every flag can also be set through the
//! environment variable named beside it (`DESA_...`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::units::{parse_secs, parse_size};

#[derive(Parser)]
#[command(
    name = "desa",
    version,
    about = "Distributed Event Stream Analytics: exact real-time queries over IoT event streams"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node: HTTP API over the embedded storage engine, or a cluster
    /// worker over PostgreSQL with `--store postgres://...`.
    Serve(ServeArgs),
    /// Create or check the PostgreSQL schema of cluster mode (idempotent;
    /// `desa serve --store` runs it too).
    Migrate(MigrateArgs),
    /// Start a node on a fresh data dir, feed it a generated stream, run the
    /// three queries, and keep serving until Ctrl-C.
    Demo(DemoArgs),
    /// Generate the seeded event stream as NDJSON (stdout, a file) or POST it to a node.
    Gen(GenArgs),
    /// Ask a node one of the three queries.
    Query(QueryArgs),
    /// Load a generated dataset into a fresh node and report ingest rate,
    /// query latencies and resident memory.
    Bench(crate::bench::BenchArgs),
    /// Check a data dir file by file without changing it (no node may run
    /// on it), or rebuild its lost MANIFEST with `--rebuild-manifest`.
    Fsck(crate::fsck::FsckArgs),
}

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
    /// On SIGTERM, how long requests in flight may take to finish before
    /// their connections are closed unanswered.
    #[arg(long, env = "DESA_SHUTDOWN_GRACE", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub shutdown_grace: std::time::Duration,
    /// Resident memory the node stays under.
    #[arg(long, env = "DESA_MEMORY_BUDGET", default_value = "1GiB", value_parser = parse_size)]
    pub memory_budget: u64,
    /// Events held in memory before they are flushed to a segment.
    #[arg(long, env = "DESA_HEAD_MAX_EVENTS", default_value_t = 262_144)]
    pub head_max_events: usize,
    /// Cluster mode: store events in this PostgreSQL database
    /// (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, with libpq's `sslmode` and
    /// `sslrootcert` for TLS) instead of the embedded engine. Workers sharing
    /// it and a Kafka group split the partitions.
    #[arg(long, env = "DESA_STORE")]
    pub store: Option<String>,
    /// This worker's name in the database's partition owners (default: host:pid).
    #[arg(long, env = "DESA_WORKER_NAME")]
    pub worker_name: Option<String>,
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

#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    /// The PostgreSQL database, `postgres://USER[:PASSWORD]@HOST:PORT/DB`
    /// (TLS: `?sslmode=verify-full&sslrootcert=CA.pem`).
    #[arg(long, env = "DESA_STORE")]
    pub store: String,
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
    /// Extra librdkafka setting `key=value` (security.protocol, sasl.*, ssl.*); repeatable.
    #[arg(
        long = "kafka-option",
        env = "DESA_KAFKA_OPTIONS",
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<String>,
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

impl KafkaArgs {
    /// `key=value` options as pairs; the error names the malformed one.
    pub fn option_pairs(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.kafka_options
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| {
                o.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| anyhow::anyhow!("--kafka-option {o:?} must be key=value"))
            })
            .collect()
    }
}

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Events to feed (valid ones; a few duplicates and late events come on top).
    #[arg(long, env = "DESA_DEMO_EVENTS", default_value_t = 3_000_000)]
    pub events: u64,
    /// Devices in the stream.
    #[arg(long, env = "DESA_DEMO_DEVICES", default_value_t = 20_000)]
    pub devices: u64,
    /// Address of the demo node's HTTP API.
    #[arg(long, env = "DESA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Data dir (default: a new temporary directory, removed on exit).
    #[arg(long, env = "DESA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Load, query and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

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
    /// Write NDJSON here ("-" is stdout).
    #[arg(long, short, env = "DESA_GEN_OUTPUT", default_value = "-")]
    pub output: String,
    /// POST to this node instead (e.g. http://127.0.0.1:8080).
    #[arg(long, env = "DESA_GEN_POST")]
    pub post: Option<String>,
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
            metadata_fraction: 0.05,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct QueryArgs {
    /// The node to ask.
    #[arg(
        long,
        env = "DESA_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Print the JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub kind: QueryKind,
}

#[derive(Subcommand, Clone, Debug)]
pub enum QueryKind {
    /// Average value of one device and type in [start, end).
    Avg {
        #[arg(long)]
        device_id: String,
        #[arg(long = "type")]
        event_type: String,
        #[arg(long)]
        start: i64,
        #[arg(long)]
        end: i64,
    },
    /// The K devices with the most events of a type in [start, end).
    Topk {
        #[arg(long = "type")]
        event_type: String,
        #[arg(long)]
        start: i64,
        #[arg(long)]
        end: i64,
        #[arg(long, default_value_t = 10)]
        k: u32,
    },
    /// Average value of a type inside a lat/lon box in [start, end).
    Geo {
        #[arg(long = "type")]
        event_type: String,
        #[arg(long, allow_hyphen_values = true)]
        min_lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        max_lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        min_lon: f64,
        #[arg(long, allow_hyphen_values = true)]
        max_lon: f64,
        #[arg(long)]
        start: i64,
        #[arg(long)]
        end: i64,
    },
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => crate::serve::run(a),
        Command::Migrate(a) => {
            let kind =
                desa_postgres::migrate(&a.store).map_err(|e| anyhow::anyhow!(e.describe()))?;
            println!(
                "desa schema {} ready ({kind:?} raw events)",
                desa_postgres::schema::SCHEMA_VERSION
            );
            Ok(())
        }
        Command::Demo(a) => crate::demo::run(a),
        Command::Gen(a) => crate::gen::run(a),
        Command::Query(a) => crate::query::run(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Fsck(a) => crate::fsck::run(a),
    }
}
