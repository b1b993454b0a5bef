//! One write = one transaction: fence the source offsets, record the
//! idempotency key, COPY the raw events, then add the batch's aggregates with
//! set-based upserts (pre-aggregated here, sorted so that concurrent writers
//! lock rows in the same order).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use desa_model::{DoubleDouble, Event};
use desa_store::{StoreError, WriteOutcome, WriteRequest};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::Client;

use crate::error::Error;
use crate::plan::{cell_id, cell_of};
use crate::schema::{RES_DAY, RES_HOUR};

/// Count and double-double sum.
#[derive(Debug, Clone, Copy, Default)]
struct Agg {
    n: i64,
    sum: DoubleDouble,
}

impl Agg {
    fn add(&mut self, v: f64) {
        self.n += 1;
        self.sum = self.sum.add_f64(v);
    }
}

/// The count and sum columns every aggregate upsert sends.
#[derive(Default)]
struct SumColumns {
    n: Vec<i64>,
    hi: Vec<f64>,
    lo: Vec<f64>,
}

impl SumColumns {
    fn push(&mut self, g: &Agg) {
        self.n.push(g.n);
        self.hi.push(g.sum.hi);
        self.lo.push(g.sum.lo);
    }
}

/// `desa_places` key: type, resolution, cell, bucket, and the location as
/// [`ordered_bits`] (the location itself is kept in the value).
type PlaceKey<'a> = (&'a str, i16, i32, i32, u64, u64);

/// A batch's aggregates, keyed as the tables are.
#[derive(Default)]
struct Aggregates<'a> {
    series: BTreeMap<(&'a str, &'a str, i16, i32), Agg>,
    places: BTreeMap<PlaceKey<'a>, (f64, f64, Agg)>,
    cells: BTreeMap<(&'a str, i16, i32, i16, i16), Agg>,
}

/// Bit pattern of an f64 that orders like the number (for a stable lock order).
fn ordered_bits(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

fn aggregate(events: &[Event]) -> Aggregates<'_> {
    let mut a = Aggregates::default();
    for e in events {
        // -0.0 and 0.0 are one key to the database: give them one here too.
        let (lat, lon) = (e.latitude + 0.0, e.longitude + 0.0);
        let (cl, co) = cell_of(lat, lon);
        let cell = cell_id(cl, co);
        for (res, size) in [(RES_HOUR, 3600), (RES_DAY, 86_400)] {
            let bucket = e.ts_secs.div_euclid(size) as i32;
            let (t, d) = (e.event_type.as_str(), e.device_id.as_str());
            a.series
                .entry((t, d, res, bucket))
                .or_default()
                .add(e.value);
            a.places
                .entry((t, res, cell, bucket, ordered_bits(lat), ordered_bits(lon)))
                .or_insert((lat, lon, Agg::default()))
                .2
                .add(e.value);
            a.cells
                .entry((t, res, bucket, cl, co))
                .or_default()
                .add(e.value);
        }
    }
    a
}

/// The `SET` list that adds the conflicting batch row's count and
/// double-double sum (`excluded`) to the stored row's (`t`): two-sum, then
/// fast-two-sum, in float8 arithmetic — [`DoubleDouble`]'s `+`, written out
/// as plain expressions so the server evaluates no sub-query per row.
fn add_sums_set() -> String {
    let s = "(t.sum_hi + excluded.sum_hi)";
    let bb = format!("({s} - t.sum_hi)");
    let e = format!(
        "((t.sum_hi - ({s} - {bb})) + (excluded.sum_hi - {bb}) + t.sum_lo + excluded.sum_lo)"
    );
    format!("n = t.n + excluded.n, sum_hi = {s} + {e}, sum_lo = {e} - (({s} + {e}) - {s})")
}

/// `INSERT .. SELECT FROM unnest(..) ON CONFLICT (key) DO UPDATE` adding sums.
fn upsert_sql(table: &str, columns: &str, types: &str, key: &str) -> String {
    let params: Vec<String> = types
        .split(',')
        .enumerate()
        .map(|(i, t)| format!("${}::{}[]", i + 1, t.trim()))
        .collect();
    format!(
        "INSERT INTO {table} AS t ({columns}) SELECT * FROM unnest({}) ON CONFLICT ({key}) DO UPDATE SET {}",
        params.join(", "),
        add_sums_set()
    )
}

static UPSERT_SERIES: LazyLock<String> = LazyLock::new(|| {
    upsert_sql(
        "desa_series",
        "type, device_id, res, bucket, n, sum_hi, sum_lo",
        "text, text, int2, int4, int8, float8, float8",
        "type, device_id, res, bucket",
    )
});

static UPSERT_PLACES: LazyLock<String> = LazyLock::new(|| {
    upsert_sql(
        "desa_places",
        "type, res, cell, bucket, lat, lon, n, sum_hi, sum_lo",
        "text, int2, int4, int4, float8, float8, int8, float8, float8",
        "type, res, cell, bucket, lat, lon",
    )
});

static UPSERT_CELLS: LazyLock<String> = LazyLock::new(|| {
    upsert_sql(
        "desa_cells",
        "type, res, bucket, cell_lat, cell_lon, n, sum_hi, sum_lo",
        "text, int2, int4, int2, int2, int8, float8, float8",
        "type, res, bucket, cell_lat, cell_lon",
    )
});

/// Why a write transaction did not commit.
pub(crate) enum Failed {
    /// Another worker claimed this partition: roll back, write nothing.
    Fenced(String, i32),
    Db(Error),
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Self {
        Failed::Db(Error::Db(e))
    }
}

impl From<Failed> for StoreError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Fenced(stream, partition) => StoreError::Fenced { stream, partition },
            Failed::Db(e) => StoreError::Unavailable(e.describe()),
        }
    }
}

/// Runs one write in one transaction. `epochs` are this worker's claims.
pub(crate) fn write_tx(
    client: &mut Client,
    req: &WriteRequest,
    epochs: &HashMap<(String, i32), i64>,
    now_secs: i64,
) -> Result<WriteOutcome, Failed> {
    let mut tx = client.transaction()?;

    // Fence first: the offsets rows stay locked until commit, so a claim by
    // another worker waits for this transaction or makes it fail here.
    let mut by_source: BTreeMap<&str, Vec<(i32, i64, i64)>> = BTreeMap::new();
    for o in &req.source_offsets {
        let Some(&epoch) = epochs.get(&(o.source.clone(), o.partition)) else {
            return Err(Failed::Fenced(o.source.clone(), o.partition));
        };
        by_source
            .entry(&o.source)
            .or_default()
            .push((o.partition, o.next_offset, epoch));
    }
    for (source, mut parts) in by_source {
        parts.sort_unstable();
        let ps: Vec<i32> = parts.iter().map(|p| p.0).collect();
        let nexts: Vec<i64> = parts.iter().map(|p| p.1).collect();
        let eps: Vec<i64> = parts.iter().map(|p| p.2).collect();
        let updated = tx.query(
            "UPDATE desa_offsets o SET next_offset = v.next
             FROM unnest($2::int4[], $3::int8[], $4::int8[]) AS v(p, next, epoch)
             WHERE o.source = $1 AND o.partition = v.p AND o.epoch = v.epoch
             RETURNING o.partition",
            &[&source, &ps, &nexts, &eps],
        )?;
        if updated.len() != ps.len() {
            let done: Vec<i32> = updated.iter().map(|r| r.get(0)).collect();
            let lost = ps.iter().find(|p| !done.contains(p)).copied().unwrap_or(-1);
            return Err(Failed::Fenced(source.to_owned(), lost));
        }
    }

    if let Some(key) = &req.idempotency_key {
        let inserted = tx.execute(
            "INSERT INTO desa_idempotency (key, response, created_secs) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO NOTHING",
            &[key, &req.response, &now_secs],
        )?;
        if inserted == 0 {
            let stored: String = tx
                .query_one(
                    "SELECT response FROM desa_idempotency WHERE key = $1",
                    &[key],
                )?
                .get(0);
            tx.rollback()?;
            return Ok(WriteOutcome::Replayed(stored));
        }
    }

    if !req.events.is_empty() {
        copy_events(&mut tx, &req.events)?;
        upsert_aggregates(&mut tx, &req.events)?;
    }
    tx.commit()?;
    Ok(WriteOutcome::Applied)
}

fn copy_events(tx: &mut postgres::Transaction<'_>, events: &[Event]) -> Result<(), Failed> {
    let sink = tx.copy_in(
        "COPY desa_events (ts, type, device_id, value, lat, lon, metadata) FROM STDIN (FORMAT binary)",
    )?;
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::TEXT,
    ];
    let mut w = BinaryCopyInWriter::new(sink, &types);
    for e in events {
        let meta: Option<&str> = e.metadata.as_deref();
        w.write(&[
            &e.ts_secs,
            &e.event_type,
            &e.device_id,
            &e.value,
            &e.latitude,
            &e.longitude,
            &meta,
        ])?;
    }
    w.finish()?;
    Ok(())
}

fn upsert_aggregates(tx: &mut postgres::Transaction<'_>, events: &[Event]) -> Result<(), Failed> {
    let a = aggregate(events);

    let mut t = Vec::new();
    let (mut d, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
    let mut sums = SumColumns::default();
    for ((ty, dev, res, bucket), g) in &a.series {
        t.push(*ty);
        d.push(*dev);
        r.push(*res);
        b.push(*bucket);
        sums.push(g);
    }
    tx.execute(
        &*UPSERT_SERIES,
        &[&t, &d, &r, &b, &sums.n, &sums.hi, &sums.lo],
    )?;

    let mut t = Vec::new();
    let (mut r, mut c, mut b, mut la, mut lo) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sums = SumColumns::default();
    for ((ty, res, cell, bucket, _, _), (lat, lon, g)) in &a.places {
        t.push(*ty);
        r.push(*res);
        c.push(*cell);
        b.push(*bucket);
        la.push(*lat);
        lo.push(*lon);
        sums.push(g);
    }
    tx.execute(
        &*UPSERT_PLACES,
        &[&t, &r, &c, &b, &la, &lo, &sums.n, &sums.hi, &sums.lo],
    )?;

    // Last: cell rows are the ones every writer shares, so they are held
    // locked for the shortest time.
    let mut t = Vec::new();
    let (mut r, mut b, mut cla, mut clo) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sums = SumColumns::default();
    for ((ty, res, bucket, cl, co), g) in &a.cells {
        t.push(*ty);
        r.push(*res);
        b.push(*bucket);
        cla.push(*cl);
        clo.push(*co);
        sums.push(g);
    }
    tx.execute(
        &*UPSERT_CELLS,
        &[&t, &r, &b, &cla, &clo, &sums.n, &sums.hi, &sums.lo],
    )?;
    Ok(())
}

/// UTC days of the events, for partition creation.
pub(crate) fn days_of(events: &[Event]) -> Vec<i64> {
    let mut days: Vec<i64> = events
        .iter()
        .map(|e| e.ts_secs.div_euclid(86_400))
        .collect();
    days.sort_unstable();
    days.dedup();
    days
}

/// Largest timestamp of the events.
pub(crate) fn max_ts(events: &[Event]) -> Option<i64> {
    events.iter().map(|e| e.ts_secs).max()
}

#[cfg(test)]
mod tests {
    use super::ordered_bits;

    #[test]
    fn ordered_bits_sort_like_numbers() {
        let xs = [-180.0, -1.5, -0.0, 0.0, 1e-300, 2.5, 90.0, 180.0];
        for w in xs.windows(2) {
            assert!(ordered_bits(w[0]) <= ordered_bits(w[1]), "{w:?}");
        }
    }
}
