//! Where a data dir's bytes go, by the part of the format that holds them:
//! so that the cost of each column, index and summary is visible (`desa
//! bench`, `desa fsck --json`).
//!
//! Reads the manifest and the files it names without taking the data dir's
//! lock, so that it can look at the dir of a running node; a file a merge
//! removed meanwhile is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::engine::{segments_dir, wal_dir};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::segment::{self as seg, Segment, SegmentMeta};
use crate::summary::{self as sum, Summary, SummaryMeta};

/// Bytes of each part of the stored data, and the events they hold.
#[derive(Debug, Default, Serialize)]
pub struct Breakdown {
    /// Events in segments.
    pub events: u64,
    /// Bytes by part: "timestamps", "devices", ..., "summaries: k-d trees".
    pub bytes: BTreeMap<&'static str, u64>,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.bytes.values().sum()
    }
}

/// The part of a segment each section belongs to (format version 3 keeps
/// the locations in the k-d order's columns).
fn segment_part(section: usize, version: u32) -> &'static str {
    match section {
        seg::S_KD_LAT | seg::S_KD_LON if version >= 3 => "locations",
        seg::S_TYPES_BLOB | seg::S_TYPES_OFF | seg::S_TYPE_SERIES | seg::S_TYPE_ROWS => "types",
        seg::S_DEV_BLOB | seg::S_SERIES_DEV_OFF | seg::S_SERIES_ROW | seg::S_SERIES_DEV => {
            "devices"
        }
        seg::S_TS => "timestamps",
        seg::S_VALUE => "values",
        seg::S_PREFIX_HI | seg::S_PREFIX_LO => "value prefix sums",
        seg::S_LAT | seg::S_LON => "locations",
        seg::S_META_OFF | seg::S_META_BLOB => "metadata",
        seg::S_TOPK => "device lists",
        seg::S_KD_POINTS | seg::S_KD_LON | seg::S_KD_ROW | seg::S_KD_NODES | seg::S_TYPE_NODES => {
            "k-d trees"
        }
        seg::S_TIME_TS | seg::S_TIME_SERIES => "time order",
        _ => "other",
    }
}

/// The part of a summary each section belongs to.
fn summary_part(section: usize) -> &'static str {
    match section {
        sum::S_POINTS
        | sum::S_TYPE_POINTS
        | sum::S_NODES
        | sum::S_TYPE_NODES
        | sum::S_POINT_LON
        | sum::S_POINT_COUNT
        | sum::S_POINT_SUM_HI
        | sum::S_POINT_SUM_LO => "summaries: k-d trees",
        sum::S_EXTENT_SERIES
        | sum::S_EXTENT_MIN_LAT
        | sum::S_EXTENT_LAT_SPAN
        | sum::S_EXTENT_MIN_LON
        | sum::S_EXTENT_LON_SPAN
        | sum::S_TYPE_EXTENTS => "summaries: device extents",
        sum::S_EXTENT_NODES | sum::S_TYPE_EXTENT_NODES => "summaries: extent trees",
        sum::S_DEV_BLOB | sum::S_SERIES_DEV_OFF | sum::S_SERIES_DEV => "summaries: devices",
        sum::S_COUNT | sum::S_SUM_HI | sum::S_SUM_LO => "summaries: counts and sums",
        sum::S_TOPK => "summaries: device lists",
        _ => "summaries: types",
    }
}

/// The bytes of the live files of the data dir at `dir`, by part.
pub fn storage_breakdown(dir: &Path) -> Result<Breakdown> {
    let mut out = Breakdown::default();
    let Some(manifest) = Manifest::load(dir)? else {
        return Ok(out);
    };
    let seg_dir = segments_dir(dir);
    let gone = |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    for m in &manifest.segments {
        let s = match Segment::open(&seg_dir.join(SegmentMeta::file_name(m.id)), m.id) {
            Ok(s) => s,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        out.events += s.meta.rows;
        let version = s.version();
        add_file(&mut out, s.mapped(), s.meta.bytes, |i| {
            segment_part(i, version)
        });
    }
    for m in &manifest.summaries {
        let path = seg_dir.join(SummaryMeta::file_name(m.id));
        let s = match Summary::open(&path, m.level, m.first_day) {
            Ok(s) => s,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        add_file(&mut out, s.mapped(), m.bytes, summary_part);
    }
    let len = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    *out.bytes.entry("manifest").or_default() += len(&dir.join(manifest::FILE));
    let mut log = 0;
    if let Ok(entries) = fs::read_dir(wal_dir(dir)) {
        log = entries.flatten().map(|e| len(&e.path())).sum();
    }
    *out.bytes.entry("log").or_default() += log;
    Ok(out)
}

fn add_file(
    out: &mut Breakdown,
    file: &crate::sections::SectionFile,
    file_bytes: u64,
    part: impl Fn(usize) -> &'static str,
) {
    let mut in_sections = 0;
    for (i, &(_, len)) in file.sections.iter().enumerate() {
        *out.bytes.entry(part(i)).or_default() += len as u64;
        in_sections += len as u64;
    }
    // Headers, footers and the padding that aligns sections.
    *out.bytes.entry("framing").or_default() += file_bytes.saturating_sub(in_sections);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Engine, EngineConfig, SystemClock, WriteRequest};
    use desa_model::Event;

    #[test]
    fn the_parts_add_up_to_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EngineConfig::new(dir.path());
        cfg.head_max_rows = 500;
        let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
        let events: Vec<Event> = (0..3_000)
            .map(|i| Event {
                device_id: format!("d{}", i % 13),
                ts_secs: 1_767_225_600 + i * 600,
                event_type: "t".into(),
                value: i as f64,
                latitude: 1.0,
                longitude: 2.0,
                metadata: (i % 4 == 0).then(|| Box::from("{\"fw\":\"1.2\"}")),
            })
            .collect();
        engine.write(WriteRequest::events(events)).unwrap();
        engine.settle().unwrap();
        let stats = engine.stats();
        let b = storage_breakdown(dir.path()).unwrap();
        assert_eq!(b.events, 3_000);
        let files: u64 = [
            "timestamps",
            "devices",
            "values",
            "locations",
            "metadata",
            "k-d trees",
            "time order",
            "device lists",
            "types",
            "value prefix sums",
            "framing",
        ]
        .iter()
        .map(|p| b.bytes.get(p).copied().unwrap_or(0))
        .sum::<u64>()
            + b.bytes.get("summaries: k-d trees").copied().unwrap_or(0)
            + b.bytes
                .get("summaries: device extents")
                .copied()
                .unwrap_or(0)
            + [
                "summaries: extent trees",
                "summaries: devices",
                "summaries: counts and sums",
                "summaries: device lists",
                "summaries: types",
            ]
            .iter()
            .map(|p| b.bytes.get(p).copied().unwrap_or(0))
            .sum::<u64>();
        assert_eq!(files, stats.segment_bytes + stats.summary_bytes);
        // Packed: well under the 8 bytes of an i64.
        assert!(b.bytes["timestamps"] < 3_000 * 4, "{:?}", b.bytes);
        assert!(b.bytes["metadata"] > 0 && b.bytes["summaries: k-d trees"] > 0);
    }
}
