//! Reading a segment through a read-only memory map.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use desa_model::{DoubleDouble, TimeWindow};

use super::kd::{KdNode, KdPoint};
use super::*;
use crate::error::{Error, Result};
use crate::fences::{find_name, DeviceFences};
use crate::head::{NewRow, Rows};
use crate::names;
use crate::packed::{self, IdList, Packed};
use crate::sections::{SectionFile, Verify};

mod geo;
#[cfg(test)]
mod measure;
mod types;
#[cfg(test)]
mod v1;

/// The most metadata one segment's section may expand to: a segment holds
/// at most a few million rows of at most 64 KiB of metadata each, and the
/// bound keeps a corrupt frame header from asking for more memory.
const MAX_METADATA_BYTES: u64 = 1 << 36;

/// An open, checksum-verified segment.
pub struct Segment {
    pub meta: SegmentMeta,
    path: PathBuf,
    file: SectionFile,
    fences: DeviceFences,
    /// The fences of front-coded names (version 5 on; empty before).
    block_fences: names::BlockFences,

    types: usize,
    /// Entries of the device dictionary (version 4 on; 0 before).
    devices: usize,
    /// The file's format version (1 to 5).
    version: u32,
    /// Rows per k-d leaf.
    leaf: usize,
    /// Whether the file has its rows in time order (format version 2 on).
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
        Self::open_with(path, id, Verify::Now)
    }

    /// Maps the file and verifies its structure, leaving the checksum to
    /// [`verify`](Self::verify): what a node does with its files when it
    /// starts, so that a restart does not read every byte of the data.
    pub fn open_unverified(path: &Path, id: u64) -> Result<Self> {
        Self::open_with(path, id, Verify::Later)
    }

    /// Verifies the file's checksum, once; a query or merge calls it before
    /// it reads the file, and the scrub for every file.
    pub fn verify(&self) -> Result<()> {
        self.file.verify()
    }

    fn open_with(path: &Path, id: u64, verify: Verify) -> Result<Self> {
        let formats = [&FORMAT, &FORMAT_V4, &FORMAT_V3, &FORMAT_V2, &FORMAT_V1];
        let mut file = SectionFile::open(&formats, path, verify)?;
        let version = file.version;
        let bad = |offset: u64, reason: &str| Error::corrupt(path, offset, reason.to_owned());
        let w = &file.words;
        let (rows, series, types, nodes) =
            (w[0] as usize, w[1] as usize, w[2] as usize, w[3] as usize);
        let (min_ts, max_ts, partition, leaf) = (w[4] as i64, w[5] as i64, w[6] as i64, w[7]);
        let devices = w.get(8).map_or(0, |&d| d as usize);
        let v4 = version >= 4;
        let expected_leaf = if version >= 3 {
            KD_LEAF_ROWS
        } else {
            KD_LEAF_ROWS_V2
        };
        if leaf as usize != expected_leaf {
            return Err(bad(
                0,
                &format!("k-d leaf size {leaf} is not {expected_leaf}"),
            ));
        }
        // Each section's (element width, count): version 3's packed columns
        // are checked by `Packed::new` below; version 2's are fixed arrays.
        let v2 = version < 3;
        let either = |fixed: (usize, Option<usize>), v3: (usize, Option<usize>)| {
            if v2 {
                fixed
            } else {
                v3
            }
        };
        let packed = (1, None);
        let blocks = rows.div_ceil(packed::BLOCK);
        let sizes = [
            (1, None),
            (4, Some(types + 1)),
            (4, Some(types + 1)),
            (4, Some(types + 1)),
            (1, None),
            if v4 { packed } else { (4, Some(series + 1)) },
            if v4 { packed } else { (4, Some(series + 1)) },
            either((8, Some(rows)), packed),
            either((8, Some(rows)), packed),
            either((8, Some(rows + 1)), (8, Some(blocks + 1))),
            either((8, Some(rows + 1)), (8, Some(blocks + 1))),
            either((8, Some(rows)), (1, Some(0))),
            either((8, Some(rows)), (1, Some(0))),
            either((8, Some(rows + 1)), packed),
            (1, None),
            either((4, Some(series)), packed),
            either((std::mem::size_of::<KdPoint>(), Some(rows)), packed),
            either(
                (std::mem::size_of::<KdNode>(), Some(nodes)),
                (std::mem::size_of::<CompactNode>(), Some(nodes)),
            ),
            (4, Some(types + 1)),
            either((4, None), packed),
            either((4, None), packed),
            packed,
            packed,
            packed,
        ];
        file.check_sizes(path, &sizes)?;
        let columns = [
            (S_TS, rows, false),
            (S_VALUE, rows, true),
            (S_TOPK, series, false),
            (S_KD_LAT, rows, true),
            (S_TIME_TS, rows, false),
            (S_TIME_SERIES, rows, false),
            (S_KD_LON, rows, true),
            (S_KD_ROW, rows, false),
        ];
        let v4_columns = [
            (S_SERIES_ROW, series + 1, false),
            (S_SERIES_DEV, series, false),
        ];
        let columns = columns.into_iter().filter(|_| !v2);
        for (s, len, floats) in columns.chain(v4_columns.into_iter().filter(|_| v4)) {
            if Packed::new(file.bytes(s), len, floats).is_none() {
                let at = file.sections[s].0 as u64;
                return Err(bad(at, &format!("packed column {s} is malformed")));
            }
        }
        file.check_strings(path, S_TYPES_BLOB, S_TYPES_OFF)?;
        if version >= 5 {
            names::check_name_blocks(&file, path, S_SERIES_DEV_OFF, devices)?;
        } else if v4 {
            file.check_packed_strings(path, S_DEV_BLOB, S_SERIES_DEV_OFF, devices)?;
        } else {
            file.check_strings(path, S_DEV_BLOB, S_SERIES_DEV_OFF)?;
        }
        let time_order = version >= 3
            || (version == 2
                && file.sections[S_TIME_TS].1 == rows * 4
                && file.sections[S_TIME_SERIES].1 == rows * 4);
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
            block_fences: names::BlockFences::default(),

            types,
            devices,
            version,
            leaf: expected_leaf,
            time_order,
        };
        if let Some(reason) = seg.inconsistency(rows, series, nodes) {
            return Err(bad(0, reason));
        }
        let mut seg = seg;
        // Front-coded names are searched through fences of their own.
        if version >= 5 {
            seg.block_fences = seg.front_coded().fences();
        }
        seg.fences = match version {
            5.. => DeviceFences::build(&[], |_| ""),
            4 => names::fences(devices, |d| seg.device_name(d)),
            _ => DeviceFences::build(seg.u32s(S_TYPE_SERIES), |s| seg.whole_series_device(s)),
        };
        // Building the fences read every device name: drop those pages, or
        // opening a node's files would make them all resident at once.
        seg.file.release_memory();
        Ok(seg)
    }

    /// The file's format version.
    pub(crate) fn version(&self) -> u32 {
        self.version
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
    /// A packed per-row column of a version 3 or 4 file (checked by `open`).
    fn packed(&self, s: usize) -> Packed<'_> {
        Packed::unchecked(self.bytes(s), self.meta.rows as usize)
    }

    /// A packed per-series column of a version 4 file (checked by `open`),
    /// of `series + extra` values.
    fn packed_series(&self, s: usize, extra: usize) -> Packed<'_> {
        Packed::unchecked(self.bytes(s), self.file.words[1] as usize + extra)
    }

    /// The first row of series `s` (`s` = series: the row count). In
    /// version 4 bounded by the rows where it is read, as the k-d order's
    /// rows are (`open` does not read every series; `verify_indexes` does).
    fn series_row(&self, s: usize) -> usize {
        match self.version {
            4.. => (self.packed_series(S_SERIES_ROW, 1).int(s) as u64).min(self.meta.rows) as usize,
            _ => self.u32s(S_SERIES_ROW)[s] as usize,
        }
    }

    /// The rows of series `s`: never a reversed range.
    fn series_rows(&self, s: usize) -> (usize, usize) {
        let lo = self.series_row(s);
        (lo, self.series_row(s + 1).max(lo))
    }

    /// The device dictionary of version 5 on.
    fn front_coded(&self) -> names::FrontCoded<'_> {
        names::FrontCoded::over(
            self.bytes(S_DEV_BLOB),
            self.bytes(S_SERIES_DEV_OFF),
            self.devices,
        )
    }

    /// Entry `d` of the device dictionary (version 4).
    fn device_name(&self, d: usize) -> &str {
        self.file
            .packed_str_at(S_DEV_BLOB, S_SERIES_DEV_OFF, self.devices, d)
    }

    /// Timestamp of row `i` (rows in (type, device, time) order).
    fn ts(&self, i: usize) -> i64 {
        match self.version {
            3.. => self.packed(S_TS).int(i),
            _ => self.i64s(S_TS)[i],
        }
    }

    /// The first row in `lo..hi` (one series) at or after `t`.
    fn ts_lower_bound(&self, lo: usize, hi: usize, t: i64) -> usize {
        match self.version {
            3.. => self.packed(S_TS).lower_bound(lo, hi, t),
            _ => lo + self.i64s(S_TS)[lo..hi].partition_point(|&x| x < t),
        }
    }

    fn value(&self, i: usize) -> f64 {
        match self.version {
            3.. => self.packed(S_VALUE).float(i),
            _ => self.f64s(S_VALUE)[i],
        }
    }

    /// The location of every row, in row order (version 3 keeps them in
    /// k-d order only: this inverts it).
    fn locations(&self) -> Result<Vec<(f64, f64)>> {
        let rows = self.meta.rows as usize;
        if self.version < 3 {
            let (lat, lon) = (self.f64s(S_LAT), self.f64s(S_LON));
            return Ok(lat.iter().copied().zip(lon.iter().copied()).collect());
        }
        let (lat, lon, row) = (
            self.packed(S_KD_LAT),
            self.packed(S_KD_LON),
            self.packed(S_KD_ROW),
        );
        let mut out = vec![(0.0, 0.0); rows];
        let mut seen = vec![false; rows];
        for i in 0..rows {
            let r = row.int(i) as u64 as usize;
            match seen.get_mut(r) {
                Some(s) if !*s => *s = true,
                _ => {
                    let at = self.file.sections[S_KD_ROW].0 as u64;
                    let reason = "the k-d order is not a permutation of the rows".to_owned();
                    return Err(Error::corrupt(&self.path, at, reason));
                }
            }
            out[r] = (lat.float(i), lon.float(i));
        }
        Ok(out)
    }

    /// The row of point `i` of the k-d order, bounded by the rows (an index
    /// past them, which only a corrupt file holds, reads the last row).
    #[inline]
    fn kd_row(&self, row: &Packed<'_>, i: usize) -> usize {
        (row.int(i) as u64).min(self.meta.rows.saturating_sub(1)) as usize
    }

    /// Sum of the values of rows `0..i`: a stored prefix sum, plus in
    /// version 3 the values since the last one stored (fewer than
    /// [`packed::BLOCK`]).
    fn prefix(&self, i: usize) -> DoubleDouble {
        let (hi, lo) = (self.f64s(S_PREFIX_HI), self.f64s(S_PREFIX_LO));
        if self.version < 3 {
            return DoubleDouble::new(hi[i], lo[i]);
        }
        let block = i / packed::BLOCK;
        let values = self.packed(S_VALUE);
        let mut acc = DoubleDouble::new(hi[block], lo[block]);
        for r in block * packed::BLOCK..i {
            acc = acc.add_f64(values.float(r));
        }
        acc
    }

    /// Entry `i` of the time order: (timestamp, series).
    fn time_entry(&self, i: usize) -> (i64, u32) {
        match self.version {
            3.. => (
                self.packed(S_TIME_TS).int(i),
                self.packed(S_TIME_SERIES).int(i) as u32,
            ),
            _ => (
                self.meta.min_ts + i64::from(self.u32s(S_TIME_TS)[i]),
                self.u32s(S_TIME_SERIES)[i],
            ),
        }
    }

    /// Checks the per-series and per-row indexes that `open` leaves to
    /// the reads that bound them (each series' first row and device, the
    /// k-d order's rows): compaction and `desa fsck`, which read every one,
    /// refuse a file whose indexes disagree as corrupt.
    pub fn verify_indexes(&self) -> Result<()> {
        self.verify_series()?;
        self.locations().map(|_| ())
    }

    /// The per-series part of [`verify_indexes`](Self::verify_indexes):
    /// version 4's first rows and devices, version 5's names.
    fn verify_series(&self) -> Result<()> {
        let (rows, series) = (self.meta.rows as usize, self.file.words[1] as usize);
        if self.version >= 5 {
            let at = self.file.sections[S_DEV_BLOB].0 as u64;
            names::verify_names(self.front_coded(), &self.path, at)?;
        }
        if self.version >= 4 {
            let first = self.packed_series(S_SERIES_ROW, 1);
            let index = self.packed_series(S_SERIES_DEV, 0);
            let ascending = first.int(0) == 0
                && (0..series).all(|s| first.int(s) <= first.int(s + 1))
                && first.int(series) == rows as i64;
            let reason = if !ascending {
                Some("series' first rows out of order")
            } else if !names::index_is_valid(&index, self.u32s(S_TYPE_SERIES), self.devices) {
                Some("a series names a device out of order or out of the dictionary")
            } else {
                None
            };
            if let Some(reason) = reason {
                let at = self.file.sections[S_SERIES_ROW].0 as u64;
                return Err(Error::corrupt(&self.path, at, reason.to_owned()));
            }
        }
        Ok(())
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
            || (self.version < 4 && !ascending_to(self.u32s(S_SERIES_ROW), rows))
            || !ascending_to(type_nodes, nodes)
        {
            return Some("offsets out of order or not ending at their section's count");
        }
        for t in 0..types {
            let n = (type_rows[t + 1] - type_rows[t]) as usize;
            if (type_nodes[t + 1] - type_nodes[t]) as usize != super::kd_nodes(n, self.leaf) {
                return Some("a type's k-d tree does not match its rows");
            }
            let range = type_series[t]..type_series[t + 1];
            if self.topk_order(t).iter().any(|s| !range.contains(&s)) {
                return Some("a top-K order names a series of another type");
            }
        }
        if self.version < 3 {
            let meta_off = self.u64s(S_META_OFF);
            if meta_off.windows(2).any(|w| w[0] > w[1])
                || meta_off
                    .last()
                    .is_some_and(|&e| e as usize > self.bytes(S_META_BLOB).len())
            {
                return Some("metadata offsets out of order or out of bounds");
            }
        }
        // Version 3's per-row indexes and version 4's per-series ones are
        // not checked here, which would cost a decode per row or series at
        // every start: a series from the time order is looked up with a
        // bounds check, a row from the k-d order, a series' first row and
        // its device are bounded where they are read (`kd_row`,
        // `series_row`, `series_device`), and compaction and `desa fsck`,
        // which read them all, check them (`verify_indexes`).
        if self.version == 2
            && self.time_order
            && (0..rows).any(|i| self.time_entry(i).1 as usize >= series)
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
        if self.version < 4 {
            return self.fences.find(t, self.u32s(S_TYPE_SERIES), device, |s| {
                self.whole_series_device(s)
            });
        }
        let d = if self.version >= 5 {
            self.front_coded().find(&self.block_fences, device)?
        } else {
            names::find_device(&self.fences, self.devices, device, |d| self.device_name(d))?
        };
        names::series_of(&self.packed_series(S_SERIES_DEV, 0), self.type_series(t), d)
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
    /// (a merge, a top-K that adds whole lists up); `None` where the names
    /// are stored whole (up to version 4).
    pub(crate) fn decoded_devices(&self) -> Option<names::Decoded> {
        (self.version >= 5).then(|| self.front_coded().decode())
    }

    /// Entries of the device dictionary (version 4 on for segments, 3 on
    /// for summaries; 0 before).
    pub(crate) fn device_count(&self) -> usize {
        self.devices
    }

    /// The index in the dictionary of the device of series `s` (version 4
    /// on), bounded here; `verify_indexes` checks them all.
    pub(crate) fn series_device_index(&self, s: usize) -> usize {
        let d = self.packed_series(S_SERIES_DEV, 0).int(s) as u64;
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
        match self.version {
            5.. => "",
            4 => self.device_name(self.series_device_index(s)),
            _ => self.blob_str(S_DEV_BLOB, S_SERIES_DEV_OFF, s),
        }
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

    /// The location and value of each row of type `t`, equal locations
    /// mostly next to each other (in k-d order, or in version 1 and 2 in
    /// row order, where a device's fixed location repeats).
    pub fn located_values(&self, t: usize) -> Box<dyn Iterator<Item = (f64, f64, f64)> + '_> {
        let rows = self.type_rows(t);
        if self.version < 3 {
            let (lat, lon) = (self.f64s(S_LAT), self.f64s(S_LON));
            return Box::new(rows.map(move |i| (lat[i], lon[i], self.value(i))));
        }
        let (lat, lon, row) = (
            self.packed(S_KD_LAT),
            self.packed(S_KD_LON),
            self.packed(S_KD_ROW),
        );
        Box::new(rows.map(move |i| {
            let r = self.kd_row(&row, i);
            (lat.float(i), lon.float(i), self.value(r))
        }))
    }

    /// The location and row of each row of type `t`: in k-d order, or in
    /// versions 1 and 2 in row order.
    pub fn located_rows(&self, t: usize) -> Box<dyn Iterator<Item = (f64, f64, usize)> + '_> {
        let rows = self.type_rows(t);
        if self.version < 3 {
            let (lat, lon) = (self.f64s(S_LAT), self.f64s(S_LON));
            return Box::new(rows.map(move |i| (lat[i], lon[i], i)));
        }
        let (lat, lon, row) = (
            self.packed(S_KD_LAT),
            self.packed(S_KD_LON),
            self.packed(S_KD_ROW),
        );
        Box::new(rows.map(move |i| (lat.float(i), lon.float(i), self.kd_row(&row, i))))
    }

    /// The first row of each series of type `t`, ascending.
    pub fn series_starts(&self, t: usize) -> Vec<usize> {
        self.type_series(t).map(|s| self.series_row(s)).collect()
    }

    /// Sum of the values of series `s`, all time.
    pub fn series_sum(&self, s: usize) -> DoubleDouble {
        let (lo, hi) = self.series_rows(s);
        self.prefix(hi) - self.prefix(lo)
    }

    /// Events in series `s`, all time.
    pub fn series_len(&self, s: usize) -> u64 {
        let (lo, hi) = self.series_rows(s);
        (hi - lo) as u64
    }

    /// Rows of series `s` inside the window: two binary searches.
    fn series_rows_in(&self, s: usize, w: TimeWindow) -> (usize, usize) {
        let (lo, hi) = self.series_rows(s);
        (
            self.ts_lower_bound(lo, hi, w.start),
            self.ts_lower_bound(lo, hi, w.end),
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
        ((b - a) as u64, self.prefix(b) - self.prefix(a))
    }

    /// The positions in the time order of type `t`'s rows inside the
    /// window (two binary searches; read each with
    /// [`series_at`](Self::series_at)). `None` for a file without the time
    /// order (format version 1).
    pub fn rows_in_window(&self, t: usize, w: TimeWindow) -> Option<std::ops::Range<usize>> {
        if !self.time_order {
            return None;
        }
        let rows = self.type_rows(t);
        let first_at = |x: i64| {
            let (mut lo, mut hi) = (rows.start, rows.end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.time_entry(mid).0 < x {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        Some(first_at(w.start)..first_at(w.end))
    }

    /// The series of position `i` of the time order.
    pub fn series_at(&self, i: usize) -> u32 {
        self.time_entry(i).1
    }

    /// The series of type `t`, by event count descending.
    pub fn topk_order(&self, t: usize) -> IdList<'_> {
        let series = self.type_series(t);
        match self.version {
            3.. => IdList::Packed {
                column: Packed::unchecked(self.bytes(S_TOPK), self.file.words[1] as usize),
                start: series.start,
                len: series.len(),
            },
            _ => IdList::Fixed(&self.u32s(S_TOPK)[series]),
        }
    }

    /// The metadata of every row, in row order.
    fn metadata(&self) -> Result<Vec<Option<Box<str>>>> {
        let rows = self.meta.rows as usize;
        let corrupt = |reason: &str| {
            let at = self.file.sections[S_META_BLOB].0 as u64;
            Error::corrupt(&self.path, at, format!("metadata: {reason}"))
        };
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(Box::from)
                .map_err(|_| corrupt("not UTF-8"))
        };
        let mut out = Vec::with_capacity(rows);
        if self.version < 3 {
            let (off, blob) = (self.u64s(S_META_OFF), self.bytes(S_META_BLOB));
            for r in 0..rows {
                let m = &blob[off[r] as usize..off[r + 1] as usize];
                out.push(if m.is_empty() { None } else { Some(text(m)?) });
            }
            return Ok(out);
        }
        let unzip = |s: usize| {
            let bytes = self.bytes(s);
            let size = zstd::zstd_safe::get_frame_content_size(bytes)
                .ok()
                .flatten()
                .filter(|&n| n <= MAX_METADATA_BYTES)
                .ok_or_else(|| corrupt("no frame of a readable size"))?;
            zstd::bulk::decompress(bytes, size as usize).map_err(|e| corrupt(&e.to_string()))
        };
        let (lens, blob) = (unzip(S_META_OFF)?, unzip(S_META_BLOB)?);
        let (mut at, mut pos) = (0usize, 0usize);
        for _ in 0..rows {
            let mut len = 0u64;
            let mut shift = 0;
            loop {
                let byte = *lens.get(pos).ok_or_else(|| corrupt("lengths end early"))?;
                pos += 1;
                len |= u64::from(byte & 0x7f) << shift.min(63);
                shift += 7;
                if byte < 0x80 {
                    break;
                }
            }
            out.push(match len.checked_sub(1) {
                None => None,
                Some(n) => {
                    let end = at
                        .checked_add(n as usize)
                        .filter(|&e| e <= blob.len())
                        .ok_or_else(|| corrupt("a length runs past the texts"))?;
                    let m = text(&blob[at..end])?;
                    at = end;
                    Some(m)
                }
            });
        }
        Ok(out)
    }

    /// Appends every event of the segment to `rows` (for compaction).
    pub fn append_to(&self, rows: &mut Rows) -> Result<()> {
        self.verify()?;
        // `locations` checks the k-d order: with this, every index.
        self.verify_series()?;
        let meta = self.metadata()?;
        let locations = self.locations()?;
        let type_series = self.u32s(S_TYPE_SERIES);
        let decoded = self.decoded_devices();
        for t in 0..self.types {
            let ty = self.blob_str(S_TYPES_BLOB, S_TYPES_OFF, t);
            let type_id = rows.types.intern(ty);
            for s in type_series[t] as usize..type_series[t + 1] as usize {
                let dev = self.series_device_in(s, decoded.as_ref());
                let device_id = rows.devices.intern(dev);
                let (lo, hi) = self.series_rows(s);
                for r in lo..hi {
                    let (lat, lon) = locations[r];
                    rows.push_interned(
                        type_id,
                        device_id,
                        NewRow {
                            event_type: ty,
                            device: dev,
                            ts: self.ts(r),
                            value: self.value(r),
                            lat,
                            lon,
                            meta: meta[r].as_deref(),
                        },
                    );
                }
            }
        }
        Ok(())
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
