//! Writing a summary from segments and smaller summaries.
//!
//! The per-(type, device) totals are a k-way merge of inputs that are all
//! sorted by (type, device), so only the output is held in memory; the geo
//! points are gathered, sorted and folded one type at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

use desa_model::DoubleDouble;

use super::*;
use super::{extents, points};
use crate::error::{Error, Result};
use crate::names::{Decoded, Dictionary};
use crate::packed::Packer;
use crate::sections::SectionWriter;
use crate::segment::{kd_depth, kd_nodes, Segment};

/// What a summary is built from.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Segment(&'a Segment),
    /// A smaller or older summary, with the segments it covers (`None` if
    /// some are not at hand): the points of a type it left out are read
    /// from them.
    Summary(&'a Summary, Option<&'a [Arc<Segment>]>),
}

impl<'a> Input<'a> {
    fn type_count(&self) -> usize {
        match self {
            Input::Segment(s) => s.type_count(),
            Input::Summary(s, _) => s.type_count(),
        }
    }
    fn type_name(&self, t: usize) -> &'a str {
        match *self {
            Input::Segment(s) => s.type_name(t),
            Input::Summary(s, _) => s.type_name(t),
        }
    }
    fn type_series(&self, t: usize) -> std::ops::Range<usize> {
        match self {
            Input::Segment(s) => s.type_series(t),
            Input::Summary(s, _) => s.type_series(t),
        }
    }
    /// The device of series `s`; `decoded` holds the input's names where
    /// they are front-coded (`Summary::decoded_devices`).
    fn device(&self, s: usize, decoded: Option<&'a Decoded>) -> &'a str {
        match *self {
            Input::Segment(x) => x.series_device_in(s, decoded),
            Input::Summary(x, _) => x.series_device_in(s, decoded),
        }
    }
    fn count_and_sum(&self, s: usize) -> (u64, DoubleDouble) {
        match self {
            Input::Segment(x) => (x.series_len(s), x.series_sum(s)),
            Input::Summary(x, _) => (x.series_count(s), x.series_sum(s)),
        }
    }
    /// Verifies the checksum of the input's file, and of the segments a
    /// summary covers, whose points the build may read.
    fn verify(&self) -> Result<()> {
        match self {
            Input::Segment(s) => s.verify(),
            Input::Summary(s, covered) => {
                s.verify()?;
                covered
                    .iter()
                    .flat_map(|c| c.iter())
                    .try_for_each(|c| c.verify())
            }
        }
    }
    /// Drops the input's mapped pages from this process (see
    /// `Segment::release_memory`): a build reads each input once.
    fn release_memory(&self) {
        match self {
            Input::Segment(s) => s.release_memory(),
            Input::Summary(s, _) => s.release_memory(),
        }
    }
}

/// Position of one input in the merge: type `t`, series `s`.
struct Cursor {
    t: usize,
    s: usize,
}

impl Cursor {
    /// Moves to the next series, skipping types without series.
    fn settle(&mut self, input: &Input) -> bool {
        while self.t < input.type_count() {
            if self.s < input.type_series(self.t).end {
                return true;
            }
            self.t += 1;
        }
        false
    }
}

/// The (type, device) totals of a block, in (type, device) order.
#[derive(Default)]
struct Series<'a> {
    types_blob: Vec<u8>,
    types_off: Vec<u32>,
    type_series: Vec<u32>,
    devices: Vec<&'a str>,
    count: Vec<u64>,
    sum_hi: Vec<f64>,
    sum_lo: Vec<f64>,
}

/// `decoded[i]`: the names of input `i` where it front-codes them.
fn merge_series<'a>(inputs: &[Input<'a>], decoded: &'a [Option<Decoded>]) -> Series<'a> {
    let device = |i: usize, s: usize| inputs[i].device(s, decoded[i].as_ref());
    let mut out = Series {
        types_off: vec![0],
        type_series: vec![0],
        ..Series::default()
    };
    let mut cursors: Vec<Cursor> = inputs.iter().map(|_| Cursor { t: 0, s: 0 }).collect();
    let mut heap = BinaryHeap::new();
    for (i, input) in inputs.iter().enumerate() {
        let c = &mut cursors[i];
        if c.settle(input) {
            c.s = input.type_series(c.t).start;
            heap.push(Reverse((input.type_name(c.t), device(i, c.s), i)));
        }
    }
    let mut last_type: Option<&str> = None;
    while let Some(Reverse((ty, dev, _))) = heap.peek().copied() {
        let mut count = 0;
        let mut sum = DoubleDouble::ZERO;
        while let Some(&Reverse((t2, d2, i))) = heap.peek() {
            if (t2, d2) != (ty, dev) {
                break;
            }
            heap.pop();
            let (c, s) = inputs[i].count_and_sum(cursors[i].s);
            count += c;
            sum = sum + s;
            let cur = &mut cursors[i];
            cur.s += 1;
            if cur.s >= inputs[i].type_series(cur.t).end {
                cur.t += 1;
                if cur.settle(&inputs[i]) {
                    cur.s = inputs[i].type_series(cur.t).start;
                } else {
                    continue;
                }
            }
            heap.push(Reverse((inputs[i].type_name(cur.t), device(i, cur.s), i)));
        }
        if last_type != Some(ty) {
            if last_type.is_some() {
                out.type_series.push(out.count.len() as u32);
            }
            out.types_blob.extend_from_slice(ty.as_bytes());
            out.types_off.push(out.types_blob.len() as u32);
            last_type = Some(ty);
        }
        out.devices.push(dev);
        out.count.push(count);
        out.sum_hi.push(sum.hi);
        out.sum_lo.push(sum.lo);
    }
    if last_type.is_some() {
        out.type_series.push(out.count.len() as u32);
    }
    out
}

const EMPTY_NODE: GeoNode = GeoNode {
    min_lat: f64::INFINITY,
    max_lat: f64::NEG_INFINITY,
    min_lon: f64::INFINITY,
    max_lon: f64::NEG_INFINITY,
    count: 0,
    sum_hi: 0.0,
    sum_lo: 0.0,
};

/// The node holding the points of `a` and `b`.
fn join(a: &GeoNode, b: &GeoNode) -> GeoNode {
    let sum = DoubleDouble::new(a.sum_hi, a.sum_lo) + DoubleDouble::new(b.sum_hi, b.sum_lo);
    GeoNode {
        min_lat: a.min_lat.min(b.min_lat),
        max_lat: a.max_lat.max(b.max_lat),
        min_lon: a.min_lon.min(b.min_lon),
        max_lon: a.max_lon.max(b.max_lon),
        count: a.count + b.count,
        sum_hi: sum.hi,
        sum_lo: sum.lo,
    }
}

/// What the k-d build orders: a point, or a device's extent.
trait Spread {
    /// The node of this one entry.
    fn node(&self) -> GeoNode;
    /// Where it sorts on the latitude (`lat`) or longitude axis.
    fn key(&self, lat: bool) -> f64;
}

impl Spread for GeoPoint {
    fn node(&self) -> GeoNode {
        GeoNode {
            min_lat: self.lat,
            max_lat: self.lat,
            min_lon: self.lon,
            max_lon: self.lon,
            count: self.count,
            sum_hi: self.sum_hi,
            sum_lo: self.sum_lo,
        }
    }
    fn key(&self, lat: bool) -> f64 {
        if lat {
            self.lat
        } else {
            self.lon
        }
    }
}

/// A device's extent in the build: its series (counted from its type's
/// first), the box on the grid and in degrees, and the series' totals.
#[derive(Clone, Copy)]
struct Extent {
    series: u32,
    grid: extents::GridBox,
    node: GeoNode,
}

impl Spread for Extent {
    fn node(&self) -> GeoNode {
        self.node
    }
    fn key(&self, lat: bool) -> f64 {
        if lat {
            self.node.min_lat + self.node.max_lat
        } else {
            self.node.min_lon + self.node.max_lon
        }
    }
}

/// Reorders `items` into k-d order (split on lat, then lon) and fills the
/// heap-layout `nodes`: leaves from their items, inner nodes from their
/// children.
fn build_tree<T: Spread>(items: &mut [T], nodes: &mut [GeoNode], i: usize, depth: u32, max: u32) {
    if depth == max || items.is_empty() {
        nodes[i] = items.iter().fold(EMPTY_NODE, |n, p| join(&n, &p.node()));
        return;
    }
    let mid = items.len() / 2;
    let lat = depth.is_multiple_of(2);
    items.select_nth_unstable_by(mid, |a, b| a.key(lat).total_cmp(&b.key(lat)));
    let (left, right) = items.split_at_mut(mid);
    build_tree(left, nodes, 2 * i + 1, depth + 1, max);
    build_tree(right, nodes, 2 * i + 2, depth + 1, max);
    nodes[i] = join(&nodes[2 * i + 1], &nodes[2 * i + 2]);
}

/// `items` in k-d order, appended with their tree's nodes to `nodes`.
fn append_tree<T: Spread>(items: &mut [T], nodes: &mut Vec<GeoNode>) {
    let base = nodes.len();
    let n = items.len();
    nodes.resize(
        base + kd_nodes(n, GEO_LEAF_POINTS),
        bytemuck::Zeroable::zeroed(),
    );
    if n > 0 {
        let max = kd_depth(n, GEO_LEAF_POINTS);
        build_tree(items, &mut nodes[base..], 0, 0, max);
    }
}

/// The extents of type `t` of `series` (see [`extents`]), or none when
/// some of its locations are not at hand.
fn extents_of(inputs: &[Input], name: &str, series: &Series, t: usize) -> Vec<Extent> {
    let range = series.type_series[t] as usize..series.type_series[t + 1] as usize;
    let Some(boxes) = extents::gather(inputs, name, &series.devices[range.clone()]) else {
        return Vec::new();
    };
    boxes
        .into_iter()
        .zip(range)
        .enumerate()
        .map(|(j, (grid, s))| {
            let [min_lat, max_lat, min_lon, max_lon] = extents::degrees(&grid);
            Extent {
                series: j as u32,
                grid,
                node: GeoNode {
                    min_lat,
                    max_lat,
                    min_lon,
                    max_lon,
                    count: series.count[s],
                    sum_hi: series.sum_hi[s],
                    sum_lo: series.sum_lo[s],
                },
            }
        })
        .collect()
}

/// Writes the summary of `inputs` for the block (`level`, `first_day`) at
/// `path`, fsynced before returning. Returns (events, bytes).
pub fn write_summary(
    inputs: &[Input],
    level: u32,
    first_day: i64,
    path: &Path,
) -> Result<(u64, u64)> {
    inputs.iter().try_for_each(Input::verify)?;
    let decoded: Vec<Option<Decoded>> = inputs
        .iter()
        .map(|input| match input {
            Input::Summary(s, _) => s.decoded_devices(),
            Input::Segment(s) => s.decoded_devices(),
        })
        .collect();
    let series = merge_series(inputs, &decoded);
    inputs.iter().for_each(Input::release_memory);
    let w = SectionWriter::create(&FORMAT, path)?;
    write_sections(w, series, inputs, level, first_day).map_err(Error::io("write summary", path))
}

fn write_sections(
    mut w: SectionWriter,
    series: Series,
    inputs: &[Input],
    level: u32,
    first_day: i64,
) -> std::io::Result<(u64, u64)> {
    let types = series.types_off.len() - 1;
    let events: u64 = series.count.iter().sum();
    // Top-K sorted access: per type, series by count descending (stable, so
    // ties stay in device order).
    let mut topk: Vec<i64> = Vec::with_capacity(series.count.len());
    for r in series.type_series.windows(2) {
        let mut s: Vec<u32> = (r[0]..r[1]).collect();
        s.sort_by_key(|&s| Reverse(series.count[s as usize]));
        topk.extend(s.into_iter().map(i64::from));
    }
    let type_names: Vec<String> = (0..types)
        .map(|t| {
            let (a, b) = (
                series.types_off[t] as usize,
                series.types_off[t + 1] as usize,
            );
            String::from_utf8_lossy(&series.types_blob[a..b]).into_owned()
        })
        .collect();
    let b = bytemuck::cast_slice::<u32, u8>;
    w.section(&series.types_blob)?;
    w.section(b(&series.types_off))?;
    w.section(b(&series.type_series))?;
    let devices = Dictionary::of(&series.devices);
    let (names, name_blocks) = devices.front_coded();
    w.section(&names)?;
    w.section(&Packer::ints(&name_blocks))?;
    let counts: Vec<i64> = series.count.iter().map(|&c| c as i64).collect();
    w.section(&Packer::ints(&counts))?;
    w.section(&Packer::floats(&series.sum_hi))?;
    w.section(&Packer::floats(&series.sum_lo))?;
    w.section(&Packer::ints(&topk))?;
    let series_count = series.count.len() as u64;
    drop(topk);

    let mut type_points = vec![0u32];
    let mut type_nodes = vec![0u32];
    let mut nodes: Vec<GeoNode> = Vec::new();
    // The kept points of every type, column by column.
    let mut columns: [Vec<f64>; 4] = Default::default();
    let mut point_counts: Vec<i64> = Vec::new();
    let mut type_extents = vec![0u32];
    let mut type_extent_nodes = vec![0u32];
    let mut extent_nodes: Vec<GeoNode> = Vec::new();
    // The extents of every type without points: series, then the grid box
    // as least latitude, span, least longitude, span.
    let mut extent_columns: [Vec<i64>; 5] = Default::default();
    for (t, name) in type_names.iter().enumerate() {
        let mut points = points::gather(inputs, name, points::FOLD_BATCH).points;
        append_tree(&mut points[..], &mut nodes);
        for p in &points {
            for (column, x) in columns.iter_mut().zip([p.lat, p.lon, p.sum_hi, p.sum_lo]) {
                column.push(x);
            }
            point_counts.push(p.count as i64);
        }
        type_points.push(type_points[type_points.len() - 1] + points.len() as u32);
        type_nodes.push(nodes.len() as u32);

        let mut extents = if points.is_empty() {
            extents_of(inputs, name, &series, t)
        } else {
            Vec::new()
        };
        append_tree(&mut extents[..], &mut extent_nodes);
        for e in &extents {
            let g = e.grid;
            let row = [i64::from(e.series), g[0], g[1] - g[0], g[2], g[3] - g[2]];
            for (column, x) in extent_columns.iter_mut().zip(row) {
                column.push(x);
            }
        }
        type_extents.push(type_extents[type_extents.len() - 1] + extents.len() as u32);
        type_extent_nodes.push(extent_nodes.len() as u32);
    }
    drop(series);
    let [lat, lon, sum_hi, sum_lo] = columns;
    let nodes: Vec<CompactGeoNode> = nodes.iter().map(CompactGeoNode::of).collect();
    w.section(&Packer::floats(&lat))?;
    w.section(b(&type_points))?;
    w.section(bytemuck::cast_slice(&nodes))?;
    w.section(b(&type_nodes))?;
    w.section(&Packer::floats(&lon))?;
    w.section(&Packer::ints(&point_counts))?;
    w.section(&Packer::floats(&sum_hi))?;
    w.section(&Packer::floats(&sum_lo))?;
    w.section(&Packer::ints(&devices.index))?;
    for column in &extent_columns {
        w.section(&Packer::ints(column))?;
    }
    w.section(b(&type_extents))?;
    let extent_nodes: Vec<CompactGeoNode> = extent_nodes.iter().map(CompactGeoNode::of).collect();
    w.section(bytemuck::cast_slice(&extent_nodes))?;
    w.section(b(&type_extent_nodes))?;
    let bytes = w.finish(&[
        types as u64,
        series_count,
        u64::from(type_points[types]),
        nodes.len() as u64,
        u64::from(level),
        first_day as u64,
        events,
        GEO_LEAF_POINTS as u64,
        devices.len() as u64,
        u64::from(type_extents[types]),
        extent_nodes.len() as u64,
    ])?;
    Ok((events, bytes))
}
