//! desa's PostgreSQL store: cluster mode, where several `desa` workers share
//! a Kafka consumer group and one PostgreSQL-protocol database (PostgreSQL,
//! TimescaleDB; Citus by the distribution described in `schema`).
//!
//! - Every write is one transaction holding the events as blocks (one per
//!   shard of devices and UTC day, each a segment of the embedded engine,
//!   built by the worker before the transaction) and the source offsets.
//! - Offsets are fenced: claiming a partition bumps its epoch, and a write
//!   whose epoch is no longer current fails with `Fenced` and commits nothing,
//!   so a worker that lost its partitions cannot commit over the new owner.
//! - Every worker keeps a local copy of the blocks, follows the catalog
//!   before each query (`blocks`), and answers with the embedded engine's
//!   algorithms: the same exact answers at the same cost. Workers merge the
//!   blocks of a day in the background (`compact`).
//!
//! - Connections take libpq's `sslmode` and `sslrootcert` for TLS (`tls`).
//!
//! It is not a cluster manager: membership and partition ownership come from
//! the Kafka consumer group, durability and replication from the database.
//!
//! ```no_run
//! use desa_postgres::{PgConfig, PgStore};
//! use desa_store::Store;
//! let store = PgStore::open(PgConfig {
//!     url: "postgres://desa@127.0.0.1:5432/desa".into(),
//!     worker: "worker-1".into(),
//!     blocks_dir: "./desa-data/blocks".into(),
//!     retention_secs: None,
//!     shards: desa_postgres::schema::DEFAULT_SHARDS,
//!     advertise_url: Some("http://10.0.0.7:8080".into()),
//!     peer_token: None,
//!     peer_cacert: None,
//!     password_file: None,
//! }).unwrap();
//! println!("{} events stored", store.stats().stored_events);
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod blocks;
mod compact;
mod error;
mod expire;
mod fanout;
mod own;
mod password;
mod replace;
pub mod schema;
mod store;
pub mod tls;
mod write;

pub use error::{Error, Result};
pub use store::{PgConfig, PgStore};

/// Creates or checks the schema (what `desa migrate` runs); `shards` is
/// used only if it creates it. Returns how bodies are partitioned and the
/// database's shards.
pub fn migrate(
    url: &str,
    password_file: Option<&std::path::Path>,
    shards: u32,
) -> Result<(schema::Partitioning, u32)> {
    let mut client = tls::Target::parse_with(url, password_file)?.connect()?;
    let kind = schema::migrate(&mut client, shards)?;
    Ok((kind, schema::shards(&mut client)?))
}
