//! Merging blocks, so that a day is a handful of blocks whatever the number
//! of writes that made it.
//!
//! Every worker runs a merger. Within a UTC day, blocks are tiered by size
//! (a factor of four per tier, blocks under [`SMALL_EVENTS`] events in the
//! first); [`FAN_IN`] blocks of one tier are merged into one, so a day that
//! is still written holds O(log n) blocks. A day that event time has left
//! behind (two days before the newest event) is merged into one block. A
//! merge deletes its blocks and adds the merged one in one transaction; an
//! advisory lock per day keeps two workers off the same day, and the delete
//! must find every block it merged, or nothing commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use desa_engine::segment::Segment;
use postgres::Client;

use crate::blocks::Blocks;
use crate::error::Result;
use crate::write::{discard, insert_blocks};

/// Blocks of one tier merged at once.
pub const FAN_IN: usize = 4;
/// At most this many blocks go into one merge.
const MAX_FAN_IN: usize = 16;
/// Blocks under this many events are all of the first tier.
pub const SMALL_EVENTS: u64 = 4096;
/// Advisory lock space of merges (the second key is the day).
const MERGE_LOCK: i32 = 7_218_033;

fn tier(events: u64) -> u32 {
    if events < SMALL_EVENTS {
        0
    } else {
        1 + (events / SMALL_EVENTS).ilog(4)
    }
}

/// The blocks of the next merge, all of one day, if any merge is due.
pub(crate) fn pick(segments: &[Arc<Segment>]) -> Option<Vec<Arc<Segment>>> {
    let mut by_day: BTreeMap<i64, Vec<Arc<Segment>>> = BTreeMap::new();
    for s in segments {
        by_day.entry(s.meta.partition).or_default().push(s.clone());
    }
    let newest = segments
        .iter()
        .filter(|s| s.meta.rows > 0)
        .map(|s| s.meta.max_ts.div_euclid(86_400))
        .max()?;
    // Recent days first: that is where writes land.
    for (&day, blocks) in by_day.iter().rev() {
        if blocks.len() < 2 {
            continue;
        }
        if day + 2 <= newest {
            let mut all = blocks.clone();
            all.sort_by_key(|s| s.meta.rows);
            all.truncate(MAX_FAN_IN);
            return Some(all);
        }
        let mut tiers: BTreeMap<u32, Vec<Arc<Segment>>> = BTreeMap::new();
        for b in blocks {
            tiers.entry(tier(b.meta.rows)).or_default().push(b.clone());
        }
        if let Some(mut due) = tiers.into_values().find(|t| t.len() >= FAN_IN) {
            due.truncate(MAX_FAN_IN);
            return Some(due);
        }
    }
    None
}

/// Runs one merge if one is due and no other worker holds its day. Returns
/// whether it merged.
pub(crate) fn merge_once(blocks: &Blocks, c: &mut Client) -> Result<bool> {
    blocks.sync(c)?;
    let view = blocks.view();
    let Some(parts) = pick(view.set.segments()) else {
        return Ok(false);
    };
    let day = parts[0].meta.partition;
    let got: bool = c
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&MERGE_LOCK, &(day as i32)],
        )?
        .get(0);
    if !got {
        return Ok(false);
    }
    let result = merge_locked(blocks, c, &parts, day);
    let unlocked = c.execute(
        "SELECT pg_advisory_unlock($1, $2)",
        &[&MERGE_LOCK, &(day as i32)],
    );
    let merged = result?;
    unlocked?;
    Ok(merged)
}

fn merge_locked(blocks: &Blocks, c: &mut Client, parts: &[Arc<Segment>], day: i64) -> Result<bool> {
    // The day's blocks as committed now: another worker may have merged
    // some of these before this one took the lock.
    blocks.sync(c)?;
    let view = blocks.view();
    if parts
        .iter()
        .any(|p| !view.by_id.contains_key(&(p.meta.id as i64)))
    {
        return Ok(false);
    }
    let file = blocks.temp_path();
    desa_engine::segment_set::merge_unsynced(parts, &file).inspect_err(|_| {
        let _ = std::fs::remove_file(&file);
    })?;
    let built = vec![blocks.built(day, file)?];
    let ids: Vec<i64> = parts.iter().map(|p| p.meta.id as i64).collect();
    let committed = (|| -> Result<Option<Vec<i64>>> {
        let mut tx = c.transaction()?;
        let deleted = tx.execute("DELETE FROM desa_blocks WHERE id = ANY($1)", &[&ids])?;
        if deleted as usize != ids.len() {
            tx.rollback()?;
            return Ok(None);
        }
        tx.execute(
            "DELETE FROM desa_block_bodies WHERE day = $1 AND id = ANY($2)",
            &[&(day as i32), &ids],
        )?;
        let new_ids = insert_blocks(&mut tx, &built)?;
        tx.commit()?;
        Ok(Some(new_ids))
    })();
    match committed {
        Ok(Some(new_ids)) => {
            let events: u64 = built.iter().map(|b| b.events).sum();
            tracing::debug!(day, blocks = ids.len(), events, "merged blocks");
            blocks.keep(built, &new_ids)?;
            blocks.sync(c)?;
            Ok(true)
        }
        Ok(None) => {
            discard(built);
            Ok(false)
        }
        Err(e) => {
            discard(built);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tier;

    #[test]
    fn tiers_grow_by_four() {
        assert_eq!(tier(1), 0);
        assert_eq!(tier(4095), 0);
        assert_eq!(tier(4096), 1);
        assert_eq!(tier(4 * 4096 - 1), 1);
        assert_eq!(tier(4 * 4096), 2);
        assert_eq!(tier(64 * 4096), 4);
    }
}
