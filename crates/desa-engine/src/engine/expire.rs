//! Retention: whole UTC days older than `EngineConfig::retention_secs`
//! behind the clock are dropped, segments and summaries together, in one
//! manifest change.
//!
//! The first kept second is the start of the day that holds `now -
//! retention`: every event before it goes, every event from it stays. A
//! segment wholly before it is dropped; a segment of several days that
//! straddles it is rewritten with its kept rows; a summary whose block
//! starts before it is dropped (a block is never half expired). Queries over
//! expired windows count what remains.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;

use super::change::change_manifest;
use super::flush::refuse_if_poisoned;
use super::{segments_dir, Inner};
use crate::durable::sync_dir;
use crate::error::Result;
use crate::segment::{write_segment, Segment, SegmentMeta};
use crate::segment_set::kept_rows;

const DAY: i64 = 86_400;

pub(super) use desa_model::first_kept_secs;

/// Drops what has expired, if anything has; true if it dropped something.
pub(super) fn expire_once(inner: &Inner) -> Result<bool> {
    let Some(keep_secs) = inner.cfg.retention_secs else {
        return Ok(false);
    };
    refuse_if_poisoned(inner)?;
    let cutoff = first_kept_secs(inner.clock.now_secs(), keep_secs);
    let mut manifest = inner.manifest.lock();
    let (segments, summaries) = {
        let st = inner.state.read();
        (st.segments.clone(), st.summaries.clone())
    };
    let expired: Vec<&Arc<Segment>> = segments
        .iter()
        .filter(|s| s.meta.rows > 0 && s.meta.max_ts < cutoff)
        .collect();
    let straddling: Vec<&Arc<Segment>> = segments
        .iter()
        .filter(|s| s.meta.rows > 0 && s.meta.min_ts < cutoff && s.meta.max_ts >= cutoff)
        .collect();
    let old_summaries: HashSet<u64> = summaries
        .iter()
        .filter(|s| s.meta.first_day * DAY < cutoff)
        .map(|s| s.meta.id)
        .collect();
    if expired.is_empty() && straddling.is_empty() && old_summaries.is_empty() {
        return Ok(false);
    }
    let seg_dir = segments_dir(&inner.cfg.dir);
    let gone: HashSet<u64> = expired
        .iter()
        .chain(&straddling)
        .map(|s| s.meta.id)
        .collect();
    let mut dropped_events = 0u64;
    let kept = change_manifest(&mut manifest, &inner.cfg.dir, |next, written| {
        let mut kept = Vec::new();
        for s in &straddling {
            let (rows, subset) = kept_rows(s, cutoff)?;
            dropped_events += rows.len() as u64 - subset.len() as u64;
            let id = next.next_segment_id;
            next.next_segment_id += 1;
            let path = seg_dir.join(SegmentMeta::file_name(id));
            written.push(path.clone());
            let meta = write_segment(&rows, &subset, cutoff.div_euclid(DAY), id, &path)?;
            next.segments.push(meta);
            kept.push(Arc::new(Segment::open(&path, id)?));
        }
        sync_dir(&seg_dir)?;
        next.segments.retain(|m| !gone.contains(&m.id));
        next.summaries.retain(|m| !old_summaries.contains(&m.id));
        Ok(kept)
    })?;
    dropped_events += expired.iter().map(|s| s.meta.rows).sum::<u64>();
    {
        let mut st = inner.state.write();
        st.segments.retain(|s| !gone.contains(&s.meta.id));
        st.segments.extend(kept);
        st.summaries.retain(|s| !old_summaries.contains(&s.meta.id));
        st.epochs.touch_all();
    }
    drop(manifest);
    for s in expired.iter().chain(&straddling) {
        let _ = fs::remove_file(s.path());
    }
    for s in summaries
        .iter()
        .filter(|s| old_summaries.contains(&s.meta.id))
    {
        let _ = fs::remove_file(s.file.path());
    }
    tracing::info!(
        first_kept_secs = cutoff,
        dropped_events,
        "expired days dropped"
    );
    inner.observer.expired(dropped_events);
    Ok(true)
}
