//! Summaries: per-block totals over whole UTC days, so that the full days in
//! the middle of a long window cost O(log days) lookups instead of one probe
//! per segment.
//!
//! A summary covers the *block* of `2^level` days starting at a multiple of
//! `2^level` (2 days, 8, 32, ...: see [`LEVEL_STEP`]) and holds the
//! events of an exact set of segments, its `covers` (recorded in the
//! manifest). Its contents are additive, so a summary is built from any mix
//! of segments and smaller summaries, and refreshed by adding late segments:
//! - **avg**: per (type, device), the count and double-double sum in the
//!   block, sorted by (type, device): one binary search.
//! - **top-K**: per type, the devices by count descending: the sorted access
//!   of the threshold algorithm, with counts that are exact for the block.
//! - **geo**: per type, one point per distinct location with its count and
//!   sum, in an implicit k-d tree over (lat, lon) whose nodes carry count,
//!   sum and bounding box. Sensors report from a fixed place, so a block
//!   holds about one point per device and type however many events it has.
//!   Devices that move give a point per event: a type whose locations fold
//!   less than [`GEO_FOLD_MIN`] events into each point has no points and
//!   keeps instead each device's *extent*, the box of its locations in the
//!   block, in a k-d tree of its own (see [`extents`]). A device whose
//!   extent lies inside the query box counts whole, one outside not at all,
//!   and only the few whose extent the box's edge cuts are read from the
//!   segments the summary covers, in the part of the box their extent
//!   overlaps. A build gathers a type's points a batch at a time and stops
//!   at the first batch that does not fold (`points::gather`), so it never
//!   holds a block's events as points.
//!
//! A window `[start, end)` is answered from the summaries of a greedy
//! cover of its whole days by aligned blocks (at most three blocks of a
//! level at each end), plus every
//! segment not covered by a chosen summary: the partial days at both ends and
//! late events that arrived after a summary was built. Compaction merges
//! only segments covered by the same summaries and rewrites their `covers`,
//! so a summary is never invalidated; a summary with more than
//! `EngineConfig::summary_max_extras` uncovered segments is refreshed.
//!
//! # File format (version 5, little-endian)
//! The container of `crate::sections` with magic "DESASUM1" / "DESASUMF",
//! the sections in the order of the S_* constants below, and footer words:
//! types, series, points, nodes, level, first_day, events, leaf_points,
//! devices, extents, extent nodes. Version 5 front-codes the device names
//! (`names::FrontCoded`); version 4 stores them whole, one after the
//! other. Version 3 is version 4 without extents
//! (a type without points is read from the segments) and nine words.
//! Version 3 stores each device's name once (`crate::names`); version 2
//! kept one per series, and eight words. Versions 2 on pack the per-series
//! and per-point columns (`crate::packed`) and round node boxes outwards to
//! f32; they may leave a type without points. Version 1 (fixed-width
//! columns, points for every type) is still read.

mod build;
pub(crate) mod extents;
mod points;
mod read;

use std::collections::BTreeSet;

pub use build::{write_summary, Input};
pub use read::{Cut, GeoPart, Summary};

/// Smallest block: 2 days. Two-day blocks pay for themselves in top-K: the
/// threshold algorithm's work grows with the square of the number of lists
/// it merges, and the ragged ends of a window would otherwise leave up to
/// three days (a dozen segments) on each side.
pub const MIN_LEVEL: u32 = 1;

/// Largest block read: 2^10 = 1024 days.
pub const MAX_LEVEL: u32 = 10;

/// Levels built: every second one from [`MIN_LEVEL`], blocks of 2, 8, 32,
/// 128 and 512 days. A block holds about one entry per device and type
/// whatever its length, so each level built costs about as much disk as
/// the next, the smallest the most (devices that report rarely are in few
/// small blocks and in every large one). At 10M events of moving devices,
/// summaries at every level took 6.2 bytes per event (0.35 of the
/// segments'), at every second one 3.9 (0.22); a window's ends take up to
/// three blocks of a level where they took one or two. Summaries of the
/// levels in between, written by earlier versions, are retired once no
/// summary is due (`engine::maintain`).
pub const LEVEL_STEP: u32 = 2;

/// The levels a node builds, smallest first.
pub(crate) fn built_levels() -> impl Iterator<Item = u32> {
    (MIN_LEVEL..=MAX_LEVEL).step_by(LEVEL_STEP as usize)
}

/// The length in days of the parts a block of `level` is built from: the
/// blocks of the level built below it, or days.
pub(crate) fn part_days(level: u32) -> i64 {
    if level >= MIN_LEVEL + LEVEL_STEP {
        1 << (level - LEVEL_STEP)
    } else {
        1
    }
}

/// Points per k-d tree leaf.
pub const GEO_LEAF_POINTS: usize = 32;

/// Events a type's points must hold on average for the summary to keep
/// them. Devices that move give a point per event, which kept at every
/// level cost 186 bytes per event in format 1 (`docs/BENCHMARKS.md`,
/// "Storage: segment format 3"); the fixed sensors there fold enough to keep
/// theirs.
pub const GEO_FOLD_MIN: u64 = 2;

pub(crate) const S_TYPES_BLOB: usize = 0;
pub(crate) const S_TYPES_OFF: usize = 1; // u32 x (types + 1)
pub(crate) const S_TYPE_SERIES: usize = 2; // u32 x (types + 1)
/// v3: the file's distinct devices, sorted (`crate::names`), from v5
/// front-coded (`names::FrontCoded`); before v3: each series' device, in
/// series order.
pub(crate) const S_DEV_BLOB: usize = 3;
/// Offsets into [`S_DEV_BLOB`]: v5 packed ints x (blocks of names + 1), v3
/// and v4 packed ints x (devices + 1), before u32 x (series + 1).
pub(crate) const S_SERIES_DEV_OFF: usize = 4;
pub(crate) const S_COUNT: usize = 5; // packed ints x series (v1: u64)
pub(crate) const S_SUM_HI: usize = 6; // packed floats x series (v1: f64)
pub(crate) const S_SUM_LO: usize = 7; // packed floats x series (v1: f64)
pub(crate) const S_TOPK: usize = 8; // u32 x series
/// v2: the points' latitudes, packed floats x points; v1: GeoPoint x points.
pub(crate) const S_POINTS: usize = 9;
pub(crate) const S_TYPE_POINTS: usize = 10; // u32 x (types + 1)
/// v2: CompactGeoNode x nodes; v1: GeoNode x nodes.
pub(crate) const S_NODES: usize = 11;
pub(crate) const S_TYPE_NODES: usize = 12; // u32 x (types + 1)
/// v2: the points' longitudes, counts and sums, packed x points.
pub(crate) const S_POINT_LON: usize = 13;
pub(crate) const S_POINT_COUNT: usize = 14;
pub(crate) const S_POINT_SUM_HI: usize = 15;
pub(crate) const S_POINT_SUM_LO: usize = 16;
/// v3: each series' device, as its index in [`S_DEV_BLOB`] (packed ints x
/// series; ascending within a type).
pub(crate) const S_SERIES_DEV: usize = 17;
/// v4: the device extents of the types without points (`extents`), in k-d
/// order per type: each one's series (packed ints, counted from its type's
/// first), its box on the grid of [`extents::GRID`] (packed ints: least
/// latitude, latitude span, least longitude, longitude span), the extents
/// and k-d nodes (`CompactGeoNode`) of each type.
pub(crate) const S_EXTENT_SERIES: usize = 18;
pub(crate) const S_EXTENT_MIN_LAT: usize = 19;
pub(crate) const S_EXTENT_LAT_SPAN: usize = 20;
pub(crate) const S_EXTENT_MIN_LON: usize = 21;
pub(crate) const S_EXTENT_LON_SPAN: usize = 22;
pub(crate) const S_TYPE_EXTENTS: usize = 23; // u32 x (types + 1)
pub(crate) const S_EXTENT_NODES: usize = 24;
pub(crate) const S_TYPE_EXTENT_NODES: usize = 25; // u32 x (types + 1)
pub(crate) const SECTION_COUNT: usize = 26;

pub(crate) static FORMAT: crate::sections::Format = crate::sections::Format {
    header: b"DESASUM1",
    footer: b"DESASUMF",
    version: 5,
    sections: SECTION_COUNT,
    words: 11,
};

/// Version 5 with the device names stored whole. Read, never written.
pub(crate) static FORMAT_V4: crate::sections::Format = crate::sections::Format {
    header: b"DESASUM1",
    footer: b"DESASUMF",
    version: 4,
    sections: SECTION_COUNT,
    words: 11,
};

/// Version 4 less the device extents. Read, never written.
pub(crate) static FORMAT_V3: crate::sections::Format = crate::sections::Format {
    header: b"DESASUM1",
    footer: b"DESASUMF",
    version: 3,
    sections: S_EXTENT_SERIES,
    words: 9,
};

/// Version 3 less the device dictionary: each series holds its device's
/// name. Read, never written.
pub(crate) static FORMAT_V2: crate::sections::Format = crate::sections::Format {
    header: b"DESASUM1",
    footer: b"DESASUMF",
    version: 2,
    sections: S_SERIES_DEV,
    words: 8,
};

/// Version 1: fixed-width columns, and every type has its points. Read,
/// never written.
pub(crate) static FORMAT_V1: crate::sections::Format = crate::sections::Format {
    header: b"DESASUM1",
    footer: b"DESASUMF",
    version: 1,
    sections: S_POINT_LON,
    words: 8,
};

/// One location of one type in a block.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
    pub count: u64,
    pub sum_hi: f64,
    pub sum_lo: f64,
}

/// Bounding box, count and sum of the points under a k-d node.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq)]
pub struct GeoNode {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
    pub count: u64,
    pub sum_hi: f64,
    pub sum_lo: f64,
}

/// A node as version 2 stores it: the box rounded outwards to f32 (as
/// `segment::CompactNode`), the count and the exact sum.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq)]
pub struct CompactGeoNode {
    pub min_lat: f32,
    pub max_lat: f32,
    pub min_lon: f32,
    pub max_lon: f32,
    pub count: u64,
    pub sum_hi: f64,
    pub sum_lo: f64,
}

impl CompactGeoNode {
    pub fn of(n: &GeoNode) -> CompactGeoNode {
        use crate::segment::{f32_at_least, f32_at_most};
        CompactGeoNode {
            min_lat: f32_at_most(n.min_lat),
            max_lat: f32_at_least(n.max_lat),
            min_lon: f32_at_most(n.min_lon),
            max_lon: f32_at_least(n.max_lon),
            count: n.count,
            sum_hi: n.sum_hi,
            sum_lo: n.sum_lo,
        }
    }

    #[inline]
    pub fn widen(&self) -> GeoNode {
        GeoNode {
            min_lat: f64::from(self.min_lat),
            max_lat: f64::from(self.max_lat),
            min_lon: f64::from(self.min_lon),
            max_lon: f64::from(self.max_lon),
            count: self.count,
            sum_hi: self.sum_hi,
            sum_lo: self.sum_lo,
        }
    }
}

/// What the manifest records about a summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SummaryMeta {
    pub id: u64,
    pub level: u32,
    /// First UTC day of the block, a multiple of `2^level`.
    pub first_day: i64,
    /// Ids of the segments whose events the summary holds, ascending.
    pub covers: Vec<u64>,
    pub events: u64,
    pub bytes: u64,
}

impl SummaryMeta {
    pub fn file_name(id: u64) -> String {
        format!("{id:012}.sum")
    }

    /// The block's days, `[first, end)`.
    pub fn days(&self) -> (i64, i64) {
        (self.first_day, self.first_day + (1 << self.level))
    }

    pub fn covers(&self, segment: u64) -> bool {
        self.covers.binary_search(&segment).is_ok()
    }
}

/// A summary in use: its manifest entry and its open file. The entry's
/// `covers` changes when compaction merges covered segments, the file never.
#[derive(Debug)]
pub struct LiveSummary {
    pub meta: SummaryMeta,
    pub file: std::sync::Arc<Summary>,
}

/// The days of a window that lie wholly inside it: `[first, end)`.
pub(crate) fn whole_days(start: i64, end: i64) -> (i64, i64) {
    const DAY: i64 = 86_400;
    let first = start.div_euclid(DAY) + i64::from(start.rem_euclid(DAY) != 0);
    (first, end.div_euclid(DAY))
}

/// Picks a greedy dyadic cover of the days `[first, end)` from `blocks`, the
/// available `(first_day, level)` pairs: at each day the largest aligned
/// block that fits. Returns the chosen `(level, first_day)`; days left out
/// are read from segments. With every block of the built levels available,
/// at most three blocks of a level are chosen at each end of the window.
///
/// The cost grows with the blocks, never with the window's length: a day
/// with no block to start jumps to the next day that starts one, so a
/// window of 2^63 seconds costs what the stored range costs.
pub(crate) fn cover(first: i64, end: i64, blocks: &BTreeSet<(i64, u32)>) -> Vec<(u32, i64)> {
    let mut chosen = Vec::new();
    let mut day = first;
    while day < end {
        let pick = blocks
            .range((day, MIN_LEVEL)..=(day, MAX_LEVEL))
            .rev()
            .map(|&(_, l)| l)
            .find(|&l| {
                let size = 1i64 << l;
                day.rem_euclid(size) == 0 && day.checked_add(size).is_some_and(|e| e <= end)
            });
        match pick {
            Some(l) => {
                chosen.push((l, day));
                day += 1 << l;
            }
            None => match blocks.range((day + 1, 0)..).next() {
                Some(&(next, _)) => day = next,
                None => break,
            },
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_days_of_windows() {
        assert_eq!(whole_days(0, 86_400), (0, 1));
        assert_eq!(whole_days(1, 86_400), (1, 1));
        assert_eq!(whole_days(86_399, 3 * 86_400 - 1), (1, 2));
        assert_eq!(whole_days(86_400, 86_401), (1, 1));
    }

    /// Every aligned block inside days `[0, days)` but those in `missing`.
    fn blocks(days: i64, missing: &[(u32, i64)]) -> BTreeSet<(i64, u32)> {
        let mut out = BTreeSet::new();
        for l in MIN_LEVEL..=MAX_LEVEL {
            let size = 1i64 << l;
            for d in (0..days).step_by(size as usize) {
                if d + size <= days && !missing.contains(&(l, d)) {
                    out.insert((d, l));
                }
            }
        }
        out
    }

    #[test]
    fn cover_takes_the_largest_aligned_blocks() {
        // days 3..37 with every block available: 3 raw, then 4..8 (level 2),
        // 8..16 (3), 16..32 (4), 32..36 (2), 36 raw.
        let all = blocks(64, &[]);
        assert_eq!(cover(3, 37, &all), vec![(2, 4), (3, 8), (4, 16), (2, 32)]);
        // a missing block falls back to its halves
        let some = blocks(64, &[(4, 16), (3, 24)]);
        assert_eq!(cover(16, 32, &some), vec![(3, 16), (2, 24), (2, 28)]);
        assert!(cover(5, 5, &all).is_empty());
        assert!(cover(0, 64, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn cover_skips_empty_stretches_of_any_length() {
        // two blocks 20,000 days apart, asked for through the end of time:
        // the empty stretches are jumped over, not walked a day at a time.
        let far = BTreeSet::from([(0, 1), (20_000, 4)]);
        assert_eq!(cover(0, i64::MAX / 86_400, &far), vec![(1, 0), (4, 20_000)]);
        assert_eq!(cover(i64::MIN / 86_400, 1, &far), vec![]);
        assert_eq!(cover(1, i64::MAX, &far), vec![(4, 20_000)]);
        assert_eq!(cover(i64::MIN, i64::MAX, &far), vec![(1, 0), (4, 20_000)]);
    }
}
