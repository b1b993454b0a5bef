//! One write = one transaction: fence the source offsets, record the
//! idempotency key, then add the events as blocks, one per shard of devices
//! and UTC day they fall in (a shard's sparse old days sharing one, see
//! `blocks_of`). The blocks are built before the transaction (as local files, which
//! become the worker's copy once it commits), so the transaction itself is
//! a few statements whatever the number of events.

use std::collections::{BTreeMap, HashMap};

use desa_model::Event;
use desa_store::{StoreError, WriteOutcome, WriteRequest};
use postgres::Client;

use crate::blocks::{Blocks, NewBlock};
use crate::error::Error;

/// Days older than this behind a write's newest day, with fewer events
/// than [`SPARSE_EVENTS`], are sparse: they share one block.
const SPARSE_AFTER_DAYS: i64 = 2;
const SPARSE_EVENTS: usize = 64;
/// A shared block of sparse days is filed under the first day of the
/// 1024-day bucket its first day falls in, so that sparse old days fill a
/// partition per bucket (about 2.8 years), not one each.
const SPARSE_BUCKET_DAYS: i64 = 1024;

/// The blocks `events` become, by shard (`desa_model::shard_of` of the
/// device among `shards`) and by the day each is filed under (its
/// partition, in the catalog and in the segment's own footer, which must
/// agree): one per shard and UTC day, except a shard's sparse old days
/// (late events scattered over the past, a backfill of one event per day),
/// which share one block filed under their bucket's first day. Queries read
/// a block by its own time range, whatever day it is filed under.
fn blocks_of(events: &[Event], shards: u32) -> Vec<(u32, i64, Vec<&Event>)> {
    let mut by_day: BTreeMap<(u32, i64), Vec<&Event>> = BTreeMap::new();
    for e in events {
        let shard = desa_model::shard_of(&e.device_id, shards);
        by_day
            .entry((shard, e.ts_secs.div_euclid(86_400)))
            .or_default()
            .push(e);
    }
    let newest = by_day.keys().map(|k| k.1).max().unwrap_or(0);
    let mut blocks = Vec::with_capacity(by_day.len());
    let mut sparse: BTreeMap<u32, (i64, Vec<&Event>)> = BTreeMap::new();
    for ((shard, day), evs) in by_day {
        if evs.len() < SPARSE_EVENTS && day + SPARSE_AFTER_DAYS <= newest {
            let bucket = day.div_euclid(SPARSE_BUCKET_DAYS) * SPARSE_BUCKET_DAYS;
            sparse
                .entry(shard)
                .or_insert_with(|| (bucket, Vec::new()))
                .1
                .extend(evs);
        } else {
            blocks.push((shard, day, evs));
        }
    }
    blocks.extend(sparse.into_iter().map(|(s, (d, evs))| (s, d, evs)));
    blocks
}

/// Builds the blocks of `events` (see [`blocks_of`]).
pub(crate) fn build_blocks(
    blocks: &Blocks,
    events: &[Event],
    shards: u32,
) -> Result<Vec<NewBlock>, Error> {
    let grouped = blocks_of(events, shards);
    let mut built = Vec::with_capacity(grouped.len());
    for (shard, day, evs) in grouped {
        match build_block(blocks, shard, |file| {
            desa_engine::segment_set::write_events_unsynced(&evs, day, file)
        }) {
            Ok(b) => built.push(b),
            Err(e) => {
                discard(built);
                return Err(e);
            }
        }
    }
    Ok(built)
}

/// One block of `shard`, written by `make` at a new temporary path of the
/// worker's block directory; the file is removed if it fails.
pub(crate) fn build_block(
    blocks: &Blocks,
    shard: u32,
    make: impl FnOnce(&std::path::Path) -> desa_engine::Result<desa_engine::segment::SegmentMeta>,
) -> Result<NewBlock, Error> {
    let file = blocks.temp_path();
    make(&file)
        .map_err(Error::from)
        .and_then(|meta| blocks.built(&meta, shard, file.clone()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&file);
        })
}

/// Deletes the files of blocks that were not committed.
pub(crate) fn discard(built: Vec<NewBlock>) {
    for b in built {
        let _ = std::fs::remove_file(&b.file);
    }
}

/// Adds `built` to the catalog and the bodies; returns their ids.
pub(crate) fn insert_blocks(
    tx: &mut postgres::Transaction<'_>,
    built: &[NewBlock],
) -> Result<Vec<i64>, postgres::Error> {
    if built.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = tx
        .query(
            "SELECT nextval('desa_block_ids') FROM generate_series(1, $1::int4)",
            &[&(built.len() as i32)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let shards: Vec<i32> = built.iter().map(|b| b.shard as i32).collect();
    let days: Vec<i32> = built.iter().map(|b| b.day as i32).collect();
    let events: Vec<i32> = built.iter().map(|b| b.events as i32).collect();
    let bytes: Vec<i32> = built.iter().map(|b| b.body.len() as i32).collect();
    let min_ts: Vec<i64> = built.iter().map(|b| b.min_ts).collect();
    let max_ts: Vec<i64> = built.iter().map(|b| b.max_ts).collect();
    let crc: Vec<i64> = built.iter().map(|b| i64::from(b.crc)).collect();
    tx.execute(
        "INSERT INTO desa_blocks (id, shard, day, events, bytes, min_ts, max_ts, crc)
         SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::int4[], $5::int4[], $6::int8[], $7::int8[], $8::int8[])",
        &[&ids, &shards, &days, &events, &bytes, &min_ts, &max_ts, &crc],
    )?;
    let bodies: Vec<&[u8]> = built.iter().map(|b| b.body.as_slice()).collect();
    tx.execute(
        "INSERT INTO desa_block_bodies (day, id, body)
         SELECT * FROM unnest($1::int4[], $2::int8[], $3::bytea[])",
        &[&days, &ids, &bodies],
    )?;
    Ok(ids)
}

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

/// Runs one write in one transaction. `epochs` are this worker's claims;
/// `built` are the request's events as blocks. Returns the blocks' ids.
pub(crate) fn write_tx(
    client: &mut Client,
    req: &WriteRequest,
    built: &[NewBlock],
    epochs: &HashMap<(String, i32), i64>,
    now_secs: i64,
) -> Result<(WriteOutcome, Vec<i64>), Failed> {
    let mut tx = client.transaction()?;

    // Fence first: the offsets rows stay locked until commit, so a claim by
    // another worker waits for this transaction or makes it fail here. A
    // partition already at or past the request's offset took this request
    // before: a retry after its commit's acknowledgement was lost. It is
    // answered as applied, and nothing is written again.
    let mut by_source: BTreeMap<&str, Vec<(i32, i64, i64)>> = BTreeMap::new();
    // Whether the request was seen before (a retry), and whether it moved
    // any partition on: a request may be one or the other, never both.
    let (mut retried, mut advanced) = (false, false);
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
               AND (o.next_offset IS NULL OR o.next_offset < v.next)
             RETURNING o.partition",
            &[&source, &ps, &nexts, &eps],
        )?;
        if updated.len() == ps.len() {
            advanced = true;
            continue;
        }
        let done: Vec<i32> = updated.iter().map(|r| r.get(0)).collect();
        let stored = tx.query(
            "SELECT partition, epoch, next_offset FROM desa_offsets
              WHERE source = $1 AND partition = ANY($2)",
            &[&source, &ps],
        )?;
        for &(p, next, epoch) in parts.iter().filter(|p| !done.contains(&p.0)) {
            let row = stored.iter().find(|r| r.get::<_, i32>(0) == p);
            let seen = row.is_some_and(|r| {
                r.get::<_, i64>(1) == epoch && r.get::<_, Option<i64>>(2).is_some_and(|n| n >= next)
            });
            // Only a request wholly seen before is a retry; one that also
            // advanced another partition is not one this source sends.
            if !seen || !done.is_empty() {
                return Err(Failed::Fenced(source.to_owned(), p));
            }
        }
        retried = true;
    }
    if retried && advanced {
        return Err(Failed::Fenced(
            req.source_offsets[0].source.clone(),
            req.source_offsets[0].partition,
        ));
    }
    if retried {
        tx.rollback()?;
        return Ok((WriteOutcome::Applied, Vec::new()));
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
            return Ok((WriteOutcome::Replayed(stored), Vec::new()));
        }
    }

    let ids = insert_blocks(&mut tx, built)?;
    tx.commit()?;
    Ok((WriteOutcome::Applied, ids))
}

/// The days the blocks of `events` are filed under, for partition creation.
pub(crate) fn days_of(events: &[Event], shards: u32) -> Vec<i64> {
    let mut days: Vec<i64> = blocks_of(events, shards)
        .into_iter()
        .map(|(_, d, _)| d)
        .collect();
    days.sort_unstable();
    days.dedup();
    days
}
