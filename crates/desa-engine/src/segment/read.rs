//! Reading a segment through a read-only memory map.

use std::fs::File;
use std::path::{Path, PathBuf};

use desa_model::{DoubleDouble, GeoBox, TimeWindow};
use memmap2::Mmap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Series between two heap-resident fence keys (see `Segment::fences`).
const FENCE_STRIDE: usize = 64;

/// A logical clock for [`Segment::touch`]: only the order of uses matters.
static USE_CLOCK: AtomicU64 = AtomicU64::new(1);

use super::kd::{KdNode, KdPoint, KdQuery};
use super::*;
use crate::error::{Error, Result};
use crate::head::{NewRow, Rows};

/// An open, checksum-verified segment.
pub struct Segment {
    pub meta: SegmentMeta,
    path: PathBuf,
    map: Mmap,
    /// When a query last read this segment, on [`USE_CLOCK`]'s scale.
    last_used: AtomicU64,
    /// Per type, every [`FENCE_STRIDE`]-th series and its device, kept on the
    /// heap: a device lookup reads one small run of the mapped series table
    /// instead of ~log2(series) scattered pages.
    fences: Vec<Vec<(u32, Box<str>)>>,
    sections: [(usize, usize); SECTION_COUNT],

    types: usize,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("meta", &self.meta).finish()
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Segment {
    /// Maps the file and verifies its checksum and structure.
    pub fn open(path: &Path, id: u64) -> Result<Self> {
        let file = File::open(path).map_err(Error::io("open", path))?;
        // SAFETY: segment files are never modified after they are written;
        // they are only deleted, which keeps an existing mapping valid.
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io("mmap", path))?;
        let len = map.len() as u64;
        let bad = |offset: u64, reason: &str| Error::corrupt(path, offset, reason.to_owned());
        if len < HEADER_BYTES + FOOTER_BYTES || &map[..8] != HEADER_MAGIC {
            return Err(bad(0, "not a desa segment (bad header or too short)"));
        }
        let footer_at = (len - FOOTER_BYTES) as usize;
        let f = &map[footer_at..];
        if &f[f.len() - 8..] != FOOTER_MAGIC {
            return Err(bad(len - 8, "bad footer magic (file truncated?)"));
        }
        let version = u32::from_le_bytes([
            f[f.len() - 12],
            f[f.len() - 11],
            f[f.len() - 10],
            f[f.len() - 9],
        ]);
        if version != VERSION {
            return Err(bad(
                len - 12,
                &format!("unsupported segment version {version}"),
            ));
        }
        let stored_crc = u32::from_le_bytes([
            f[f.len() - 16],
            f[f.len() - 15],
            f[f.len() - 14],
            f[f.len() - 13],
        ]);
        let crc = crc32c::crc32c(&map[..map.len() - 16]);
        if crc != stored_crc {
            return Err(bad(0, "segment checksum mismatch"));
        }
        // Verifying read every page; they need not stay resident.
        // SAFETY: read-only shared file mapping, see `release_memory`.
        let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        let mut sections = [(0usize, 0usize); SECTION_COUNT];
        for (i, s) in sections.iter_mut().enumerate() {
            *s = (le_u64(f, i * 16) as usize, le_u64(f, i * 16 + 8) as usize);
        }
        let tail = SECTION_COUNT * 16;
        let rows = le_u64(f, tail) as usize;
        let series = le_u64(f, tail + 8) as usize;
        let types = le_u64(f, tail + 16) as usize;
        let nodes = le_u64(f, tail + 24) as usize;
        let min_ts = le_u64(f, tail + 32) as i64;
        let max_ts = le_u64(f, tail + 40) as i64;
        let partition = le_u64(f, tail + 48) as i64;
        let leaf = le_u64(f, tail + 56) as usize;
        if leaf != KD_LEAF_ROWS {
            return Err(bad(
                len,
                &format!("k-d leaf size {leaf} is not {KD_LEAF_ROWS}"),
            ));
        }
        let expect: [(usize, Option<usize>); SECTION_COUNT] = [
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
        ];
        for (i, ((off, slen), (width, count))) in sections.iter().zip(expect).enumerate() {
            let in_bounds = off.checked_add(*slen).is_some_and(|e| e <= footer_at)
                && *off >= HEADER_BYTES as usize;
            let aligned = off % 8 == 0;
            let sized = count.is_none_or(|c| c * width == *slen);
            if !(in_bounds && aligned && sized) {
                return Err(bad(
                    *off as u64,
                    &format!("section {i} is out of bounds or mis-sized"),
                ));
            }
        }
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
            map,
            last_used: AtomicU64::new(0),
            fences: Vec::new(),
            sections,

            types,
        };
        if (types > 0 && seg.u32s(S_TYPE_ROWS)[types] as usize != rows)
            || (series > 0 && seg.u32s(S_SERIES_ROW)[series] as usize != rows)
        {
            return Err(bad(0, "row counts disagree between sections"));
        }
        let mut seg = seg;
        seg.fences = (0..types)
            .map(|t| {
                let ts = seg.u32s(S_TYPE_SERIES);
                (ts[t]..ts[t + 1])
                    .step_by(FENCE_STRIDE)
                    .map(|s| (s, Box::from(seg.series_device(s as usize))))
                    .collect()
            })
            .collect();
        Ok(seg)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bytes(&self, s: usize) -> &[u8] {
        let (off, len) = self.sections[s];
        &self.map[off..off + len]
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
        let off = self.u32s(offsets);
        let b = &self.bytes(blob)[off[i] as usize..off[i + 1] as usize];
        std::str::from_utf8(b).unwrap_or("")
    }

    /// True when every row lies inside the window.
    pub fn within(&self, w: TimeWindow) -> bool {
        self.meta.rows > 0 && self.meta.min_ts >= w.start && self.meta.max_ts < w.end
    }

    /// True when some row may lie inside the window.
    pub fn overlaps(&self, w: TimeWindow) -> bool {
        self.meta.rows > 0 && self.meta.max_ts >= w.start && self.meta.min_ts < w.end
    }

    pub fn find_type(&self, event_type: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.types);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self
                .blob_str(S_TYPES_BLOB, S_TYPES_OFF, mid)
                .cmp(event_type)
            {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The series of `device` within type `t`.
    pub fn find_series(&self, t: usize, device: &str) -> Option<usize> {
        let ts = self.u32s(S_TYPE_SERIES);
        let fences = &self.fences[t];
        let k = fences.partition_point(|(_, name)| name.as_ref() <= device);
        if k == 0 {
            return None; // before the type's first device
        }
        let (mut lo, mut hi) = (
            fences[k - 1].0 as usize,
            fences.get(k).map_or(ts[t + 1], |f| f.0) as usize,
        );
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.series_device(mid).cmp(device) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn series_device(&self, s: usize) -> &str {
        self.blob_str(S_DEV_BLOB, S_SERIES_DEV_OFF, s)
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
            for s in type_series[t] as usize..type_series[t + 1] as usize {
                let dev = self.series_device(s);
                for r in series_row[s] as usize..series_row[s + 1] as usize {
                    let m = &meta[meta_off[r] as usize..meta_off[r + 1] as usize];
                    let m = (!m.is_empty()).then(|| std::str::from_utf8(m).unwrap_or("{}"));
                    rows.push(NewRow {
                        event_type: ty,
                        device: dev,
                        ts: ts[r],
                        value: value[r],
                        lat: lat[r],
                        lon: lon[r],
                        meta: m,
                    });
                }
            }
        }
    }

    /// Drops the mapping's resident pages; they are read again from the file
    /// (usually the page cache) on the next access. Keeps RSS within budget.
    /// Records that a query is reading this segment.
    pub fn touch(&self) {
        self.last_used
            .store(USE_CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// When a query last read this segment (larger is more recent).
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub fn release_memory(&self) {
        // SAFETY: the mapping is a read-only shared file mapping, for which
        // MADV_DONTNEED only discards clean pages that are re-read on access.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }
}
