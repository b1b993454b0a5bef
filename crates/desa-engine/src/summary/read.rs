//! Reading a summary through a read-only memory map.

use std::path::{Path, PathBuf};

use desa_model::{DoubleDouble, GeoBox};

use super::*;
use crate::error::{Error, Result};
use crate::fences::{find_name, DeviceFences};
use crate::sections::SectionFile;
use crate::segment::kd_depth;

/// An open, checksum-verified summary.
pub struct Summary {
    path: PathBuf,
    file: SectionFile,
    fences: DeviceFences,
    types: usize,
}

impl std::fmt::Debug for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summary").field("path", &self.path).finish()
    }
}

impl Summary {
    /// Maps the file and verifies its checksum, its structure, and that it
    /// is the summary of the block (`level`, `first_day`) the caller expects.
    pub fn open(path: &Path, level: u32, first_day: i64) -> Result<Summary> {
        let mut file = SectionFile::open(&[&FORMAT, &FORMAT_V1], path)?;
        let w = &file.words;
        let (types, series, points, nodes) =
            (w[0] as usize, w[1] as usize, w[2] as usize, w[3] as usize);
        let (file_level, file_day, leaf) = (w[4] as u32, w[5] as i64, w[7]);
        if leaf as usize != GEO_LEAF_POINTS {
            return Err(Error::corrupt(
                path,
                0,
                format!("k-d leaf size {leaf} is not {GEO_LEAF_POINTS}"),
            ));
        }
        if (file_level, file_day) != (level, first_day) {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "holds the block of level {file_level} from day {file_day}, \
                     not level {level} from day {first_day}"
                ),
            ));
        }
        file.check_sizes(
            path,
            &[
                (1, None),
                (4, Some(types + 1)),
                (4, Some(types + 1)),
                (1, None),
                (4, Some(series + 1)),
                (8, Some(series)),
                (8, Some(series)),
                (8, Some(series)),
                (4, Some(series)),
                (std::mem::size_of::<GeoPoint>(), Some(points)),
                (4, Some(types + 1)),
                (std::mem::size_of::<GeoNode>(), Some(nodes)),
                (4, Some(types + 1)),
            ],
        )?;
        file.check_strings(path, S_TYPES_BLOB, S_TYPES_OFF)?;
        file.check_strings(path, S_DEV_BLOB, S_SERIES_DEV_OFF)?;
        let mut s = Summary {
            path: path.to_owned(),
            file,
            fences: DeviceFences::build(&[], |_| ""),
            types,
        };
        if let Some(reason) = s.inconsistency(series, points, nodes) {
            return Err(Error::corrupt(path, 0, reason));
        }
        s.fences = DeviceFences::build(s.u32s(S_TYPE_SERIES), |i| s.series_device(i));
        // As for segments: the fences read every device name; drop them.
        s.file.release_memory();
        Ok(s)
    }

    /// What makes the sections disagree with each other, if anything (as
    /// for segments: every index a query follows is checked once, here).
    fn inconsistency(&self, series: usize, points: usize, nodes: usize) -> Option<&'static str> {
        use crate::sections::ascending_to;
        let type_series = self.u32s(S_TYPE_SERIES);
        let type_points = self.u32s(S_TYPE_POINTS);
        let type_nodes = self.u32s(S_TYPE_NODES);
        if !ascending_to(type_series, series)
            || !ascending_to(type_points, points)
            || !ascending_to(type_nodes, nodes)
        {
            return Some("offsets out of order or not ending at their section's count");
        }
        for t in 0..self.types {
            let n = (type_points[t + 1] - type_points[t]) as usize;
            if (type_nodes[t + 1] - type_nodes[t]) as usize
                != crate::segment::kd_nodes(n, GEO_LEAF_POINTS)
            {
                return Some("a type's k-d tree does not match its points");
            }
            let range = type_series[t]..type_series[t + 1];
            let topk = &self.u32s(S_TOPK)[range.start as usize..range.end as usize];
            if topk.iter().any(|s| !range.contains(s)) {
                return Some("a top-K order names a series of another type");
            }
        }
        None
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn u32s(&self, s: usize) -> &[u32] {
        bytemuck::cast_slice(self.file.bytes(s))
    }
    fn f64s(&self, s: usize) -> &[f64] {
        bytemuck::cast_slice(self.file.bytes(s))
    }
    fn u64s(&self, s: usize) -> &[u64] {
        bytemuck::cast_slice(self.file.bytes(s))
    }
    fn blob_str(&self, blob: usize, offsets: usize, i: usize) -> &str {
        self.file.str_at(blob, offsets, i)
    }

    pub fn type_count(&self) -> usize {
        self.types
    }

    pub fn type_name(&self, t: usize) -> &str {
        self.blob_str(S_TYPES_BLOB, S_TYPES_OFF, t)
    }

    pub fn find_type(&self, event_type: &str) -> Option<usize> {
        find_name(self.types, event_type, |i| self.type_name(i))
    }

    pub fn find_series(&self, t: usize, device: &str) -> Option<usize> {
        self.fences.find(t, self.u32s(S_TYPE_SERIES), device, |s| {
            self.series_device(s)
        })
    }

    /// The series of type `t`: `first..end`.
    pub fn type_series(&self, t: usize) -> std::ops::Range<usize> {
        let ts = self.u32s(S_TYPE_SERIES);
        ts[t] as usize..ts[t + 1] as usize
    }

    pub fn series_device(&self, s: usize) -> &str {
        self.blob_str(S_DEV_BLOB, S_SERIES_DEV_OFF, s)
    }

    /// Events of series `s` in the block.
    pub fn series_count(&self, s: usize) -> u64 {
        self.u64s(S_COUNT)[s]
    }

    pub fn series_sum(&self, s: usize) -> DoubleDouble {
        DoubleDouble::new(self.f64s(S_SUM_HI)[s], self.f64s(S_SUM_LO)[s])
    }

    /// Count and sum of one device and type in the block.
    pub fn avg(&self, device: &str, event_type: &str) -> (u64, DoubleDouble) {
        match self
            .find_type(event_type)
            .and_then(|t| self.find_series(t, device))
        {
            Some(s) => (self.series_count(s), self.series_sum(s)),
            None => (0, DoubleDouble::ZERO),
        }
    }

    /// The series of type `t`, by count descending.
    pub fn topk_order(&self, t: usize) -> &[u32] {
        &self.u32s(S_TOPK)[self.type_series(t)]
    }

    /// The points of type `t` in k-d order.
    pub fn points(&self, t: usize) -> &[GeoPoint] {
        let off = self.u32s(S_TYPE_POINTS);
        &bytemuck::cast_slice(self.file.bytes(S_POINTS))[off[t] as usize..off[t + 1] as usize]
    }

    /// Whether the summary answers geo queries for the type: false when it
    /// holds events of the type but no points (see [`GEO_FOLD_MIN`]).
    pub fn has_geo(&self, event_type: &str) -> bool {
        self.find_type(event_type)
            .is_none_or(|t| !self.points(t).is_empty())
    }

    /// Count and sum of one type inside the box, over the whole block; only
    /// for a type it [has the points of](Self::has_geo).
    pub fn geo(&self, event_type: &str, bbox: &GeoBox) -> (u64, DoubleDouble) {
        let mut acc = (0, DoubleDouble::ZERO);
        let Some(t) = self.find_type(event_type) else {
            return acc;
        };
        let points = self.points(t);
        let off = self.u32s(S_TYPE_NODES);
        let nodes: &[GeoNode] =
            &bytemuck::cast_slice(self.file.bytes(S_NODES))[off[t] as usize..off[t + 1] as usize];
        if points.is_empty() {
            return acc;
        }
        let depth_max = kd_depth(points.len(), GEO_LEAF_POINTS);
        for (min_lon, max_lon) in bbox.lon_ranges() {
            let q = [bbox.min_lat, bbox.max_lat, min_lon, max_lon];
            visit(nodes, points, &q, 0, 0, depth_max, &mut acc);
        }
        acc
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

/// Adds the points under node `i` (heap layout over `points`) that lie in
/// the box `q = [min_lat, max_lat, min_lon, max_lon]` (inclusive).
fn visit(
    nodes: &[GeoNode],
    points: &[GeoPoint],
    q: &[f64; 4],
    i: usize,
    depth: u32,
    depth_max: u32,
    acc: &mut (u64, DoubleDouble),
) {
    if points.is_empty() {
        return;
    }
    let n = &nodes[i];
    if n.max_lat < q[0] || n.min_lat > q[1] || n.max_lon < q[2] || n.min_lon > q[3] {
        return;
    }
    if n.min_lat >= q[0] && n.max_lat <= q[1] && n.min_lon >= q[2] && n.max_lon <= q[3] {
        acc.0 += n.count;
        acc.1 = acc.1 + DoubleDouble::new(n.sum_hi, n.sum_lo);
        return;
    }
    if depth == depth_max {
        for p in points {
            if p.lat >= q[0] && p.lat <= q[1] && p.lon >= q[2] && p.lon <= q[3] {
                acc.0 += p.count;
                acc.1 = acc.1 + DoubleDouble::new(p.sum_hi, p.sum_lo);
            }
        }
        return;
    }
    let (left, right) = points.split_at(points.len() / 2);
    visit(nodes, left, q, 2 * i + 1, depth + 1, depth_max, acc);
    visit(nodes, right, q, 2 * i + 2, depth + 1, depth_max, acc);
}
