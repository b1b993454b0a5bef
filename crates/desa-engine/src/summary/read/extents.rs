//! Reading device extents (see `summary::extents`): the geo query over a
//! type without points.

use std::borrow::Cow;

use desa_model::{DoubleDouble, GeoBox};

use super::super::extents::{degrees, GridBox};
use super::super::*;
use super::Summary;
use crate::segment::{kd_depth, kd_nodes};

/// A device whose extent the query box's edge cuts: its events inside
/// `within` (the part of the box the extent overlaps, never crossing the
/// antimeridian) are read from the segments the summary covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut<'a> {
    pub device: Cow<'a, str>,
    /// `[min_lat, max_lat, min_lon, max_lon]`, inclusive.
    pub within: [f64; 4],
}

impl Summary {
    /// The extents of type `t`: positions in the extent columns.
    fn extent_range(&self, t: usize) -> std::ops::Range<usize> {
        if self.version < 4 {
            return 0..0;
        }
        let off = self.u32s(S_TYPE_EXTENTS);
        off[t] as usize..off[t + 1] as usize
    }

    /// Whether the summary keeps the extents of type `t`.
    pub fn has_extents(&self, t: usize) -> bool {
        !self.extent_range(t).is_empty()
    }

    /// Extent `i`: its series and its box on the grid. The series is
    /// bounded by the type's (`verify_indexes` checks them all).
    fn extent(&self, t: usize, i: usize) -> (usize, GridBox) {
        let column = |s| self.packed(s, self.extents).int(i);
        let series = self.type_series(t);
        let s = series.start + (column(S_EXTENT_SERIES) as u64 as usize);
        let (min_lat, min_lon) = (column(S_EXTENT_MIN_LAT), column(S_EXTENT_MIN_LON));
        let b = [
            min_lat,
            min_lat.saturating_add(column(S_EXTENT_LAT_SPAN)),
            min_lon,
            min_lon.saturating_add(column(S_EXTENT_LON_SPAN)),
        ];
        (s.min(series.end.saturating_sub(1)), b)
    }

    /// The series and extent of each device of type `t`.
    pub fn extents_of(&self, t: usize) -> impl Iterator<Item = (usize, GridBox)> + '_ {
        self.extent_range(t).map(move |i| self.extent(t, i))
    }

    /// What makes the extent sections disagree with the rest, if anything.
    pub(super) fn extents_inconsistency(&self, nodes: usize) -> Option<&'static str> {
        use crate::sections::ascending_to;
        if self.version < 4 {
            return None;
        }
        let type_extents = self.u32s(S_TYPE_EXTENTS);
        let type_nodes = self.u32s(S_TYPE_EXTENT_NODES);
        if !ascending_to(type_extents, self.extents) || !ascending_to(type_nodes, nodes) {
            return Some("extent offsets out of order or not ending at their section's count");
        }
        for t in 0..self.types {
            let n = (type_extents[t + 1] - type_extents[t]) as usize;
            if (type_nodes[t + 1] - type_nodes[t]) as usize != kd_nodes(n, GEO_LEAF_POINTS) {
                return Some("a type's extent tree does not match its extents");
            }
            if n > 0 && n != self.type_series(t).len() {
                return Some("a type's extents are not one per device");
            }
        }
        None
    }

    /// Checks that each type's extents name each of its series once.
    pub(super) fn verify_extents(&self) -> Option<&'static str> {
        for t in 0..self.types {
            let mut seen = vec![false; self.type_series(t).len()];
            for i in self.extent_range(t) {
                let s = self.packed(S_EXTENT_SERIES, self.extents).int(i) as u64 as usize;
                match seen.get_mut(s) {
                    Some(x) if !*x => *x = true,
                    _ => return Some("an extent names a series twice or out of its type"),
                }
            }
        }
        None
    }

    /// Count and sum over the block of the devices of the type whose
    /// extent lies inside the box; the devices it cuts are appended to
    /// `cut`. Only for a type with extents ([`GeoPart::Extents`]).
    pub fn geo_extents<'s>(
        &'s self,
        event_type: &str,
        bbox: &GeoBox,
        cut: &mut Vec<Cut<'s>>,
    ) -> (u64, DoubleDouble) {
        let mut acc = (0, DoubleDouble::ZERO);
        let Some(t) = self.find_type(event_type) else {
            return acc;
        };
        let extents = self.extent_range(t);
        if extents.is_empty() {
            return acc;
        }
        let first_node = self.u32s(S_TYPE_EXTENT_NODES)[t] as usize;
        let depth_max = kd_depth(extents.len(), GEO_LEAF_POINTS);
        for (min_lon, max_lon) in bbox.lon_ranges() {
            let visit = Visit {
                sum: self,
                t,
                q: [bbox.min_lat, bbox.max_lat, min_lon, max_lon],
                first_node,
                depth_max,
            };
            visit.node(0, extents.clone(), 0, &mut acc, cut);
        }
        acc
    }

    /// Extent node `i` (of all types, each type's in heap layout).
    fn extent_node(&self, i: usize) -> GeoNode {
        bytemuck::cast_slice::<u8, CompactGeoNode>(self.file.bytes(S_EXTENT_NODES))[i].widen()
    }
}

/// One walk of a type's extent tree for one box
/// `q = [min_lat, max_lat, min_lon, max_lon]` (inclusive).
struct Visit<'s> {
    sum: &'s Summary,
    t: usize,
    q: [f64; 4],
    first_node: usize,
    depth_max: u32,
}

impl<'s> Visit<'s> {
    fn node(
        &self,
        i: usize,
        extents: std::ops::Range<usize>,
        depth: u32,
        acc: &mut (u64, DoubleDouble),
        cut: &mut Vec<Cut<'s>>,
    ) {
        if extents.is_empty() {
            return;
        }
        let n = self.sum.extent_node(self.first_node + i);
        match relation(&self.q, [n.min_lat, n.max_lat, n.min_lon, n.max_lon]) {
            Relation::Outside => return,
            Relation::Inside => {
                acc.0 += n.count;
                acc.1 = acc.1 + DoubleDouble::new(n.sum_hi, n.sum_lo);
                return;
            }
            Relation::Cut => {}
        }
        if depth == self.depth_max {
            for e in extents {
                let (s, b) = self.sum.extent(self.t, e);
                let d = degrees(&b);
                match relation(&self.q, d) {
                    Relation::Outside => {}
                    Relation::Inside => {
                        acc.0 += self.sum.series_count(s);
                        acc.1 = acc.1 + self.sum.series_sum(s);
                    }
                    Relation::Cut => cut.push(Cut {
                        device: self.sum.series_device(s),
                        within: [
                            d[0].max(self.q[0]),
                            d[1].min(self.q[1]),
                            d[2].max(self.q[2]),
                            d[3].min(self.q[3]),
                        ],
                    }),
                }
            }
            return;
        }
        let mid = extents.start + extents.len() / 2;
        self.node(2 * i + 1, extents.start..mid, depth + 1, acc, cut);
        self.node(2 * i + 2, mid..extents.end, depth + 1, acc, cut);
    }
}

enum Relation {
    Inside,
    Outside,
    Cut,
}

/// Where the box `b` lies against the query box `q` (both
/// `[min_lat, max_lat, min_lon, max_lon]`, inclusive).
fn relation(q: &[f64; 4], b: [f64; 4]) -> Relation {
    if b[1] < q[0] || b[0] > q[1] || b[3] < q[2] || b[2] > q[3] {
        Relation::Outside
    } else if b[0] >= q[0] && b[1] <= q[1] && b[2] >= q[2] && b[3] <= q[3] {
        Relation::Inside
    } else {
        Relation::Cut
    }
}
