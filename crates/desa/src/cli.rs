//! Command-line interface. Every flag can also be set through the
//! environment variable named beside it (`DESA_...`).

use clap::{Args, Parser, Subcommand};

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

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run a node: HTTP API over the embedded storage engine, or a cluster
    /// worker over PostgreSQL with `--store postgres://...`.
    Serve(crate::serve::ServeArgs),
    /// Create or check the PostgreSQL schema of cluster mode (idempotent;
    /// `desa serve --store` runs it too).
    Migrate(MigrateArgs),
    /// Start a node on a fresh data dir, feed it a generated stream, run the
    /// three queries, and keep serving until Ctrl-C.
    Demo(crate::demo::DemoArgs),
    /// Generate the seeded event stream as NDJSON (stdout, a file) or POST it to a node.
    Gen(crate::gen::GenArgs),
    /// Ask a node one of the three queries.
    Query(crate::query::QueryArgs),
    /// Make bearer tokens for a node's --auth-file.
    Token(crate::token::TokenArgs),
    /// Load a generated dataset into a fresh node and report ingest rate,
    /// query latencies and resident memory.
    Bench(crate::bench::BenchArgs),
    /// Check a data dir file by file without changing it (no node may run
    /// on it), or rebuild its lost MANIFEST with `--rebuild-manifest`.
    Fsck(crate::fsck::FsckArgs),
    /// Size a consumer group of cluster workers from the topic's lag: run
    /// the worker command after `--` as many times as the lag calls for,
    /// or, without one, export the count for an orchestrator.
    Autoscale(crate::autoscale::AutoscaleArgs),
}

#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    /// The PostgreSQL database, `postgres://USER[:PASSWORD]@HOST:PORT/DB`
    /// (TLS: `?sslmode=verify-full&sslrootcert=CA.pem`).
    #[arg(long, env = "DESA_STORE", hide_env_values = true)]
    pub store: String,
    /// The database password, when --store holds none (else PGPASSWORD,
    /// PGPASSFILE or ~/.pgpass, as libpq reads them).
    #[arg(long, env = "DESA_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<std::path::PathBuf>,
    /// Shards of devices a new schema spreads events over (an existing
    /// schema keeps its own). Each worker holds whole shards; a Kafka topic
    /// whose partition count divides this carries whole shards per
    /// partition.
    #[arg(long, env = "DESA_SHARDS", default_value_t = desa_postgres::schema::DEFAULT_SHARDS)]
    pub shards: u32,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => crate::serve::run(a),
        Command::Migrate(a) => {
            let (kind, shards) =
                desa_postgres::migrate(&a.store, a.store_password_file.as_deref(), a.shards)
                    .map_err(|e| anyhow::anyhow!(e.describe()))?;
            println!(
                "desa schema {} ready ({kind:?} raw events, {shards} shards)",
                desa_postgres::schema::SCHEMA_VERSION
            );
            Ok(())
        }
        Command::Demo(a) => crate::demo::run(a),
        Command::Gen(a) => crate::gen::run(a),
        Command::Query(a) => crate::query::run(a),
        Command::Token(a) => crate::token::run(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Autoscale(a) => crate::autoscale::run(a),
        Command::Fsck(a) => crate::fsck::run(a),
    }
}
