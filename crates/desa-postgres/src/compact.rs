//! Merging blocks, so that a day is a handful of blocks whatever the number
//! of writes that made it.
//!
//! Every worker runs a merger. Within a UTC day, blocks are tiered by size
//! (a factor of four per tier, blocks under [`SMALL_EVENTS`] events in the
//! first); [`FAN_IN`] blocks of one tier are merged into one, so a day that
//! is still written holds O(log n) blocks. A day that event time has left
//! behind (two days before the newest event) is merged into one block once
//! its smaller blocks hold an eighth of its largest one's events, so late
//! events rewrite a past day at most every eighth of its size. No merge
//! makes a block over [`MAX_MERGED_BYTES`] (PostgreSQL's values stop at
//! 1 GB). A merge deletes its blocks and adds the merged one in one
//! transaction; an advisory lock per day keeps two workers off the same
//! day (a worker whose first choice is locked takes the next day), and the
//! delete must find every block it merged, or nothing commits.

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
/// No merge makes a block larger than this.
pub const MAX_MERGED_BYTES: u64 = 256 << 20;
/// Advisory lock space of merges (the second key is the day).
const MERGE_LOCK: i32 = 7_218_033;

fn tier(events: u64) -> u32 {
    if events < SMALL_EVENTS {
        0
    } else {
        1 + (events / SMALL_EVENTS).ilog(4)
    }
}

/// The smallest of `blocks` (sorted by size) whose sizes add up to at most
/// [`MAX_MERGED_BYTES`], at most [`MAX_FAN_IN`] of them, if at least `min`.
fn capped(mut blocks: Vec<Arc<Segment>>, min: usize) -> Option<Vec<Arc<Segment>>> {
    blocks.sort_by_key(|s| s.meta.bytes);
    let mut total = 0;
    let take = blocks
        .iter()
        .take(MAX_FAN_IN)
        .take_while(|s| {
            total += s.meta.bytes;
            total <= MAX_MERGED_BYTES
        })
        .count();
    blocks.truncate(take);
    (blocks.len() >= min.max(2)).then_some(blocks)
}

/// The merges due, at most one per day, most recent day first.
pub(crate) fn due(segments: &[Arc<Segment>]) -> Vec<Vec<Arc<Segment>>> {
    let mut by_day: BTreeMap<i64, Vec<Arc<Segment>>> = BTreeMap::new();
    for s in segments {
        by_day.entry(s.meta.partition).or_default().push(s.clone());
    }
    let Some(newest) = segments
        .iter()
        .filter(|s| s.meta.rows > 0)
        .map(|s| s.meta.max_ts.div_euclid(86_400))
        .max()
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (&day, blocks) in by_day.iter().rev() {
        if blocks.len() < 2 {
            continue;
        }
        if day + 2 <= newest {
            let largest = blocks.iter().map(|s| s.meta.rows).max().unwrap_or(0);
            let rest: u64 = blocks.iter().map(|s| s.meta.rows).sum::<u64>() - largest;
            if rest * 8 >= largest {
                if let Some(all) = capped(blocks.clone(), 2) {
                    out.push(all);
                    continue;
                }
            }
        }
        let mut tiers: BTreeMap<u32, Vec<Arc<Segment>>> = BTreeMap::new();
        for b in blocks {
            tiers.entry(tier(b.meta.rows)).or_default().push(b.clone());
        }
        if let Some(m) = tiers
            .into_values()
            .filter(|t| t.len() >= FAN_IN)
            .find_map(|t| capped(t, FAN_IN))
        {
            out.push(m);
        }
    }
    out
}

/// Runs one merge if one is due on a day no other worker is merging.
/// Returns whether it merged.
pub(crate) fn merge_once(blocks: &Blocks, c: &mut Client) -> Result<bool> {
    blocks.sync(c)?;
    let view = blocks.view();
    for parts in due(view.set.segments()) {
        let day = parts[0].meta.partition;
        let got: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&MERGE_LOCK, &(day as i32)],
            )?
            .get(0);
        if !got {
            continue;
        }
        let result = merge_locked(blocks, c, &parts, day);
        // A session that fails to unlock is dropped by the caller, which
        // releases the lock with it.
        c.execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&MERGE_LOCK, &(day as i32)],
        )?;
        return result;
    }
    Ok(false)
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
