//! Segments held outside an engine. Cluster mode keeps stored events in the
//! database as blocks, each one segment of one UTC day; every worker keeps a
//! local copy of the blocks and answers the three queries over them with the
//! engine's own algorithms (see `query`), so both deployments give the same
//! exact answers at the same per-segment cost.

use std::path::Path;
use std::sync::Arc;

use desa_model::{DeviceCount, DoubleDouble, Event, GeoBox, TimeWindow};

use crate::error::Result;
use crate::head::{NewRow, Rows};
use crate::query;
use crate::segment::{build_segment, Segment, SegmentMeta};

/// Writes `events`, all in UTC day `day`, as a segment file at `path`
/// without an fsync (the data is durable elsewhere).
pub fn write_events_unsynced(events: &[&Event], day: i64, path: &Path) -> Result<SegmentMeta> {
    let mut rows = Rows::default();
    for e in events {
        rows.push(NewRow::of(e));
    }
    let subset: Vec<u32> = (0..rows.len() as u32).collect();
    build_segment(&rows, &subset, day, 0, path, false)
}

/// Writes the rows of `parts`, segments of one UTC day, as one segment file
/// at `path` without an fsync.
pub fn merge_unsynced(parts: &[Arc<Segment>], path: &Path) -> Result<SegmentMeta> {
    let mut rows = Rows::default();
    for s in parts {
        s.append_to(&mut rows)?;
        s.release_memory();
    }
    let subset: Vec<u32> = (0..rows.len() as u32).collect();
    let day = parts.first().map_or(0, |s| s.meta.partition);
    build_segment(&rows, &subset, day, 0, path, false)
}

/// Writes the events of `seg` at or after `first_kept` as a new segment at
/// `path`, filed under the same day (not fsynced, as [`merge_unsynced`]):
/// retention's rewrite of a block of several days that straddles the first
/// kept second. Returns the new segment's meta and the events left out.
pub fn keep_from_unsynced(
    seg: &Segment,
    first_kept: i64,
    path: &Path,
) -> Result<(SegmentMeta, u64)> {
    let (rows, subset) = kept_rows(seg, first_kept)?;
    let dropped = (rows.len() - subset.len()) as u64;
    let meta = build_segment(&rows, &subset, seg.meta.partition, 0, path, false)?;
    Ok((meta, dropped))
}

/// The rows of `seg`, and the positions of those at or after `first_kept`:
/// what retention keeps of a segment that straddles it.
pub(crate) fn kept_rows(seg: &Segment, first_kept: i64) -> Result<(Rows, Vec<u32>)> {
    let mut rows = Rows::default();
    seg.append_to(&mut rows)?;
    seg.release_memory();
    let subset = (0..rows.len() as u32)
        .filter(|&r| rows.ts[r as usize] >= first_kept)
        .collect();
    Ok((rows, subset))
}

/// A snapshot of segments to query.
#[derive(Debug, Default, Clone)]
pub struct SegmentSet {
    segments: Vec<Arc<Segment>>,
}

impl SegmentSet {
    pub fn new(segments: Vec<Arc<Segment>>) -> Self {
        SegmentSet { segments }
    }

    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.segments
    }

    /// Count and sum of one device's values of one type in the window.
    pub fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> (u64, DoubleDouble) {
        query::avg(
            &query::plan(&self.segments, &[], w, &query::all),
            device,
            event_type,
            w,
        )
    }

    /// Count and sum of one type's values inside the box and the window.
    pub fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> (u64, DoubleDouble) {
        query::geo(
            &query::plan(&self.segments, &[], w, &query::all),
            event_type,
            bbox,
            w,
        )
    }

    /// The stored types of the segments.
    pub fn types(&self) -> desa_model::TypesAnswer {
        let mut out = desa_model::TypesAnswer::default();
        for s in &self.segments {
            out.add(s.type_stats());
        }
        out
    }

    /// The K devices with the most events of the type in the window.
    pub fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> Vec<DeviceCount> {
        let plan = query::plan(&self.segments, &[], w, &query::all);
        query::topk(&[], &Default::default(), &plan, event_type, w, k).0
    }
}
