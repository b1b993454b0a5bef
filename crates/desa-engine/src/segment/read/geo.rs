//! The geo query on a segment: a walk of the type's k-d tree that adds
//! up the nodes inside the box and window and reads the leaves cut by an
//! edge.

use desa_model::{DoubleDouble, GeoBox, TimeWindow};

use super::super::kd::{CompactNode, KdNode, KdPoint, KdQuery};
use super::super::*;
use super::Segment;

impl Segment {
    /// Count and sum of one type inside the box and window.
    pub fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> (u64, DoubleDouble) {
        let mut acc = (0, DoubleDouble::ZERO);
        let Some(t) = self.find_type(event_type) else {
            return acc;
        };
        let rows = self.type_rows(t);
        if rows.is_empty() {
            return acc;
        }
        let first_node = self.u32s(S_TYPE_NODES)[t] as usize;
        let depth_max = kd_depth(rows.len(), self.leaf);
        for (min_lon, max_lon) in bbox.lon_ranges() {
            let q = KdQuery {
                min_lat: bbox.min_lat,
                max_lat: bbox.max_lat,
                min_lon,
                max_lon,
                start: w.start,
                end: w.end,
            };
            let visit = KdVisit {
                seg: self,
                q,
                first_node,
                depth_max,
                only: None,
            };
            visit.node(0, rows.clone(), 0, &mut acc);
        }
        acc
    }

    /// Count and sum of one device's events of one type inside the box
    /// `[min_lat, max_lat, min_lon, max_lon]` (inclusive, not crossing the
    /// antimeridian) and window: the answer for a device whose events lie
    /// on both sides of a query box's edge (see `summary::extents`).
    pub fn geo_of_device(
        &self,
        event_type: &str,
        device: &str,
        within: [f64; 4],
        w: TimeWindow,
    ) -> (u64, DoubleDouble) {
        let mut acc = (0, DoubleDouble::ZERO);
        let Some((t, s)) = self
            .find_type(event_type)
            .and_then(|t| Some((t, self.find_series(t, device)?)))
        else {
            return acc;
        };
        let (lo, hi) = self.series_rows(s);
        let q = KdQuery {
            min_lat: within[0],
            max_lat: within[1],
            min_lon: within[2],
            max_lon: within[3],
            start: w.start,
            end: w.end,
        };
        if self.version < 3 {
            // Versions 1 and 2 keep the locations in row order too.
            let (lat, lon) = (self.f64s(S_LAT), self.f64s(S_LON));
            for r in lo..hi {
                if q.contains(lat[r], lon[r], self.ts(r)) {
                    acc.0 += 1;
                    acc.1 = acc.1.add_f64(self.value(r));
                }
            }
            return acc;
        }
        let visit = KdVisit {
            seg: self,
            q,
            first_node: self.u32s(S_TYPE_NODES)[t] as usize,
            depth_max: kd_depth(self.type_rows(t).len(), self.leaf),
            only: Some(lo..hi),
        };
        visit.node(0, self.type_rows(t), 0, &mut acc);
        acc
    }

    /// Node `i` of the k-d nodes, as stored or widened from its compact form.
    #[inline]
    fn kd_node(&self, i: usize) -> KdNode {
        match self.version {
            3.. => bytemuck::cast_slice::<u8, CompactNode>(self.bytes(S_KD_NODES))[i]
                .widen(self.meta.min_ts),
            _ => bytemuck::cast_slice::<u8, KdNode>(self.bytes(S_KD_NODES))[i],
        }
    }

    /// Adds up the points of k-d leaf positions `lo..hi` inside the query.
    /// `in_window`: the leaf's times all lie in the query's window (as in
    /// every segment a long window holds whole), so no point's time is read.
    /// `only`: the rows of one series, the only ones counted.
    fn kd_leaf(
        &self,
        q: &KdQuery,
        rows: std::ops::Range<usize>,
        in_window: bool,
        only: Option<&std::ops::Range<usize>>,
        acc: &mut (u64, DoubleDouble),
    ) {
        if self.version < 3 {
            let points: &[KdPoint] = bytemuck::cast_slice(self.bytes(S_KD_POINTS));
            for p in &points[rows] {
                if q.contains(p.lat, p.lon, p.ts) {
                    acc.0 += 1;
                    acc.1 = acc.1.add_f64(p.value);
                }
            }
            return;
        }
        // A leaf's coordinates decoded together, then compared.
        let (mut lat, mut lon) = ([0.0; KD_LEAF_ROWS], [0.0; KD_LEAF_ROWS]);
        let n = rows.len().min(KD_LEAF_ROWS);
        self.packed(S_KD_LAT).floats_into(rows.start, &mut lat[..n]);
        self.packed(S_KD_LON).floats_into(rows.start, &mut lon[..n]);
        let (row, ts, value) = (
            self.packed(S_KD_ROW),
            self.packed(S_TS),
            self.packed(S_VALUE),
        );
        for (j, i) in rows.take(n).enumerate() {
            if q.contains_location(lat[j], lon[j]) {
                let r = self.kd_row(&row, i);
                if only.is_some_and(|only| !only.contains(&r)) {
                    continue;
                }
                if in_window || (q.start..q.end).contains(&ts.int(r)) {
                    acc.0 += 1;
                    acc.1 = acc.1.add_f64(value.float(r));
                }
            }
        }
    }
}

/// One walk of a type's k-d tree for one query box.
struct KdVisit<'s> {
    seg: &'s Segment,
    q: KdQuery,
    /// The type's first node among the segment's nodes.
    first_node: usize,
    depth_max: u32,
    /// The rows of one series (version 3 on): only they are counted, so
    /// no node is taken whole.
    only: Option<std::ops::Range<usize>>,
}

impl KdVisit<'_> {
    /// Adds up the points under node `i` (heap layout), which holds the k-d
    /// positions `rows`, that lie inside the query.
    fn node(
        &self,
        i: usize,
        rows: std::ops::Range<usize>,
        depth: u32,
        acc: &mut (u64, DoubleDouble),
    ) {
        if rows.is_empty() {
            return;
        }
        let n = self.seg.kd_node(self.first_node + i);
        if self.q.disjoint(&n) {
            return;
        }
        if self.only.is_none() && self.q.covers(&n) {
            acc.0 += rows.len() as u64;
            acc.1 = acc.1 + DoubleDouble::new(n.sum_hi, n.sum_lo);
            return;
        }
        if depth == self.depth_max {
            let in_window = self.q.start <= n.min_ts && n.max_ts < self.q.end;
            let only = self.only.as_ref();
            self.seg.kd_leaf(&self.q, rows, in_window, only, acc);
            return;
        }
        let mid = rows.start + rows.len() / 2;
        self.node(2 * i + 1, rows.start..mid, depth + 1, acc);
        self.node(2 * i + 2, mid..rows.end, depth + 1, acc);
    }
}
