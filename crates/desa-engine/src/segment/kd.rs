//! The per-type k-d tree: built over copied points, stored in heap layout
//! (children of node `i` are `2i+1` and `2i+2`); a node's row range follows
//! from its position, so nodes store only their bounding box.

use bytemuck::{Pod, Zeroable};

/// Bounding box and sum of the rows under a node.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq)]
pub struct KdNode {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Double-double sum of the values under the node.
    pub sum_hi: f64,
    pub sum_lo: f64,
}

impl KdNode {
    fn empty() -> Self {
        KdNode {
            min_lat: f64::INFINITY,
            max_lat: f64::NEG_INFINITY,
            min_lon: f64::INFINITY,
            max_lon: f64::NEG_INFINITY,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            sum_hi: 0.0,
            sum_lo: 0.0,
        }
    }
}

/// One row of the geo copy.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq)]
pub struct KdPoint {
    pub lat: f64,
    pub lon: f64,
    pub ts: i64,
    pub value: f64,
}

/// A node as format version 3 stores it: the bounding box rounded outwards
/// to f32 (a node may only look larger than it is, which costs a descent,
/// never an exact answer), timestamps as seconds after the segment's first
/// (`u32::MAX` as a maximum: later than that), and the exact sum.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq)]
pub struct CompactNode {
    pub min_lat: f32,
    pub max_lat: f32,
    pub min_lon: f32,
    pub max_lon: f32,
    pub min_ts: u32,
    pub max_ts: u32,
    pub sum_hi: f64,
    pub sum_lo: f64,
}

/// The largest f32 at most `x`.
pub(crate) fn f32_at_most(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) > x {
        f.next_down()
    } else {
        f
    }
}

/// The smallest f32 at least `x`.
pub(crate) fn f32_at_least(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) < x {
        f.next_up()
    } else {
        f
    }
}

impl CompactNode {
    /// `n` for a segment whose first timestamp is `base`.
    pub fn of(n: &KdNode, base: i64) -> CompactNode {
        let after = |t: i64| t.saturating_sub(base).max(0);
        CompactNode {
            min_lat: f32_at_most(n.min_lat),
            max_lat: f32_at_least(n.max_lat),
            min_lon: f32_at_most(n.min_lon),
            max_lon: f32_at_least(n.max_lon),
            min_ts: after(n.min_ts).min(i64::from(u32::MAX - 1)) as u32,
            max_ts: after(n.max_ts).min(i64::from(u32::MAX)) as u32,
            sum_hi: n.sum_hi,
            sum_lo: n.sum_lo,
        }
    }

    /// The node's (possibly larger) box, for a segment starting at `base`.
    #[inline]
    pub fn widen(&self, base: i64) -> KdNode {
        KdNode {
            min_lat: f64::from(self.min_lat),
            max_lat: f64::from(self.max_lat),
            min_lon: f64::from(self.min_lon),
            max_lon: f64::from(self.max_lon),
            min_ts: base.saturating_add(i64::from(self.min_ts)),
            max_ts: match self.max_ts {
                u32::MAX => i64::MAX,
                t => base.saturating_add(i64::from(t)),
            },
            sum_hi: self.sum_hi,
            sum_lo: self.sum_lo,
        }
    }
}

/// A point being placed in k-d order, with the row it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub point: KdPoint,
    pub row: u32,
}

/// Reorders `points` into k-d order and fills `nodes` (length `kd_nodes(n)`).
pub(crate) fn build(points: &mut [Entry], nodes: &mut [KdNode], depth_max: u32) {
    if !points.is_empty() {
        build_node(points, nodes, 0, 0, depth_max);
    }
}

fn build_node(points: &mut [Entry], nodes: &mut [KdNode], i: usize, depth: u32, depth_max: u32) {
    let mut b = KdNode::empty();
    let mut sum = desa_model::DoubleDouble::ZERO;
    for p in points.iter().map(|e| &e.point) {
        sum = sum.add_f64(p.value);
        b.min_lat = b.min_lat.min(p.lat);
        b.max_lat = b.max_lat.max(p.lat);
        b.min_lon = b.min_lon.min(p.lon);
        b.max_lon = b.max_lon.max(p.lon);
        b.min_ts = b.min_ts.min(p.ts);
        b.max_ts = b.max_ts.max(p.ts);
    }
    b.sum_hi = sum.hi;
    b.sum_lo = sum.lo;
    nodes[i] = b;
    if depth == depth_max {
        return;
    }
    let mid = points.len() / 2;
    match split_dimension(depth) {
        0 => points.select_nth_unstable_by(mid, |a, b| a.point.lat.total_cmp(&b.point.lat)),
        1 => points.select_nth_unstable_by(mid, |a, b| a.point.lon.total_cmp(&b.point.lon)),
        _ => points.select_nth_unstable_by(mid, |a, b| a.point.ts.cmp(&b.point.ts)),
    };
    let (left, right) = points.split_at_mut(mid);
    build_node(left, nodes, 2 * i + 1, depth + 1, depth_max);
    build_node(right, nodes, 2 * i + 2, depth + 1, depth_max);
}

/// What level `depth` splits on: 0 latitude, 1 longitude, 2 time, in turn.
///
/// Splitting the top levels on space alone was measured too (`desa bench
/// --events 10000000 --zipf 1.2 --move-metres 50 --metadata-fraction 0.1
/// --reuse-data --in-process`, 2-core host): six such levels halved the 30-day Europe
/// box over moving devices (2.36 to 1.32 ms at p50) but nearly tripled the
/// 1-hour one (0.05 to 0.14 ms), and the 30-day boxes of fixed sensors are
/// answered by summaries anyway; so every level takes its turn.
fn split_dimension(depth: u32) -> u32 {
    depth % 3
}

/// A query box in k-d terms: inclusive lat/lon, half-open time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KdQuery {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
    pub start: i64,
    pub end: i64,
}

impl KdQuery {
    #[inline]
    pub fn disjoint(&self, n: &KdNode) -> bool {
        n.max_lat < self.min_lat
            || n.min_lat > self.max_lat
            || n.max_lon < self.min_lon
            || n.min_lon > self.max_lon
            || n.max_ts < self.start
            || n.min_ts >= self.end
    }

    #[inline]
    pub fn covers(&self, n: &KdNode) -> bool {
        n.min_lat >= self.min_lat
            && n.max_lat <= self.max_lat
            && n.min_lon >= self.min_lon
            && n.max_lon <= self.max_lon
            && n.min_ts >= self.start
            && n.max_ts < self.end
    }

    #[inline]
    pub fn contains_location(&self, lat: f64, lon: f64) -> bool {
        lat >= self.min_lat && lat <= self.max_lat && lon >= self.min_lon && lon <= self.max_lon
    }

    #[inline]
    pub fn contains(&self, lat: f64, lon: f64, ts: i64) -> bool {
        lat >= self.min_lat
            && lat <= self.max_lat
            && lon >= self.min_lon
            && lon <= self.max_lon
            && ts >= self.start
            && ts < self.end
    }
}
