//! The schema, created by `desa migrate` or on a worker's start; every
//! statement is idempotent, so any number of workers may run it at once.
//!
//! | table | one row per | serves |
//! |---|---|---|
//! | `desa_events` | event (partitioned by UTC day on `ts`; a hypertable under TimescaleDB) | raw storage; exact window edges |
//! | `desa_series` | (type, device, resolution, bucket) | avg; top-K sorted and random access |
//! | `desa_places` | (type, resolution, 1° cell, bucket, exact location) | geo, cells cut by the box edge |
//! | `desa_cells` | (type, resolution, bucket, 1° cell) | geo, cells inside the box |
//! | `desa_offsets` | (source, partition) | exactly-once resume point and owner epoch |
//! | `desa_idempotency` | idempotency key | retried HTTP requests |
//!
//! Resolutions are hours (`res = 1`, bucket = `ts / 3600`) and UTC days
//! (`res = 2`, bucket = `ts / 86400`). Sums are double-double (`sum_hi`,
//! `sum_lo`), added in the database by the upserts' two-sum arithmetic, so
//! averages stay exact. Text keys compare bytewise (`COLLATE "C"`): no
//! locale rules in any index.
//!
//! On Citus the distribution column of `desa_series` is `device_id` (avg and
//! top-K random access go to one shard), and `desa_places`/`desa_cells` are
//! distributed by `type`; `desa_offsets` and `desa_idempotency` are reference
//! tables. That layout is described, not exercised by the tests.

use postgres::Client;

use crate::error::{Error, Result};

/// Schema version this code reads and writes.
pub const SCHEMA_VERSION: i32 = 2;

pub const RES_HOUR: i16 = 1;
pub const RES_DAY: i16 = 2;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS desa_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS desa_series (
    type text COLLATE "C" NOT NULL,
    device_id text COLLATE "C" NOT NULL,
    res smallint NOT NULL,
    bucket integer NOT NULL,
    n bigint NOT NULL,
    sum_hi float8 NOT NULL,
    sum_lo float8 NOT NULL,
    PRIMARY KEY (type, device_id, res, bucket)
);
CREATE INDEX IF NOT EXISTS desa_series_by_count
    ON desa_series (type, res, bucket, n DESC, device_id);
CREATE TABLE IF NOT EXISTS desa_places (
    type text COLLATE "C" NOT NULL,
    res smallint NOT NULL,
    cell integer NOT NULL,
    bucket integer NOT NULL,
    lat float8 NOT NULL,
    lon float8 NOT NULL,
    n bigint NOT NULL,
    sum_hi float8 NOT NULL,
    sum_lo float8 NOT NULL,
    PRIMARY KEY (type, res, cell, bucket, lat, lon)
) WITH (fillfactor = 80);  -- room for HOT updates of n and sums
CREATE TABLE IF NOT EXISTS desa_cells (
    type text COLLATE "C" NOT NULL,
    res smallint NOT NULL,
    bucket integer NOT NULL,
    cell_lat smallint NOT NULL,
    cell_lon smallint NOT NULL,
    n bigint NOT NULL,
    sum_hi float8 NOT NULL,
    sum_lo float8 NOT NULL,
    PRIMARY KEY (type, res, bucket, cell_lat, cell_lon)
) WITH (fillfactor = 80);
CREATE TABLE IF NOT EXISTS desa_offsets (
    source text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint,
    epoch bigint NOT NULL,
    owner text NOT NULL,
    PRIMARY KEY (source, partition)
);
CREATE TABLE IF NOT EXISTS desa_idempotency (
    key text PRIMARY KEY,
    response text NOT NULL,
    created_secs bigint NOT NULL
);
"#;

const EVENT_COLUMNS: &str = r#"
    ts bigint NOT NULL,
    type text COLLATE "C" NOT NULL,
    device_id text COLLATE "C" NOT NULL,
    value float8 NOT NULL,
    lat float8 NOT NULL,
    lon float8 NOT NULL,
    metadata text"#;

fn events_table(partitioning: Partitioning) -> String {
    match partitioning {
        Partitioning::Declarative => format!(
            "CREATE TABLE IF NOT EXISTS desa_events ({EVENT_COLUMNS}) PARTITION BY RANGE (ts);"
        ),
        Partitioning::Hypertable => format!(
            "CREATE TABLE IF NOT EXISTS desa_events ({EVENT_COLUMNS});
             SELECT create_hypertable('desa_events', 'ts', chunk_time_interval => 86400, if_not_exists => true);"
        ),
    }
}

const EVENT_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS desa_events_series ON desa_events (type, device_id, ts) INCLUDE (value);
-- The raw edges of top-K and geo windows (under two hours of one type). A
-- block-range index is cheaper to write but useless here: concurrent COPYs
-- and late events interleave time across pages.
CREATE INDEX IF NOT EXISTS desa_events_type_ts ON desa_events (type, ts);
"#;

/// How raw events are time-partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// PostgreSQL declarative partitions, one per UTC day, created on demand.
    Declarative,
    /// A TimescaleDB hypertable with one-day chunks.
    Hypertable,
}

/// Creates or checks the schema. Serialized across workers by an advisory
/// lock, so concurrent starts do not race on `CREATE ... IF NOT EXISTS`.
pub fn migrate(client: &mut Client) -> Result<Partitioning> {
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
        .query_opt("SELECT 1 FROM pg_class WHERE relname = 'desa_events'", &[])?
        .is_some();
    tx.batch_execute(TABLES)?;
    tx.execute(
        "INSERT INTO desa_meta (key, value) VALUES ('schema_version', $1)",
        &[&SCHEMA_VERSION.to_string()],
    )?;
    if !exists {
        if timescale {
            tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")?;
            tx.batch_execute(&events_table(Partitioning::Hypertable))?;
        } else {
            tx.batch_execute(&events_table(Partitioning::Declarative))?;
        }
    }
    tx.batch_execute(EVENT_INDEXES)?;
    let kind = partitioning(&mut tx)?;
    tx.commit()?;
    Ok(kind)
}

/// How the existing `desa_events` is partitioned.
fn partitioning(tx: &mut postgres::Transaction<'_>) -> Result<Partitioning> {
    let partitioned: bool = tx
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE relname = 'desa_events'",
            &[],
        )?
        .get(0);
    Ok(if partitioned {
        Partitioning::Declarative
    } else {
        Partitioning::Hypertable
    })
}

/// Daily partitions of raw events are named this, then the UTC day number.
const DAY_PARTITION_PREFIX: &str = "desa_events_d";

/// Name of the daily partition of raw events for UTC day `day`.
pub fn day_partition(day: i64) -> String {
    format!("{DAY_PARTITION_PREFIX}{day}")
}

/// Days of partitions created past the one a write needs. Creating a
/// partition locks `desa_events` against every writer until the in-flight
/// transactions end, so it is done a week at a time, not once a day.
pub const PARTITIONS_AHEAD: i64 = 7;

/// The UTC days that have a partition of raw events.
pub fn existing_day_partitions(client: &mut Client) -> Result<Vec<i64>> {
    let rows = client.query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'desa_events'::regclass",
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
/// with the [`PARTITIONS_AHEAD`] days after it, in one transaction. Creators
/// (threads of this worker, other workers) take turns on an advisory lock:
/// `CREATE TABLE IF NOT EXISTS` looks for the table before it waits for the
/// lock on `desa_events`, so without turns a creator could wait behind
/// another that creates the same day, then fail on it, and leave the other
/// days of its batch uncreated. Returns the days this call created.
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
    if wanted.is_empty() {
        return Ok(wanted);
    }
    let mut sql = String::from("SET LOCAL client_min_messages = warning;");
    for &day in &wanted {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF desa_events FOR VALUES FROM ({}) TO ({});",
            day_partition(day),
            day * 86_400,
            (day + 1) * 86_400
        ));
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7218032)", &[])?;
    match tx.batch_execute(&sql) {
        Ok(()) => {
            tx.commit()?;
            Ok(wanted)
        }
        Err(e)
            if e.code() == Some(&postgres::error::SqlState::DUPLICATE_TABLE)
                || e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e.into()),
    }
}
