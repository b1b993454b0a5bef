//! Reading a summary through a read-only memory map.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use desa_model::{DoubleDouble, GeoBox};

use super::*;
use crate::error::{Error, Result};
use crate::fences::{find_name, DeviceFences};
use crate::names;
use crate::packed::{IdList, Packed};
use crate::sections::{SectionFile, Verify};
use crate::segment::kd_depth;

mod extents;
pub use extents::Cut;

/// How a summary answers geo queries for one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoPart {
    /// From its points (or the type is not in the block).
    Points,
    /// From its device extents and, for the devices the box's edge cuts,
    /// the segments it covers.
    Extents,
    /// Not at all: the segments it covers answer instead.
    Segments,
}

/// An open, checksum-verified summary.
pub struct Summary {
    path: PathBuf,
    file: SectionFile,
    fences: DeviceFences,
    /// The fences of front-coded names (version 5 on; empty before).
    block_fences: names::BlockFences,
    types: usize,
    series: usize,
    points: usize,
    /// Entries of the device dictionary (version 3 on; 0 before).
    devices: usize,
    /// Device extents (version 4 on; 0 before).
    extents: usize,
    /// The file's format version (1 to 5).
    version: u32,
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
        Self::open_with(path, level, first_day, Verify::Now)
    }

    /// [`open`](Self::open), leaving the checksum to
    /// [`verify`](Self::verify) (see `Segment::open_unverified`).
    pub fn open_unverified(path: &Path, level: u32, first_day: i64) -> Result<Summary> {
        Self::open_with(path, level, first_day, Verify::Later)
    }

    /// Verifies the file's checksum, once.
    pub fn verify(&self) -> Result<()> {
        self.file.verify()
    }

    fn open_with(path: &Path, level: u32, first_day: i64, verify: Verify) -> Result<Summary> {
        let formats = [&FORMAT, &FORMAT_V4, &FORMAT_V3, &FORMAT_V2, &FORMAT_V1];
        let mut file = SectionFile::open(&formats, path, verify)?;
        let w = &file.words;
        let (types, series, points, nodes) =
            (w[0] as usize, w[1] as usize, w[2] as usize, w[3] as usize);
        let (file_level, file_day, leaf) = (w[4] as u32, w[5] as i64, w[7]);
        let devices = w.get(8).map_or(0, |&d| d as usize);
        let (extents, extent_nodes) = (
            w.get(9).map_or(0, |&e| e as usize),
            w.get(10).map_or(0, |&n| n as usize),
        );
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
        let version = file.version;
        let fixed = |width: usize, count: usize| (width, Some(count));
        let packed = (1, None);
        let v1 = version == 1;
        let v3 = version >= 3;
        file.check_sizes(
            path,
            &[
                (1, None),
                (4, Some(types + 1)),
                (4, Some(types + 1)),
                (1, None),
                if v3 { packed } else { (4, Some(series + 1)) },
                if v1 { fixed(8, series) } else { packed },
                if v1 { fixed(8, series) } else { packed },
                if v1 { fixed(8, series) } else { packed },
                if v1 { fixed(4, series) } else { packed },
                if v1 {
                    fixed(std::mem::size_of::<GeoPoint>(), points)
                } else {
                    packed
                },
                (4, Some(types + 1)),
                if v1 {
                    fixed(std::mem::size_of::<GeoNode>(), nodes)
                } else {
                    fixed(std::mem::size_of::<CompactGeoNode>(), nodes)
                },
                (4, Some(types + 1)),
                packed,
                packed,
                packed,
                packed,
                packed,
                packed,
                packed,
                packed,
                packed,
                packed,
                (4, Some(types + 1)),
                fixed(std::mem::size_of::<CompactGeoNode>(), extent_nodes),
                (4, Some(types + 1)),
            ],
        )?;
        let columns = [
            (S_COUNT, series, false),
            (S_SUM_HI, series, true),
            (S_SUM_LO, series, true),
            (S_TOPK, series, false),
            (S_POINTS, points, true),
            (S_POINT_LON, points, true),
            (S_POINT_COUNT, points, false),
            (S_POINT_SUM_HI, points, true),
            (S_POINT_SUM_LO, points, true),
        ];
        let v3_columns = [(S_SERIES_DEV, series, false)];
        let v4_columns = [
            S_EXTENT_SERIES,
            S_EXTENT_MIN_LAT,
            S_EXTENT_LAT_SPAN,
            S_EXTENT_MIN_LON,
            S_EXTENT_LON_SPAN,
        ]
        .map(|s| (s, extents, false));
        let columns = columns.into_iter().filter(|_| !v1);
        let later = v3_columns.into_iter().filter(|_| v3);
        let v4 = version >= 4;
        for (s, len, floats) in columns.chain(later.chain(v4_columns.into_iter().filter(|_| v4))) {
            if Packed::new(file.bytes(s), len, floats).is_none() {
                let at = file.sections[s].0 as u64;
                return Err(Error::corrupt(
                    path,
                    at,
                    format!("packed column {s} is malformed"),
                ));
            }
        }
        file.check_strings(path, S_TYPES_BLOB, S_TYPES_OFF)?;
        if version >= 5 {
            names::check_name_blocks(&file, path, S_SERIES_DEV_OFF, devices)?;
        } else if v3 {
            file.check_packed_strings(path, S_DEV_BLOB, S_SERIES_DEV_OFF, devices)?;
        } else {
            file.check_strings(path, S_DEV_BLOB, S_SERIES_DEV_OFF)?;
        }
        let mut s = Summary {
            path: path.to_owned(),
            file,
            fences: DeviceFences::build(&[], |_| ""),
            block_fences: names::BlockFences::default(),
            types,
            series,
            points,
            devices,
            extents,
            version,
        };
        if let Some(reason) = s
            .inconsistency(series, points, nodes)
            .or_else(|| s.extents_inconsistency(extent_nodes))
        {
            return Err(Error::corrupt(path, 0, reason));
        }
        // Front-coded names are searched through fences of their own.
        if version >= 5 {
            s.block_fences = s.front_coded().fences();
        }
        s.fences = match version {
            5.. => DeviceFences::build(&[], |_| ""),
            3 | 4 => names::fences(devices, |d| s.device_name(d)),
            _ => DeviceFences::build(s.u32s(S_TYPE_SERIES), |i| s.whole_series_device(i)),
        };
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
            if self.topk_order(t).iter().any(|s| !range.contains(&s)) {
                return Some("a top-K order names a series of another type");
            }
        }
        None
    }

    /// Checks the series' device indexes, which `open` leaves to the reads
    /// that bound them: `desa fsck` refuses a file whose indexes disagree.
    pub fn verify_indexes(&self) -> Result<()> {
        if self.version >= 5 {
            let at = self.file.sections[S_DEV_BLOB].0 as u64;
            names::verify_names(self.front_coded(), &self.path, at)?;
        }
        if self.version >= 3 {
            let index = self.packed(S_SERIES_DEV, self.series);
            if !names::index_is_valid(&index, self.u32s(S_TYPE_SERIES), self.devices) {
                let at = self.file.sections[S_SERIES_DEV].0 as u64;
                let reason = "a series names a device out of order or out of the dictionary";
                return Err(Error::corrupt(&self.path, at, reason.to_owned()));
            }
        }
        if let Some(reason) = self.verify_extents() {
            let at = self.file.sections[S_EXTENT_SERIES].0 as u64;
            return Err(Error::corrupt(&self.path, at, reason.to_owned()));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A packed column of `len` values of a version 2 file (checked by
    /// `open`).
    pub(super) fn packed(&self, s: usize, len: usize) -> Packed<'_> {
        Packed::unchecked(self.file.bytes(s), len)
    }

    pub(super) fn u32s(&self, s: usize) -> &[u32] {
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
        if self.version < 3 {
            return self.fences.find(t, self.u32s(S_TYPE_SERIES), device, |s| {
                self.whole_series_device(s)
            });
        }
        let d = if self.version >= 5 {
            self.front_coded().find(&self.block_fences, device)?
        } else {
            names::find_device(&self.fences, self.devices, device, |d| self.device_name(d))?
        };
        names::series_of(
            &self.packed(S_SERIES_DEV, self.series),
            self.type_series(t),
            d,
        )
    }

    /// The device dictionary of version 5 on.
    fn front_coded(&self) -> names::FrontCoded<'_> {
        let (blob, starts) = (
            self.file.bytes(S_DEV_BLOB),
            self.file.bytes(S_SERIES_DEV_OFF),
        );
        names::FrontCoded::over(blob, starts, self.devices)
    }

    /// Entry `d` of the device dictionary (versions 3 and 4).
    fn device_name(&self, d: usize) -> &str {
        self.file
            .packed_str_at(S_DEV_BLOB, S_SERIES_DEV_OFF, self.devices, d)
    }

    /// The series of type `t`: `first..end`.
    pub fn type_series(&self, t: usize) -> std::ops::Range<usize> {
        let ts = self.u32s(S_TYPE_SERIES);
        ts[t] as usize..ts[t + 1] as usize
    }

    /// The device of series `s`: borrowed from the file up to version 4,
    /// rebuilt from the front-coded names from version 5.
    pub fn series_device(&self, s: usize) -> Cow<'_, str> {
        if self.version >= 5 {
            return Cow::Owned(self.front_coded().name(self.series_device_index(s)));
        }
        Cow::Borrowed(self.whole_series_device(s))
    }

    /// The device dictionary decoded whole, for a pass over every series
    /// (a build); `None` where the names are stored whole (up to version 4).
    pub(crate) fn decoded_devices(&self) -> Option<names::Decoded> {
        (self.version >= 5).then(|| self.front_coded().decode())
    }

    /// Entries of the device dictionary (version 4 on for segments, 3 on
    /// for summaries; 0 before).
    pub(crate) fn device_count(&self) -> usize {
        self.devices
    }

    /// The index in the dictionary of the device of series `s` (version 3
    /// on), bounded here; `verify_indexes` checks them all.
    pub(crate) fn series_device_index(&self, s: usize) -> usize {
        let d = self.packed(S_SERIES_DEV, self.series).int(s) as u64;
        d.min(self.devices.saturating_sub(1) as u64) as usize
    }

    /// [`series_device`](Self::series_device), borrowed from `decoded`
    /// ([`decoded_devices`](Self::decoded_devices)) where the names are
    /// front-coded.
    pub(crate) fn series_device_in<'b>(
        &'b self,
        s: usize,
        decoded: Option<&'b names::Decoded>,
    ) -> &'b str {
        match decoded {
            Some(names) => names.get(self.series_device_index(s)),
            None => self.whole_series_device(s),
        }
    }

    /// [`series_device`](Self::series_device) of a file that stores the
    /// names whole (up to version 4); empty from version 5.
    fn whole_series_device(&self, s: usize) -> &str {
        if self.version >= 5 {
            return "";
        }
        if self.version >= 3 {
            return self.device_name(self.series_device_index(s));
        }
        self.blob_str(S_DEV_BLOB, S_SERIES_DEV_OFF, s)
    }

    /// Events of series `s` in the block.
    pub fn series_count(&self, s: usize) -> u64 {
        match self.version {
            1 => self.u64s(S_COUNT)[s],
            _ => self.packed(S_COUNT, self.series).int(s) as u64,
        }
    }

    pub fn series_sum(&self, s: usize) -> DoubleDouble {
        match self.version {
            1 => DoubleDouble::new(self.f64s(S_SUM_HI)[s], self.f64s(S_SUM_LO)[s]),
            _ => DoubleDouble::new(
                self.packed(S_SUM_HI, self.series).float(s),
                self.packed(S_SUM_LO, self.series).float(s),
            ),
        }
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
    pub fn topk_order(&self, t: usize) -> IdList<'_> {
        let series = self.type_series(t);
        match self.version {
            1 => IdList::Fixed(&self.u32s(S_TOPK)[series]),
            _ => IdList::Packed {
                column: self.packed(S_TOPK, self.series),
                start: series.start,
                len: series.len(),
            },
        }
    }

    /// The points of type `t`: positions in the point columns.
    fn point_range(&self, t: usize) -> std::ops::Range<usize> {
        let off = self.u32s(S_TYPE_POINTS);
        off[t] as usize..off[t + 1] as usize
    }

    /// Point `i` (of all types, in k-d order per type).
    fn point(&self, i: usize) -> GeoPoint {
        if self.version < 2 {
            return bytemuck::cast_slice::<u8, GeoPoint>(self.file.bytes(S_POINTS))[i];
        }
        GeoPoint {
            lat: self.packed(S_POINTS, self.points).float(i),
            lon: self.packed(S_POINT_LON, self.points).float(i),
            count: self.packed(S_POINT_COUNT, self.points).int(i) as u64,
            sum_hi: self.packed(S_POINT_SUM_HI, self.points).float(i),
            sum_lo: self.packed(S_POINT_SUM_LO, self.points).float(i),
        }
    }

    /// Adds up the points at positions `points` (one k-d leaf) inside the
    /// box `q`: their coordinates decoded together, counts and sums only
    /// for those inside.
    fn leaf(&self, q: &[f64; 4], points: std::ops::Range<usize>, acc: &mut (u64, DoubleDouble)) {
        let inside = |lat: f64, lon: f64| lat >= q[0] && lat <= q[1] && lon >= q[2] && lon <= q[3];
        if self.version < 2 || points.len() > GEO_LEAF_POINTS {
            for p in points.map(|i| self.point(i)) {
                if inside(p.lat, p.lon) {
                    acc.0 += p.count;
                    acc.1 = acc.1 + DoubleDouble::new(p.sum_hi, p.sum_lo);
                }
            }
            return;
        }
        let (mut lat, mut lon) = ([0.0; GEO_LEAF_POINTS], [0.0; GEO_LEAF_POINTS]);
        let n = points.len();
        self.packed(S_POINTS, self.points)
            .floats_into(points.start, &mut lat[..n]);
        self.packed(S_POINT_LON, self.points)
            .floats_into(points.start, &mut lon[..n]);
        for (j, i) in points.enumerate() {
            if inside(lat[j], lon[j]) {
                let count = self.packed(S_POINT_COUNT, self.points).int(i) as u64;
                let hi = self.packed(S_POINT_SUM_HI, self.points).float(i);
                let lo = self.packed(S_POINT_SUM_LO, self.points).float(i);
                acc.0 += count;
                acc.1 = acc.1 + DoubleDouble::new(hi, lo);
            }
        }
    }

    /// Appends the points of type `t`, in k-d order, to `out`.
    pub fn points_of(&self, t: usize, out: &mut Vec<GeoPoint>) {
        out.extend(self.point_range(t).map(|i| self.point(i)));
    }

    /// Node `i` (of all types, each type's in heap layout).
    pub(super) fn node(&self, i: usize) -> GeoNode {
        match self.version {
            1 => bytemuck::cast_slice::<u8, GeoNode>(self.file.bytes(S_NODES))[i],
            _ => bytemuck::cast_slice::<u8, CompactGeoNode>(self.file.bytes(S_NODES))[i].widen(),
        }
    }

    /// How the summary answers geo queries for the type (see [`GeoPart`]).
    pub fn geo_part(&self, event_type: &str) -> GeoPart {
        match self.find_type(event_type) {
            None => GeoPart::Points,
            Some(t) if !self.point_range(t).is_empty() => GeoPart::Points,
            Some(t) if self.has_extents(t) => GeoPart::Extents,
            Some(_) => GeoPart::Segments,
        }
    }

    /// Count and sum of one type inside the box, over the whole block; only
    /// for a type it has the points of ([`GeoPart::Points`]).
    pub fn geo(&self, event_type: &str, bbox: &GeoBox) -> (u64, DoubleDouble) {
        let mut acc = (0, DoubleDouble::ZERO);
        let Some(t) = self.find_type(event_type) else {
            return acc;
        };
        let points = self.point_range(t);
        if points.is_empty() {
            return acc;
        }
        let first_node = self.u32s(S_TYPE_NODES)[t] as usize;
        let depth_max = kd_depth(points.len(), GEO_LEAF_POINTS);
        for (min_lon, max_lon) in bbox.lon_ranges() {
            let visit = Visit {
                sum: self,
                q: [bbox.min_lat, bbox.max_lat, min_lon, max_lon],
                first_node,
                depth_max,
            };
            visit.node(0, points.clone(), 0, &mut acc);
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

/// One walk of a type's k-d tree for one box
/// `q = [min_lat, max_lat, min_lon, max_lon]` (inclusive).
struct Visit<'s> {
    sum: &'s Summary,
    q: [f64; 4],
    first_node: usize,
    depth_max: u32,
}

impl Visit<'_> {
    /// Adds the points under node `i` (heap layout over the positions
    /// `points`) that lie in the box.
    fn node(
        &self,
        i: usize,
        points: std::ops::Range<usize>,
        depth: u32,
        acc: &mut (u64, DoubleDouble),
    ) {
        if points.is_empty() {
            return;
        }
        let q = &self.q;
        let n = self.sum.node(self.first_node + i);
        if n.max_lat < q[0] || n.min_lat > q[1] || n.max_lon < q[2] || n.min_lon > q[3] {
            return;
        }
        if n.min_lat >= q[0] && n.max_lat <= q[1] && n.min_lon >= q[2] && n.max_lon <= q[3] {
            acc.0 += n.count;
            acc.1 = acc.1 + DoubleDouble::new(n.sum_hi, n.sum_lo);
            return;
        }
        if depth == self.depth_max {
            self.sum.leaf(q, points, acc);
            return;
        }
        let mid = points.start + points.len() / 2;
        self.node(2 * i + 1, points.start..mid, depth + 1, acc);
        self.node(2 * i + 2, mid..points.end, depth + 1, acc);
    }
}
