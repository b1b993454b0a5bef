//! Replacing blocks, the one transaction merges (`compact`) and retention
//! (`expire`) share: delete some blocks, catalog rows and bodies, and add
//! the blocks built from them. It commits only if it deletes every block it
//! names: another worker's merge or expiry may have replaced one first, and
//! then nothing changes.

use std::sync::Arc;

use desa_engine::segment::Segment;
use postgres::{Client, Transaction};

use crate::blocks::{Blocks, NewBlock};
use crate::error::Result;
use crate::write::{discard, insert_blocks};

/// Replaces `gone` by `built` in one transaction that also runs `also`;
/// true if it committed (the worker's copy then holds `built`), false if a
/// block of `gone` was already gone. `built`'s files are removed unless
/// they were committed.
pub(crate) fn replace_blocks(
    blocks: &Blocks,
    c: &mut Client,
    gone: &[&Arc<Segment>],
    built: Vec<NewBlock>,
    also: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<(), postgres::Error>,
) -> Result<bool> {
    let ids: Vec<i64> = gone.iter().map(|s| s.meta.id as i64).collect();
    let mut days: Vec<i32> = gone.iter().map(|s| s.meta.partition as i32).collect();
    days.sort_unstable();
    days.dedup();
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
        also(&mut tx)?;
        let new_ids = insert_blocks(&mut tx, &built)?;
        tx.commit()?;
        Ok(Some(new_ids))
    })();
    match committed {
        Ok(Some(new_ids)) => {
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
