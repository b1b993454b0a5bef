//! Retention in cluster mode (`--retention`): blocks whose every event lies
//! before the first kept second (`desa_model::first_kept_secs`: the start
//! of the UTC day that holds `now - retention`) are deleted, catalog rows and
//! bodies, in one transaction; a block of sparse days (see `write`) that
//! straddles the first kept second is replaced in the same transaction by
//! one of its kept events, filed under the same day. Workers follow the
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
use crate::write::{discard, insert_blocks};

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
    let mut dropped = 0;
    let mut built = Vec::new();
    for s in old.iter().filter(|s| s.meta.max_ts >= first_kept) {
        let file = blocks.temp_path();
        let made = desa_engine::segment_set::keep_from_unsynced(s, first_kept, &file)
            .map_err(crate::error::Error::from)
            .and_then(|(meta, out)| {
                dropped += out;
                blocks.built(&meta, file.clone())
            });
        match made {
            Ok(b) => built.push(b),
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                discard(built);
                return Err(e);
            }
        }
    }
    dropped += old
        .iter()
        .filter(|s| s.meta.max_ts < first_kept)
        .map(|s| s.meta.rows)
        .sum::<u64>();
    let ids: Vec<i64> = old.iter().map(|s| s.meta.id as i64).collect();
    let days: Vec<i32> = old.iter().map(|s| s.meta.partition as i32).collect();
    let committed = (|| -> Result<Option<Vec<i64>>> {
        let mut tx = c.transaction()?;
        let deleted = tx.execute("DELETE FROM desa_blocks WHERE id = ANY($1)", &[&ids])?;
        if deleted as usize != ids.len() {
            tx.rollback()?;
            return Ok(None);
        }
        tx.execute(
            "DELETE FROM desa_block_bodies WHERE day = ANY($1) AND id = ANY($2)",
            &[&days, &ids],
        )?;
        // Workers drop the blocks wholly before it at their next look.
        tx.execute(
            "INSERT INTO desa_meta (key, value) VALUES ('first_kept', $1)
             ON CONFLICT (key) DO UPDATE
             SET value = GREATEST(desa_meta.value::bigint, EXCLUDED.value::bigint)::text",
            &[&first_kept.to_string()],
        )?;
        let new_ids = insert_blocks(&mut tx, &built)?;
        tx.commit()?;
        Ok(Some(new_ids))
    })();
    match committed {
        Ok(Some(new_ids)) => {
            tracing::info!(
                blocks = ids.len(),
                events = dropped,
                "retention dropped expired events"
            );
            blocks.keep(built, &new_ids)?;
            blocks.sync(c)?;
            Ok(dropped)
        }
        Ok(None) => {
            discard(built);
            Ok(0)
        }
        Err(e) => {
            discard(built);
            Err(e)
        }
    }
}
