//! Merging blocks, so that a day is a handful of blocks whatever the number
//! of writes that made it.
//!
//! Every worker runs a merger. Within a shard's UTC day, blocks are tiered by size
//! (a factor of four per tier, blocks under [`SMALL_EVENTS`] events in the
//! first); [`FAN_IN`] blocks of one tier are merged into one, so a day that
//! is still written holds O(log n) blocks. A day that event time has left
//! behind (two days before the newest event) is merged into one block per shard once
//! its smaller blocks hold 1/[`PAST_DAY_SHARE`] of its largest one's events,
//! or once no block has come to it for [`QUIET`]: a steady trickle of late
//! events rewrites a past day at most once per that share of its size. No merge
//! makes a block over [`MAX_MERGED_BYTES`] (PostgreSQL's values stop at
//! 1 GB). A merge deletes its blocks and adds the merged one in one
//! transaction; an advisory lock per shard and day keeps two workers off
//! the same blocks (a worker whose first choice is locked takes the next), and the
//! delete must find every block it merged, or nothing commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use desa_engine::segment::Segment;
use postgres::Client;

use crate::blocks::Blocks;
use crate::error::Result;
use crate::replace::replace_blocks;
use crate::write::build_block;

/// Blocks of one tier merged at once.
pub const FAN_IN: usize = 4;
/// At most this many blocks go into one merge.
const MAX_FAN_IN: usize = 16;
/// Blocks under this many events are all of the first tier.
pub const SMALL_EVENTS: u64 = 4096;
/// No merge makes a block larger than this.
pub const MAX_MERGED_BYTES: u64 = 256 << 20;
/// A past day is merged whole once its smaller blocks hold this fraction
/// (1/n) of its largest block's events ...
pub const PAST_DAY_SHARE: u64 = 32;
/// ... or once its blocks have not changed for this long.
pub const QUIET: Duration = Duration::from_secs(10);
/// Advisory lock space of merges: this plus the shard, then the day.
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

/// A shard's UTC day: the blocks one merge may take.
type ShardDay = (i64, u32);

/// When each shard's day's set of blocks last changed, as this worker saw
/// it: a past day left alone for [`QUIET`] is merged whole.
#[derive(Default)]
pub(crate) struct Quiet {
    days: HashMap<ShardDay, (Vec<u64>, Instant)>,
}

impl Quiet {
    /// Whether the day's blocks are `ids` and have been for [`QUIET`].
    fn settled(&mut self, day: ShardDay, ids: Vec<u64>, now: Instant) -> bool {
        let e = self.days.entry(day).or_insert_with(|| (ids.clone(), now));
        if e.0 != ids {
            *e = (ids, now);
        }
        now.duration_since(e.1) >= QUIET
    }
}

/// What the merger found to do.
#[derive(Default)]
pub(crate) struct Due {
    /// The merges due, at most one per shard and day, most recent day
    /// first, with their shard.
    pub merges: Vec<(u32, Vec<Arc<Segment>>)>,
    /// Past days of several blocks that will be merged once left alone.
    pub waiting: usize,
}

/// The merges due now among `blocks` (each with its shard).
pub(crate) fn due<'a>(
    blocks: impl Iterator<Item = (u32, &'a Arc<Segment>)> + Clone,
    quiet: &mut Quiet,
    now: Instant,
) -> Due {
    let mut by_day: BTreeMap<ShardDay, Vec<Arc<Segment>>> = BTreeMap::new();
    for (shard, s) in blocks.clone() {
        by_day
            .entry((s.meta.partition, shard))
            .or_default()
            .push(s.clone());
    }
    let Some(newest) = blocks
        .map(|(_, s)| s)
        .filter(|s| s.meta.rows > 0)
        .map(|s| s.meta.max_ts.div_euclid(86_400))
        .max()
    else {
        return Due::default();
    };
    quiet
        .days
        .retain(|d, _| by_day.get(d).is_some_and(|b| b.len() > 1));
    let mut out = Due::default();
    for (&(day, shard), blocks) in by_day.iter().rev() {
        if blocks.len() < 2 {
            continue;
        }
        if day + 2 <= newest {
            let largest = blocks.iter().map(|s| s.meta.rows).max().unwrap_or(0);
            let rest: u64 = blocks.iter().map(|s| s.meta.rows).sum::<u64>() - largest;
            let mut ids: Vec<u64> = blocks.iter().map(|s| s.meta.id).collect();
            ids.sort_unstable();
            let settled = quiet.settled((day, shard), ids, now);
            if rest * PAST_DAY_SHARE >= largest || settled {
                if let Some(all) = capped(blocks.clone(), 2) {
                    out.merges.push((shard, all));
                    continue;
                }
            } else {
                out.waiting += 1;
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
            out.merges.push((shard, m));
        }
    }
    out
}

/// Runs one merge if one is due on a shard's day no other worker is merging.
/// Returns whether it merged, and whether merges are due or waiting.
pub(crate) fn merge_once(
    blocks: &Blocks,
    c: &mut Client,
    quiet: &mut Quiet,
) -> Result<(bool, bool)> {
    blocks.sync(c)?;
    let view = blocks.view();
    let held = view
        .by_id
        .iter()
        .filter_map(|(id, seg)| Some((*view.shard_of.get(id)?, seg)));
    let due = due(held, quiet, Instant::now());
    let pending = !due.merges.is_empty() || due.waiting > 0;
    for (shard, parts) in due.merges {
        let day = parts[0].meta.partition;
        let lock = MERGE_LOCK.saturating_add(shard as i32);
        let got: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&lock, &(day as i32)],
            )?
            .get(0);
        if !got {
            continue;
        }
        let result = merge_locked(blocks, c, shard, &parts, day);
        // A session that fails to unlock is dropped by the caller, which
        // releases the lock with it.
        c.execute("SELECT pg_advisory_unlock($1, $2)", &[&lock, &(day as i32)])?;
        return Ok((result?, true));
    }
    Ok((false, pending))
}

fn merge_locked(
    blocks: &Blocks,
    c: &mut Client,
    shard: u32,
    parts: &[Arc<Segment>],
    day: i64,
) -> Result<bool> {
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
    let merged = build_block(blocks, shard, |file| {
        desa_engine::segment_set::merge_unsynced(parts, file)
    })?;
    let events = merged.events;
    let gone: Vec<&Arc<Segment>> = parts.iter().collect();
    let committed = replace_blocks(blocks, c, &gone, vec![merged], |_| Ok(()))?;
    if committed {
        tracing::debug!(shard, day, blocks = parts.len(), events, "merged blocks");
    }
    Ok(committed)
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
