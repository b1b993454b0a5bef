//! Retention in cluster mode (`--retention`): blocks whose every event lies
//! before the first kept second (`desa_model::first_kept_secs`: the start
//! of the UTC day that holds `now - retention`) are deleted, catalog rows and
//! bodies, in one transaction; a block of sparse days (see `write`) that
//! straddles the first kept second is replaced in the same transaction by
//! one of its kept events, filed under the same shard and day. Workers follow the
//! catalog (`blocks`): the transaction raises the catalog's retention
//! horizon, and each worker drops the blocks wholly before it from its copy
//! at its next look (a worker that writes events from before the horizon,
//! which one started without `--retention` would accept, leaves blocks the
//! others do not see until retention deletes them: every worker should run
//! with the same `--retention`). As for a merge, the transaction commits only if it deletes every
//! block it chose (another worker's merge or expiry may have come first),
//! so every worker may run it. The daily partitions of expired days stay,
//! empty.

use std::sync::Arc;

use desa_engine::segment::Segment;
use postgres::Client;

use crate::blocks::Blocks;
use crate::error::Result;
use crate::replace::replace_blocks;
use crate::write::{build_block, discard};

/// Drops what has expired before `first_kept` (unix seconds), if anything
/// has; returns the events dropped.
pub(crate) fn expire_once(blocks: &Blocks, c: &mut Client, first_kept: i64) -> Result<u64> {
    blocks.sync(c)?;
    let view = blocks.view();
    let old: Vec<&Arc<Segment>> = view
        .set
        .segments()
        .iter()
        .filter(|s| s.meta.rows > 0 && s.meta.min_ts < first_kept)
        .collect();
    if old.is_empty() {
        return Ok(0);
    }
    let mut dropped: u64 = old
        .iter()
        .filter(|s| s.meta.max_ts < first_kept)
        .map(|s| s.meta.rows)
        .sum();
    let mut built = Vec::new();
    for s in old.iter().filter(|s| s.meta.max_ts >= first_kept) {
        let shard = view.shard_of.get(&(s.meta.id as i64)).copied().unwrap_or(0);
        let made = build_block(blocks, shard, |file| {
            let (meta, out) = desa_engine::segment_set::keep_from_unsynced(s, first_kept, file)?;
            dropped += out;
            Ok(meta)
        });
        match made {
            Ok(b) => built.push(b),
            Err(e) => {
                discard(built);
                return Err(e);
            }
        }
    }
    // Workers drop the blocks wholly before the horizon at their next look.
    let horizon = |tx: &mut postgres::Transaction<'_>| {
        tx.execute(
            "INSERT INTO desa_meta (key, value) VALUES ('first_kept', $1)
             ON CONFLICT (key) DO UPDATE
             SET value = GREATEST(desa_meta.value::bigint, EXCLUDED.value::bigint)::text",
            &[&first_kept.to_string()],
        )
        .map(|_| ())
    };
    if !replace_blocks(blocks, c, &old, built, horizon)? {
        return Ok(0);
    }
    tracing::info!(
        blocks = old.len(),
        events = dropped,
        "retention dropped expired events"
    );
    Ok(dropped)
}
