//! The schema, created by `desa migrate` or on a worker's start; every
//! statement is idempotent, so any number of workers may run it at once.
//!
//! | table | one row per | serves |
//! |---|---|---|
//! | `desa_blocks` | block: the events of one write (or of a merge) in one shard and UTC day | the catalog workers follow |
//! | `desa_block_bodies` | block (partitioned by UTC day; a hypertable under TimescaleDB) | the block itself: every event, and the indexes that answer the queries |
//! | `desa_offsets` | (source, partition) | exactly-once resume point, owner epoch, and the owner's URL (who answers for the partition's shards) |
//! | `desa_idempotency` | idempotency key | retried HTTP requests |
//!
//! A block's body is a segment of the embedded engine (`desa_engine::segment`):
//! the events sorted by (type, device, time) with prefix sums, count-ordered
//! device lists and a k-d tree. Devices are spread over a fixed number of
//! shards (`desa_meta` key `shards`, set when the schema is created:
//! `desa_model::shard_of`), so that a shard's data can be held by one
//! worker and moved with it. A write adds one block per shard and UTC day
//! its events fall in; a merge (`compact`) replaces several blocks of one
//! shard and day by one,
//! atomically: it is the only way a block goes. Each catalog row carries the transaction that committed it
//! (`xid`): a worker follows the catalog by reading the rows of transactions
//! at or after the oldest one that was still running when it last looked
//! (`blocks`). Bodies are stored uncompressed (`STORAGE EXTERNAL`): they are
//! written once and read once per worker, and pglz would cost more CPU than
//! the disk it saves on floating-point columns.
//!
//! On Citus, `desa_block_bodies` would be distributed by `day` and the other
//! tables be reference tables. That layout is described, not exercised by
//! the tests.

use postgres::Client;

use crate::error::{Error, Result};

/// Schema version this code reads and writes.
pub const SCHEMA_VERSION: i32 = 4;

/// Shards of a database whose schema is created without saying how many:
/// a multiple of the partition counts topics commonly have (1, 2, 3, 4, 6,
/// 12), so that each partition carries whole shards.
pub const DEFAULT_SHARDS: u32 = 12;
/// At most this many shards (each is at least a block per day).
pub const MAX_SHARDS: u32 = 1024;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS desa_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS desa_block_ids;
CREATE TABLE IF NOT EXISTS desa_blocks (
    id bigint PRIMARY KEY,
    shard integer NOT NULL,
    day integer NOT NULL,
    events integer NOT NULL,
    bytes integer NOT NULL,
    min_ts bigint NOT NULL,
    max_ts bigint NOT NULL,
    crc bigint NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS desa_blocks_by_xid ON desa_blocks (xid);
CREATE INDEX IF NOT EXISTS desa_blocks_by_day ON desa_blocks (day, id);
CREATE TABLE IF NOT EXISTS desa_offsets (
    source text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint,
    epoch bigint NOT NULL,
    owner text NOT NULL,
    owner_url text,
    of_partitions integer NOT NULL DEFAULT 0,
    PRIMARY KEY (source, partition)
);
CREATE TABLE IF NOT EXISTS desa_idempotency (
    key text PRIMARY KEY,
    response text NOT NULL,
    created_secs bigint NOT NULL
);
"#;

const BODY_COLUMNS: &str = r#"
    day integer NOT NULL,
    id bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (day, id)"#;

fn bodies_table(partitioning: Partitioning) -> String {
    match partitioning {
        Partitioning::Declarative => format!(
            "CREATE TABLE IF NOT EXISTS desa_block_bodies ({BODY_COLUMNS}) PARTITION BY RANGE (day);
             ALTER TABLE desa_block_bodies ALTER COLUMN body SET STORAGE EXTERNAL;"
        ),
        Partitioning::Hypertable => format!(
            "CREATE TABLE IF NOT EXISTS desa_block_bodies ({BODY_COLUMNS});
             ALTER TABLE desa_block_bodies ALTER COLUMN body SET STORAGE EXTERNAL;
             SELECT create_hypertable('desa_block_bodies', 'day', chunk_time_interval => 1, if_not_exists => true);"
        ),
    }
}

/// How block bodies are time-partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// PostgreSQL declarative partitions, one per UTC day, created on demand.
    Declarative,
    /// A TimescaleDB hypertable with one-day chunks.
    Hypertable,
}

/// Creates or checks the schema, with `shards` shards if it creates it
/// (an existing schema keeps its own). Serialized across workers by an
/// advisory lock, so concurrent starts do not race on `CREATE ... IF NOT
/// EXISTS`.
pub fn migrate(client: &mut Client, shards: u32) -> Result<Partitioning> {
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(Error::Config(format!(
            "--shards must be 1 to {MAX_SHARDS}, got {shards}"
        )));
    }
    let mut tx = client.transaction()?;
    // "relation already exists, skipping" on every start is noise.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.execute("SELECT pg_advisory_xact_lock(7218031)", &[])?;
    // The stored version is read before any DDL: the statements below are
    // this version's, and may not even parse against another version's
    // tables.
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('desa_meta') IS NOT NULL", &[])?
        .get(0);
    let stored: Option<String> = if has_meta {
        tx.query_opt(
            "SELECT value FROM desa_meta WHERE key = 'schema_version'",
            &[],
        )?
        .map(|r| r.get(0))
    } else {
        None
    };
    match stored.as_deref().map(str::parse::<i32>) {
        // The common case, a worker joining a running cluster: the schema
        // is there, and no DDL runs (it would lock tables the others write
        // to).
        Some(Ok(SCHEMA_VERSION)) => {
            let kind = partitioning(&mut tx)?;
            tx.commit()?;
            return Ok(kind);
        }
        Some(_) => {
            return Err(Error::Schema(format!(
                "the database holds desa schema version {}; this desa reads version {SCHEMA_VERSION} (migrate into a new database)",
                stored.unwrap_or_default()
            )))
        }
        None => {}
    }
    let timescale = tx
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )?
        .is_some();
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_class WHERE relname = 'desa_block_bodies'",
            &[],
        )?
        .is_some();
    tx.batch_execute(TABLES)?;
    tx.execute(
        "INSERT INTO desa_meta (key, value) VALUES ('schema_version', $1)",
        &[&SCHEMA_VERSION.to_string()],
    )?;
    // Names this database to the workers' block directories: block ids are
    // issued again by a database created anew (or restored).
    tx.execute(
        "INSERT INTO desa_meta (key, value) VALUES ('cluster_id', gen_random_uuid()::text)",
        &[],
    )?;
    tx.execute(
        "INSERT INTO desa_meta (key, value) VALUES ('shards', $1)",
        &[&shards.to_string()],
    )?;
    if !exists {
        if timescale {
            tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")?;
            tx.batch_execute(&bodies_table(Partitioning::Hypertable))?;
        } else {
            tx.batch_execute(&bodies_table(Partitioning::Declarative))?;
        }
    }
    let kind = partitioning(&mut tx)?;
    tx.commit()?;
    Ok(kind)
}

/// The id `migrate` gave this database.
pub fn cluster_id(client: &mut Client) -> Result<String> {
    Ok(client
        .query_one("SELECT value FROM desa_meta WHERE key = 'cluster_id'", &[])?
        .get(0))
}

/// The number of shards the schema was created with.
pub fn shards(client: &mut Client) -> Result<u32> {
    let text: String = client
        .query_one("SELECT value FROM desa_meta WHERE key = 'shards'", &[])?
        .get(0);
    text.parse()
        .ok()
        .filter(|n| (1..=MAX_SHARDS).contains(n))
        .ok_or_else(|| Error::Schema(format!("desa_meta holds {text:?} shards")))
}

/// How the existing `desa_block_bodies` is partitioned.
fn partitioning(tx: &mut postgres::Transaction<'_>) -> Result<Partitioning> {
    let partitioned: bool = tx
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE relname = 'desa_block_bodies'",
            &[],
        )?
        .get(0);
    Ok(if partitioned {
        Partitioning::Declarative
    } else {
        Partitioning::Hypertable
    })
}

/// Daily partitions of block bodies are named this, then the UTC day number.
const DAY_PARTITION_PREFIX: &str = "desa_block_bodies_d";

/// Name of the daily partition of block bodies for UTC day `day`.
pub fn day_partition(day: i64) -> String {
    format!("{DAY_PARTITION_PREFIX}{day}")
}

/// Days of partitions created past the one a write needs. Creating a
/// partition locks `desa_block_bodies` against every writer until the in-flight
/// transactions end, so it is done a week at a time, not once a day.
pub const PARTITIONS_AHEAD: i64 = 7;

/// The UTC days that have a partition of block bodies.
pub fn existing_day_partitions(client: &mut Client) -> Result<Vec<i64>> {
    let rows = client.query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'desa_block_bodies'::regclass",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            r.get::<_, &str>(0)
                .strip_prefix(DAY_PARTITION_PREFIX)?
                .parse()
                .ok()
        })
        .collect())
}

/// Creates the partitions of UTC days `days` that `existing` lacks, each
/// with the [`PARTITIONS_AHEAD`] days after it, one transaction per day: a
/// transaction that went on to the next day would hold the new partition
/// locked while it waits for the parent table, which a writer routing a row
/// to that partition holds (a deadlock). Creators (threads of this worker,
/// other workers) take turns on an advisory lock: `CREATE TABLE IF NOT
/// EXISTS` looks for the table before it waits for the lock on
/// `desa_block_bodies`, so without turns a creator could wait behind another
/// that creates the same day, then fail on it. Returns the days this call
/// created.
pub fn create_day_partitions(
    client: &mut Client,
    days: &[i64],
    existing: &std::collections::HashSet<i64>,
) -> Result<Vec<i64>> {
    let mut wanted: Vec<i64> = days
        .iter()
        .filter(|d| !existing.contains(d))
        .flat_map(|&d| d..=d + PARTITIONS_AHEAD)
        .filter(|d| !existing.contains(d))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut created = Vec::with_capacity(wanted.len());
    for day in wanted {
        let sql = format!(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS {name} PARTITION OF desa_block_bodies FOR VALUES FROM ({day}) TO ({next});
             ALTER TABLE {name} ALTER COLUMN body SET STORAGE EXTERNAL;",
            name = day_partition(day),
            next = day + 1
        );
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(7218032)", &[])?;
        match tx.batch_execute(&sql) {
            Ok(()) => {
                tx.commit()?;
                created.push(day);
            }
            Err(e)
                if e.code() == Some(&postgres::error::SqlState::DUPLICATE_TABLE)
                    || e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(created)
}
