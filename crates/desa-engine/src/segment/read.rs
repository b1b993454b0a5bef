//! Reading a segment through a read-only memory map.

use std::path::{Path, PathBuf};

use desa_model::{DoubleDouble, GeoBox, TimeWindow};

use super::kd::{KdNode, KdPoint, KdQuery};
use super::*;
use crate::error::{Error, Result};
use crate::fences::{find_name, DeviceFences};
use crate::head::{NewRow, Rows};
use crate::sections::SectionFile;

/// An open, checksum-verified segment.
pub struct Segment {
    pub meta: SegmentMeta,
    path: PathBuf,
    file: SectionFile,
    fences: DeviceFences,

    types: usize,
    /// Whether the file has its rows in time order (format version 2).
    time_order: bool,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("meta", &self.meta).finish()
    }
}

/// The checksum a segment file's footer records (CRC-32C of everything
/// before the footer's last 16 bytes), without verifying it; `None` for
/// bytes too short to be a segment.
pub fn checksum_of(file: &[u8]) -> Option<u32> {
    let at = file.len().checked_sub(16)?;
    Some(u32::from_le_bytes(file[at..at + 4].try_into().ok()?))
}

impl Segment {
    /// Maps the file and verifies its checksum and structure.
    pub fn open(path: &Path, id: u64) -> Result<Self> {
        let mut file = SectionFile::open(&[&FORMAT, &FORMAT_V1], path)?;
        let bad = |offset: u64, reason: &str| Error::corrupt(path, offset, reason.to_owned());
        let w = &file.words;
        let (rows, series, types, nodes) =
            (w[0] as usize, w[1] as usize, w[2] as usize, w[3] as usize);
        let (min_ts, max_ts, partition, leaf) = (w[4] as i64, w[5] as i64, w[6] as i64, w[7]);
        if leaf as usize != KD_LEAF_ROWS {
            return Err(bad(
                0,
                &format!("k-d leaf size {leaf} is not {KD_LEAF_ROWS}"),
            ));
        }
        file.check_sizes(
            path,
            &[
                (1, None),
                (4, Some(types + 1)),
                (4, Some(types + 1)),
                (4, Some(types + 1)),
                (1, None),
                (4, Some(series + 1)),
                (4, Some(series + 1)),
                (8, Some(rows)),
                (8, Some(rows)),
                (8, Some(rows + 1)),
                (8, Some(rows + 1)),
                (8, Some(rows)),
                (8, Some(rows)),
                (8, Some(rows + 1)),
                (1, None),
                (4, Some(series)),
                (std::mem::size_of::<KdPoint>(), Some(rows)),
                (std::mem::size_of::<KdNode>(), Some(nodes)),
                (4, Some(types + 1)),
                (4, None),
                (4, None),
            ],
        )?;
        file.check_strings(path, S_TYPES_BLOB, S_TYPES_OFF)?;
        file.check_strings(path, S_DEV_BLOB, S_SERIES_DEV_OFF)?;
        let time_order = file.sections.len() == SECTION_COUNT
            && file.sections[S_TIME_TS].1 == rows * 4
            && file.sections[S_TIME_SERIES].1 == rows * 4;
        let len = file.map.len() as u64;
        let seg = Segment {
            meta: SegmentMeta {
                id,
                partition,
                rows: rows as u64,
                min_ts,
                max_ts,
                bytes: len,
            },
            path: path.to_owned(),
            file,
            fences: DeviceFences::build(&[], |_| ""),

            types,
            time_order,
        };
        if let Some(reason) = seg.inconsistency(rows, series, nodes) {
            return Err(bad(0, reason));
        }
        let mut seg = seg;
        seg.fences = DeviceFences::build(seg.u32s(S_TYPE_SERIES), |s| seg.series_device(s));
        // Building the fences read every device name: drop those pages, or
        // opening a node's files would make them all resident at once.
        seg.file.release_memory();
        Ok(seg)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's checksum, as verified by [`open`](Self::open).
    pub fn checksum(&self) -> u32 {
        checksum_of(&self.file.map).unwrap_or(0)
    }

    fn bytes(&self, s: usize) -> &[u8] {
        self.file.bytes(s)
    }
    fn u32s(&self, s: usize) -> &[u32] {
        bytemuck::cast_slice(self.bytes(s))
    }
    fn u64s(&self, s: usize) -> &[u64] {
        bytemuck::cast_slice(self.bytes(s))
    }
    fn i64s(&self, s: usize) -> &[i64] {
        bytemuck::cast_slice(self.bytes(s))
    }
    fn f64s(&self, s: usize) -> &[f64] {
        bytemuck::cast_slice(self.bytes(s))
    }
    fn blob_str(&self, blob: usize, offsets: usize, i: usize) -> &str {
        self.file.str_at(blob, offsets, i)
    }

    /// True when every row lies inside the window.
    pub fn within(&self, w: TimeWindow) -> bool {
        self.meta.rows > 0 && self.meta.min_ts >= w.start && self.meta.max_ts < w.end
    }

    /// True when some row may lie inside the window.
    /// What makes the sections disagree with each other, if anything: every
    /// index a query follows is checked here once, so that a file whose
    /// checksum holds but whose contents do not (a bug, a crafted file) is
    /// refused as corrupt instead of making a query panic.
    fn inconsistency(&self, rows: usize, series: usize, nodes: usize) -> Option<&'static str> {
        let types = self.types;
        let type_series = self.u32s(S_TYPE_SERIES);
        let type_rows = self.u32s(S_TYPE_ROWS);
        let type_nodes = self.u32s(S_TYPE_NODES);
        use crate::sections::ascending_to;
        if !ascending_to(type_series, series)
            || !ascending_to(type_rows, rows)
            || !ascending_to(self.u32s(S_SERIES_ROW), rows)
            || !ascending_to(type_nodes, nodes)
        {
            return Some("offsets out of order or not ending at their section's count");
        }
        for t in 0..types {
            let n = (type_rows[t + 1] - type_rows[t]) as usize;
            if (type_nodes[t + 1] - type_nodes[t]) as usize != super::kd_nodes(n, KD_LEAF_ROWS) {
                return Some("a type's k-d tree does not match its rows");
            }
            let range = type_series[t]..type_series[t + 1];
            let topk = &self.u32s(S_TOPK)[range.start as usize..range.end as usize];
            if topk.iter().any(|s| !range.contains(s)) {
                return Some("a top-K order names a series of another type");
            }
        }
        let meta_off = self.u64s(S_META_OFF);
        if meta_off.windows(2).any(|w| w[0] > w[1])
            || meta_off
                .last()
                .is_some_and(|&e| e as usize > self.bytes(S_META_BLOB).len())
        {
            return Some("metadata offsets out of order or out of bounds");
        }
        if self.time_order
            && self
                .u32s(S_TIME_SERIES)
                .iter()
                .any(|&s| s as usize >= series)
        {
            return Some("the time order names a series that does not exist");
        }
        None
    }

    pub fn overlaps(&self, w: TimeWindow) -> bool {
        self.meta.rows > 0 && self.meta.max_ts >= w.start && self.meta.min_ts < w.end
    }

    pub fn find_type(&self, event_type: &str) -> Option<usize> {
        find_name(self.types, event_type, |i| {
            self.blob_str(S_TYPES_BLOB, S_TYPES_OFF, i)
        })
    }

    /// The series of `device` within type `t`.
    pub fn find_series(&self, t: usize, device: &str) -> Option<usize> {
        self.fences.find(t, self.u32s(S_TYPE_SERIES), device, |s| {
            self.series_device(s)
        })
    }

    pub fn series_device(&self, s: usize) -> &str {
        self.blob_str(S_DEV_BLOB, S_SERIES_DEV_OFF, s)
    }

    pub fn type_count(&self) -> usize {
        self.types
    }

    pub fn type_name(&self, t: usize) -> &str {
        self.blob_str(S_TYPES_BLOB, S_TYPES_OFF, t)
    }

    /// The series of type `t`: `first..end`.
    pub fn type_series(&self, t: usize) -> std::ops::Range<usize> {
        let ts = self.u32s(S_TYPE_SERIES);
        ts[t] as usize..ts[t + 1] as usize
    }

    /// The rows of type `t`: `first..end`.
    pub fn type_rows(&self, t: usize) -> std::ops::Range<usize> {
        let rows = self.u32s(S_TYPE_ROWS);
        rows[t] as usize..rows[t + 1] as usize
    }

    /// The latitude, longitude and value columns, in row order.
    pub fn location_columns(&self) -> (&[f64], &[f64], &[f64]) {
        (self.f64s(S_LAT), self.f64s(S_LON), self.f64s(S_VALUE))
    }

    /// Sum of the values of series `s`, all time.
    pub fn series_sum(&self, s: usize) -> DoubleDouble {
        let r = self.u32s(S_SERIES_ROW);
        let (a, b) = (r[s] as usize, r[s + 1] as usize);
        let (hi, lo) = (self.f64s(S_PREFIX_HI), self.f64s(S_PREFIX_LO));
        DoubleDouble::new(hi[b], lo[b]) - DoubleDouble::new(hi[a], lo[a])
    }

    /// Events in series `s`, all time.
    pub fn series_len(&self, s: usize) -> u64 {
        let r = self.u32s(S_SERIES_ROW);
        (r[s + 1] - r[s]) as u64
    }

    /// Rows of series `s` inside the window: two binary searches.
    fn series_rows_in(&self, s: usize, w: TimeWindow) -> (usize, usize) {
        let r = self.u32s(S_SERIES_ROW);
        let (lo, hi) = (r[s] as usize, r[s + 1] as usize);
        let ts = &self.i64s(S_TS)[lo..hi];
        (
            lo + ts.partition_point(|&t| t < w.start),
            lo + ts.partition_point(|&t| t < w.end),
        )
    }

    /// Count of series `s` inside the window.
    pub fn series_count(&self, s: usize, w: TimeWindow) -> u64 {
        let (a, b) = self.series_rows_in(s, w);
        (b - a) as u64
    }

    /// Count and sum of one device and type in the window.
    pub fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> (u64, DoubleDouble) {
        let Some(s) = self
            .find_type(event_type)
            .and_then(|t| self.find_series(t, device))
        else {
            return (0, DoubleDouble::ZERO);
        };
        let (a, b) = self.series_rows_in(s, w);
        let (hi, lo) = (self.f64s(S_PREFIX_HI), self.f64s(S_PREFIX_LO));
        let sum = DoubleDouble::new(hi[b], lo[b]) - DoubleDouble::new(hi[a], lo[a]);
        ((b - a) as u64, sum)
    }

    /// The series (indices into the segment's series table) of type `t`'s
    /// rows inside the window, in time order: two binary searches, then the
    /// slice. `None` for a file without the time order (format version 1).
    pub fn series_in_window(&self, t: usize, w: TimeWindow) -> Option<&[u32]> {
        if !self.time_order {
            return None;
        }
        let rows = self.type_rows(t);
        let ts = &self.u32s(S_TIME_TS)[rows.clone()];
        let after_min = |x: i64| (x - self.meta.min_ts).clamp(0, 1 << 32);
        let (start, end) = (after_min(w.start), after_min(w.end));
        let a = ts.partition_point(|&s| i64::from(s) < start);
        let b = ts.partition_point(|&s| i64::from(s) < end);
        Some(&self.u32s(S_TIME_SERIES)[rows.start + a..rows.start + b])
    }

    /// The series of type `t`, by event count descending.
    pub fn topk_order(&self, t: usize) -> &[u32] {
        let ts = self.u32s(S_TYPE_SERIES);
        &self.u32s(S_TOPK)[ts[t] as usize..ts[t + 1] as usize]
    }

    /// Count and sum of one type inside the box and window.
    pub fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> (u64, DoubleDouble) {
        let mut count = 0;
        let mut sum = DoubleDouble::ZERO;
        let Some(t) = self.find_type(event_type) else {
            return (count, sum);
        };
        let rows = self.u32s(S_TYPE_ROWS);
        let (lo, hi) = (rows[t] as usize, rows[t + 1] as usize);
        let node_off = self.u32s(S_TYPE_NODES);
        let nodes: &[KdNode] = &bytemuck::cast_slice::<u8, KdNode>(self.bytes(S_KD_NODES))
            [node_off[t] as usize..node_off[t + 1] as usize];
        let depth_max = kd_depth(hi - lo, KD_LEAF_ROWS);
        for (min_lon, max_lon) in bbox.lon_ranges() {
            let q = KdQuery {
                min_lat: bbox.min_lat,
                max_lat: bbox.max_lat,
                min_lon,
                max_lon,
                start: w.start,
                end: w.end,
            };
            if hi > lo {
                self.kd_visit(nodes, &q, 0, lo, hi, 0, depth_max, &mut count, &mut sum);
            }
        }
        (count, sum)
    }

    #[allow(clippy::too_many_arguments)]
    fn kd_visit(
        &self,
        nodes: &[KdNode],
        q: &KdQuery,
        i: usize,
        lo: usize,
        hi: usize,
        depth: u32,
        depth_max: u32,
        count: &mut u64,
        sum: &mut DoubleDouble,
    ) {
        if lo >= hi || q.disjoint(&nodes[i]) {
            return;
        }
        if q.covers(&nodes[i]) {
            *count += (hi - lo) as u64;
            *sum = *sum + DoubleDouble::new(nodes[i].sum_hi, nodes[i].sum_lo);
            return;
        }
        if depth == depth_max {
            let points: &[KdPoint] = bytemuck::cast_slice(self.bytes(S_KD_POINTS));
            for p in &points[lo..hi] {
                if q.contains(p.lat, p.lon, p.ts) {
                    *count += 1;
                    *sum = sum.add_f64(p.value);
                }
            }
            return;
        }
        let mid = lo + (hi - lo) / 2;
        self.kd_visit(
            nodes,
            q,
            2 * i + 1,
            lo,
            mid,
            depth + 1,
            depth_max,
            count,
            sum,
        );
        self.kd_visit(
            nodes,
            q,
            2 * i + 2,
            mid,
            hi,
            depth + 1,
            depth_max,
            count,
            sum,
        );
    }

    /// Appends every event of the segment to `rows` (for compaction).
    pub fn append_to(&self, rows: &mut Rows) {
        let (ts, value, lat, lon) = (
            self.i64s(S_TS),
            self.f64s(S_VALUE),
            self.f64s(S_LAT),
            self.f64s(S_LON),
        );
        let meta_off = self.u64s(S_META_OFF);
        let meta = self.bytes(S_META_BLOB);
        let type_series = self.u32s(S_TYPE_SERIES);
        let series_row = self.u32s(S_SERIES_ROW);
        for t in 0..self.types {
            let ty = self.blob_str(S_TYPES_BLOB, S_TYPES_OFF, t);
            let type_id = rows.types.intern(ty);
            for s in type_series[t] as usize..type_series[t + 1] as usize {
                let dev = self.series_device(s);
                let device_id = rows.devices.intern(dev);
                for r in series_row[s] as usize..series_row[s + 1] as usize {
                    let m = &meta[meta_off[r] as usize..meta_off[r + 1] as usize];
                    let m = (!m.is_empty()).then(|| std::str::from_utf8(m).unwrap_or("{}"));
                    rows.push_interned(
                        type_id,
                        device_id,
                        NewRow {
                            event_type: ty,
                            device: dev,
                            ts: ts[r],
                            value: value[r],
                            lat: lat[r],
                            lon: lon[r],
                            meta: m,
                        },
                    );
                }
            }
        }
    }

    /// The mapped file (use time, releasing its pages).
    pub(crate) fn mapped(&self) -> &SectionFile {
        &self.file
    }

    pub fn touch(&self) {
        self.file.touch()
    }

    pub fn release_memory(&self) {
        self.file.release_memory()
    }
}
