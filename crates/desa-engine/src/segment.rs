//! Immutable segments: the events of one flush or compaction, for one UTC day
//! (the segment's *partition*) or, for days too sparse to have files of
//! their own, for several (its partition is then the first), laid out so
//! that each query reads a handful of bytes per segment whatever the number
//! of events in it.
//!
//! # Layout
//! Rows are sorted by (type, device, timestamp). Per segment:
//! - **avg**: the series table (one entry per (type, device), with its first
//!   row), the timestamps and values, and double-double prefix sums of
//!   `value` at every [`packed::BLOCK`]th row. A window of one series is two
//!   binary searches on its timestamps and the difference of two sums, each
//!   a stored prefix plus fewer than a block of values.
//! - **top-K**: per type, the series ordered by event count descending, the
//!   sorted access of the threshold algorithm (see `query::topk`); and per
//!   type its rows' timestamps in time order with the series of each, so that
//!   a window cutting the segment finds its rows by two binary searches and
//!   counts them per series exactly.
//! - **geo**: per type, the rows' locations in the order of an implicit k-d
//!   tree (leaf size [`KD_LEAF_ROWS`]; see `kd` for the split order), with
//!   the row of each point for its timestamp and value, and per node its
//!   bounding box (rounded outwards) and double-double sum of values. A node
//!   wholly inside the query box and window contributes `hi - lo` events and
//!   its sum without its rows being read; only nodes cut by an edge descend.
//!
//! Every per-row column is packed (`crate::packed`): O(1) access to any
//! value, in a few bits per value; metadata, read only by compaction, goes
//! through zstd.
//!
//! # File format (version 5, little-endian)
//! The container of `crate::sections` with magic "DESASEG1" / "DESASEGF",
//! the SECTION_COUNT sections in the order of the S_* constants below (each
//! says what it holds in each version) and nine footer words: rows,
//! series, types, nodes, min_ts, max_ts, partition, leaf_rows, devices.
//! Version 5 front-codes the device names (`names::FrontCoded`); version 4
//! stores them whole, one after the other. Version 3 kept a copy of each series' device name (one per type the
//! device reports) instead of the dictionary, and eight words. Version 2
//! held fixed-width columns, a k-d copy of whole points and 64-byte nodes
//! over 32-row leaves; version 1 is version 2 without the two time-order
//! sections, and its top-K falls back to all-time counts for a window that
//! cuts it. All are still read; merges write version 5.
//! A segment is written whole, fsynced, and only then named in the manifest;
//! a file the manifest does not name (a crash's leftover, or a file copied
//! in) is moved to `orphans/` on open, never deleted. A checksum mismatch, or
//! sections that disagree with each other, is reported as corruption, never
//! served.

mod build;
mod kd;
mod read;

#[cfg(doc)]
use crate::packed;

pub(crate) use build::build_segment;
pub use build::write_segment;
pub(crate) use kd::{f32_at_least, f32_at_most};
pub use kd::{CompactNode, KdNode, KdPoint};
pub use read::checksum_of;
pub use read::Segment;

/// Rows per k-d tree leaf.
pub const KD_LEAF_ROWS: usize = 64;

/// Rows per k-d leaf in format versions 1 and 2.
pub(crate) const KD_LEAF_ROWS_V2: usize = 32;

pub(crate) const S_TYPES_BLOB: usize = 0;
pub(crate) const S_TYPES_OFF: usize = 1; // u32 x (types + 1)
pub(crate) const S_TYPE_SERIES: usize = 2; // u32 x (types + 1)
pub(crate) const S_TYPE_ROWS: usize = 3; // u32 x (types + 1)
/// v4: the file's distinct devices, sorted (`crate::names`), from v5
/// front-coded (`names::FrontCoded`); before v4: each series' device, in
/// series order.
pub(crate) const S_DEV_BLOB: usize = 4;
/// Offsets into [`S_DEV_BLOB`]: v5 packed ints x (blocks of names + 1), v4
/// packed ints x (devices + 1), before u32 x (series + 1).
pub(crate) const S_SERIES_DEV_OFF: usize = 5;
/// Each series' first row: v4 packed ints x (series + 1), before u32.
pub(crate) const S_SERIES_ROW: usize = 6;
pub(crate) const S_TS: usize = 7; // packed ints x rows (v2: i64 x rows)
pub(crate) const S_VALUE: usize = 8; // packed floats x rows (v2: f64 x rows)
/// Double-double prefix sums of `value`: v3 at every [`packed::BLOCK`]th row
/// and the last (f64 x (blocks + 1)); v2 at every row (f64 x (rows + 1)).
pub(crate) const S_PREFIX_HI: usize = 9;
pub(crate) const S_PREFIX_LO: usize = 10;
/// v2: f64 x rows each; empty in v3, which keeps locations in k-d order
/// only ([`S_KD_LAT`], [`S_KD_LON`]) and finds a row's by [`S_KD_ROW`].
pub(crate) const S_LAT: usize = 11;
pub(crate) const S_LON: usize = 12;
/// v3: zstd of each row's metadata length plus one (0: none), LEB128;
/// v2: u64 x (rows + 1) offsets into the blob (an empty range: none).
pub(crate) const S_META_OFF: usize = 13;
/// v3: zstd of the rows' metadata, one after the other; v2: the same, raw.
pub(crate) const S_META_BLOB: usize = 14;
pub(crate) const S_TOPK: usize = 15; // u32 x series
/// v3: the k-d order's latitudes (packed floats x rows); v2: KdPoint x rows.
pub(crate) const S_KD_POINTS: usize = 16;
pub(crate) const S_KD_LAT: usize = S_KD_POINTS;
/// v3: CompactNode x nodes; v2: KdNode x nodes.
pub(crate) const S_KD_NODES: usize = 17;
pub(crate) const S_TYPE_NODES: usize = 18; // u32 x (types + 1)
/// Per type, its rows' timestamps in time order: v3 packed ints x rows; v2
/// as seconds after `min_ts`, u32 x rows, or empty if they did not fit.
pub(crate) const S_TIME_TS: usize = 19;
/// The series of each row of [`S_TIME_TS`], in the same order: v3 packed
/// ints x rows, v2 u32 x rows (or empty).
pub(crate) const S_TIME_SERIES: usize = 20;
/// v3: the k-d order's longitudes (packed floats x rows).
pub(crate) const S_KD_LON: usize = 21;
/// v3: the row of each point of the k-d order (packed ints x rows), whose
/// timestamp and value the row-order columns hold.
pub(crate) const S_KD_ROW: usize = 22;
/// v4: each series' device, as its index in [`S_DEV_BLOB`] (packed ints x
/// series; ascending within a type).
pub(crate) const S_SERIES_DEV: usize = 23;
pub(crate) const SECTION_COUNT: usize = 24;

pub(crate) static FORMAT: crate::sections::Format = crate::sections::Format {
    header: b"DESASEG1",
    footer: b"DESASEGF",
    version: 5,
    sections: SECTION_COUNT,
    words: 9,
};

/// Version 5 with the device names stored whole. Read, never written.
pub(crate) static FORMAT_V4: crate::sections::Format = crate::sections::Format {
    header: b"DESASEG1",
    footer: b"DESASEGF",
    version: 4,
    sections: SECTION_COUNT,
    words: 9,
};

/// Version 4 less the device dictionary: each series holds its device's
/// name, and its first row as a u32. Read, never written.
pub(crate) static FORMAT_V3: crate::sections::Format = crate::sections::Format {
    header: b"DESASEG1",
    footer: b"DESASEGF",
    version: 3,
    sections: S_SERIES_DEV,
    words: 8,
};

/// Fixed-width columns and a k-d copy of whole points: read, never written.
pub(crate) static FORMAT_V2: crate::sections::Format = crate::sections::Format {
    header: b"DESASEG1",
    footer: b"DESASEGF",
    version: 2,
    sections: S_KD_LON,
    words: 8,
};

/// The format before the time-order sections: read, never written.
pub(crate) static FORMAT_V1: crate::sections::Format = crate::sections::Format {
    header: b"DESASEG1",
    footer: b"DESASEGF",
    version: 1,
    sections: S_TIME_TS,
    words: 8,
};

/// What the manifest records about a segment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    /// UTC day number (`ts / 86400`) all rows fall in.
    pub partition: i64,
    pub rows: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub bytes: u64,
}

impl SegmentMeta {
    pub fn file_name(id: u64) -> String {
        format!("{id:012}.seg")
    }

    /// The UTC day all rows fall in, or `None` for a segment that spans
    /// several days (sparse days pooled by a flush, see `engine::flush`),
    /// which summaries never hold and queries always read.
    pub fn single_day(&self) -> Option<i64> {
        let (first, last) = (
            self.min_ts.div_euclid(86_400),
            self.max_ts.div_euclid(86_400),
        );
        (self.rows == 0 || first == last).then_some(self.partition)
    }
}

/// Number of levels below the root of the k-d tree over `n` rows.
pub(crate) fn kd_depth(n: usize, leaf: usize) -> u32 {
    let mut d = 0;
    while n.div_ceil(1 << d) > leaf {
        d += 1;
    }
    d
}

/// Nodes of the k-d tree over `n` rows (heap layout).
pub(crate) fn kd_nodes(n: usize, leaf: usize) -> usize {
    if n == 0 {
        0
    } else {
        (1usize << (kd_depth(n, leaf) + 1)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{NewRow, Rows};
    use crate::sections::Verify;
    use desa_model::{GeoBox, TimeWindow};

    /// A segment of 300 rows of type "t" from three devices, at `path`.
    fn small_segment(path: &std::path::Path) {
        let mut rows = Rows::default();
        for i in 0..300 {
            rows.push(NewRow {
                event_type: "t",
                device: ["a", "b", "c"][i % 3],
                ts: 86_400 * 20_000 + i as i64,
                value: i as f64,
                lat: (i % 90) as f64,
                lon: (i % 180) as f64,
                meta: None,
            });
        }
        let all: Vec<u32> = (0..300).collect();
        write_segment(&rows, &all, 20_000, 1, path).unwrap();
    }

    /// Sets the smallest value of the first block of the packed section
    /// `section` to `value`, and the checksum to match: a crafted file.
    fn craft(path: &std::path::Path, section: usize, value: i64) {
        let at = crate::sections::SectionFile::open(&[&FORMAT], path, Verify::Now)
            .unwrap()
            .sections[section]
            .0;
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
        let crc_at = bytes.len() - 16;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(path, &bytes).unwrap();
    }

    /// Sets byte `offset` of the section `section` to `value`, and the
    /// checksum to match.
    fn craft_byte(path: &std::path::Path, section: usize, offset: usize, value: u8) {
        let at = crate::sections::SectionFile::open(&[&FORMAT], path, Verify::Now)
            .unwrap()
            .sections[section]
            .0;
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at + offset] = value;
        let crc_at = bytes.len() - 16;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(path, &bytes).unwrap();
    }

    /// Every query kind over the crafted segment: none may panic.
    fn ask_everything(seg: &Segment) {
        let all_time = TimeWindow::new(0, i64::MAX).unwrap();
        let world = GeoBox::new(-90.0, 90.0, -180.0, 180.0).unwrap();
        let part = GeoBox::new(10.0, 20.0, 10.0, 20.0).unwrap();
        for b in [&world, &part] {
            let _ = seg.geo("t", b, all_time);
        }
        for d in ["a", "b", "c", "z"] {
            let _ = seg.avg(d, "t", all_time);
        }
        for s in 0..3 {
            let _ = (seg.series_device(s), seg.series_len(s), seg.series_sum(s));
        }
    }

    /// A file whose checksum holds but whose k-d order names rows that do
    /// not exist (a crafted file) opens, answers geo queries without
    /// panicking, and is refused as corrupt when compaction reads it.
    #[test]
    fn k_d_rows_past_the_end_are_bounded_and_refused_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.seg");
        small_segment(&path);
        // The first block's smallest row, far past the last.
        craft(&path, S_KD_ROW, 1 << 40);
        let seg = Segment::open(&path, 1).unwrap();
        ask_everything(&seg);
        let err = seg.append_to(&mut Rows::default()).unwrap_err();
        assert!(matches!(err, crate::Error::Corrupt { .. }), "{err}");
    }

    /// The same for a series' first row and a series' device past the end
    /// (format 4 does not read every series when it opens a file): bounded
    /// where read, refused by compaction and by `verify_indexes` (fsck).
    #[test]
    fn series_indexes_past_the_end_are_bounded_and_refused_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        for (i, section) in [S_SERIES_ROW, S_SERIES_DEV].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.seg"));
            small_segment(&path);
            craft(&path, section, 1 << 40);
            let seg = Segment::open(&path, 1).unwrap();
            ask_everything(&seg);
            let err = seg.verify_indexes().unwrap_err();
            assert!(matches!(err, crate::Error::Corrupt { .. }), "{err}");
            let err = seg.append_to(&mut Rows::default()).unwrap_err();
            assert!(matches!(err, crate::Error::Corrupt { .. }), "{err}");
        }
    }

    /// Front-coded names out of order, sharing more than the name before
    /// has, or not UTF-8 (crafted, checksum holding): the file opens (its
    /// names are not all read then), no query panics, and compaction and
    /// `verify_indexes` (fsck) refuse it.
    #[test]
    fn malformed_names_are_refused_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        // The names "a", "b", "c": [1, 'a'], then [0, 1, 'b'], [0, 1, 'c'].
        for (i, (offset, value)) in [(7, b'a'), (2, 9), (4, 0xFF)].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.seg"));
            small_segment(&path);
            craft_byte(&path, S_DEV_BLOB, offset, value);
            let seg = Segment::open(&path, 1).unwrap();
            ask_everything(&seg);
            let err = seg.verify_indexes().unwrap_err();
            assert!(matches!(err, crate::Error::Corrupt { .. }), "{i}: {err}");
            let err = seg.append_to(&mut Rows::default()).unwrap_err();
            assert!(matches!(err, crate::Error::Corrupt { .. }), "{i}: {err}");
        }
    }
}
