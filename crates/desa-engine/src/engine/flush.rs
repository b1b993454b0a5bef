//! The flusher thread: frozen heads to segments, then compaction, a step at
//! a time, and the memory budget between steps.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::change::change_manifest;
use super::expire::expire_once;
use super::memory::{enforce_memory_budget, trim_heap};
use super::{maintain, offsets_list, segments_dir, wal_dir, Inner};
use crate::error::{Error, Result};
use crate::segment::{write_segment, Segment, SegmentMeta};
use crate::wal;

/// How often the flusher wakes up when it has nothing to do.
const FLUSHER_IDLE_WAKE: Duration = Duration::from_millis(200);

pub(super) fn flusher_loop(inner: &Inner) {
    loop {
        {
            let mut wake = inner.flush_wake.lock();
            if !*wake {
                inner.flush_cv.wait_for(&mut wake, FLUSHER_IDLE_WAKE);
            }
            *wake = false;
        }
        if inner.poisoned.lock().is_some() {
            // Nothing more is written until a restart; only shutdown is due.
            if inner.shutdown.load(Ordering::SeqCst) {
                return;
            }
            continue;
        }
        let flushed = flush_frozen(inner);
        report_background(inner, "flush", flushed);
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        loop {
            let worked = {
                let _m = inner.maintenance.lock();
                maintain::compact_once(inner)
            };
            trim_heap();
            enforce_memory_budget(inner);
            match worked {
                Ok(true) => {
                    if inner.state.read().frozen.is_empty() {
                        continue;
                    }
                    let flushed = flush_frozen(inner);
                    report_background(inner, "flush", flushed);
                }
                Ok(false) => {
                    report_background(inner, "compaction", Ok(()));
                    break;
                }
                Err(e) => {
                    report_background(inner, "compaction", Err(e));
                    break;
                }
            }
        }
        let expired = {
            let _m = inner.maintenance.lock();
            expire_once(inner)
        };
        report_background(inner, "retention", expired.map(|_| ()));
        trim_heap();
        enforce_memory_budget(inner);
    }
}

/// The segments a frozen head becomes: `(partition, rows)`. A day with at
/// least a 64th of a full head gets a segment of its own; the sparser days
/// (late events scattered over the past, a backfill of one event per day)
/// share one, so that the number of files grows with the events, not with
/// the number of distinct days they fall on.
fn files_of(ts: &[i64], head_max_rows: usize) -> Vec<(i64, Vec<u32>)> {
    let mut by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (r, t) in ts.iter().enumerate() {
        by_day
            .entry(t.div_euclid(86_400))
            .or_default()
            .push(r as u32);
    }
    let dense = (head_max_rows / 64).max(1);
    let mut files = Vec::new();
    let mut sparse: Option<(i64, Vec<u32>)> = None;
    for (day, rows) in by_day {
        if rows.len() >= dense {
            files.push((day, rows));
        } else {
            let pool = sparse.get_or_insert_with(|| (day, Vec::new()));
            pool.1.extend(rows);
        }
    }
    files.extend(sparse);
    files
}

/// After a poisoning error nothing more is written: what is on disk can no
/// longer be known, and a restart recovers from it.
pub(super) fn refuse_if_poisoned(inner: &Inner) -> Result<()> {
    match inner.poisoned.lock().clone() {
        Some(p) => Err(Error::Poisoned(p)),
        None => Ok(()),
    }
}

/// Records how a background task went: an error is logged and kept for
/// `/healthz` (and, for a flush, for the write path) until the task next
/// succeeds; a poisoning error poisons the engine.
pub(super) fn report_background(inner: &Inner, what: &'static str, result: Result<()>) {
    match result {
        Ok(()) => {
            if inner.failing.lock().remove(what).is_some() {
                tracing::info!("{what} succeeded again");
                inner.frozen_cv.notify_all();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            if let Error::Poisoned(p) = &e {
                *inner.poisoned.lock() = Some(p.clone());
            }
            inner.failing.lock().insert(what, e.to_string());
            inner.frozen_cv.notify_all();
        }
    }
}

pub(super) fn flush_frozen(inner: &Inner) -> Result<()> {
    loop {
        refuse_if_poisoned(inner)?;
        let Some((head, wal_next)) = inner
            .state
            .read()
            .frozen
            .front()
            .map(|f| (f.head.clone(), f.wal_next))
        else {
            return Ok(());
        };
        let started = Instant::now();
        let by_day = files_of(&head.rows.ts, inner.cfg.head_max_rows);
        let seg_dir = segments_dir(&inner.cfg.dir);
        let mut manifest = inner.manifest.lock();
        let old_wal_start = manifest.wal_start;
        let new_segments = change_manifest(&mut manifest, &inner.cfg.dir, |next, written| {
            let mut new_segments = Vec::new();
            for (day, subset) in by_day {
                let id = next.next_segment_id;
                next.next_segment_id += 1;
                let path = seg_dir.join(SegmentMeta::file_name(id));
                written.push(path.clone());
                let meta = write_segment(&head.rows, &subset, day, id, &path)?;
                next.segments.push(meta);
                new_segments.push(Arc::new(Segment::open(&path, id)?));
            }
            crate::durable::sync_dir(&seg_dir)?;
            inner.state.read().keys.store_durable(&inner.cfg.dir)?;
            next.wal_start = wal_next;
            // May include positions of the active head too: its events are
            // still in the log from `wal_start`, and replay takes the larger
            // offset.
            next.source_offsets = offsets_list(&inner.state.read().offsets);
            Ok(new_segments)
        })?;
        {
            let mut st = inner.state.write();
            st.frozen.pop_front();
            st.segments.extend(new_segments);
        }
        let wdir = wal_dir(&inner.cfg.dir);
        for n in old_wal_start..wal_next {
            let _ = fs::remove_file(wal::file_path(&wdir, n));
        }
        inner.frozen_cv.notify_all();
        inner.observer.head_flushed(started.elapsed(), head.len());
    }
}
