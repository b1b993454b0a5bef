//! Writing a segment from rows held in memory.

use std::path::Path;

use desa_model::DoubleDouble;

use super::kd::{self, CompactNode, KdNode, KdPoint};
use super::*;
use crate::error::{Error, Result};
use crate::head::Rows;
use crate::names::Dictionary;
use crate::packed::{self, Packer};
use crate::sections::SectionWriter;

/// Double-double prefix sums of `values` at every [`packed::BLOCK`]th row
/// and after the last: `(hi, lo)`, `blocks + 1` entries each.
fn block_prefix_sums(values: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let blocks = values.len().div_ceil(packed::BLOCK);
    let mut hi = Vec::with_capacity(blocks + 1);
    let mut lo = Vec::with_capacity(blocks + 1);
    let mut acc = DoubleDouble::ZERO;
    hi.push(0.0);
    lo.push(0.0);
    for block in values.chunks(packed::BLOCK) {
        for &v in block {
            acc = acc.add_f64(v);
        }
        hi.push(acc.hi);
        lo.push(acc.lo);
    }
    (hi, lo)
}

fn push_leb128(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push(x as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// The two metadata sections: zstd of the lengths (plus one; 0 for none)
/// and zstd of the texts.
fn metadata_sections(rows: &Rows, order: &[u32]) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut lens = Vec::with_capacity(order.len());
    let mut blob = Vec::new();
    for &r in order {
        match rows.metadata(r as usize) {
            Some(m) => {
                push_leb128(&mut lens, m.len() as u64 + 1);
                blob.extend_from_slice(m.as_bytes());
            }
            None => lens.push(0),
        }
    }
    Ok((
        zstd::bulk::compress(&lens, METADATA_ZSTD_LEVEL)?,
        zstd::bulk::compress(&blob, METADATA_ZSTD_LEVEL)?,
    ))
}

/// zstd's default level. Metadata is JSON text with repeated keys; with the
/// lengths, it takes 0.5 bytes per event at 10M events of which 10% carry
/// about 60 bytes (`docs/BENCHMARKS.md`, "Storage: segment format 3").
const METADATA_ZSTD_LEVEL: i32 = 3;

/// Ranks of dictionary ids in string order.
fn ranks(dict: &crate::head::Dict) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..dict.len() as u32).collect();
    ids.sort_unstable_by(|&a, &b| dict.name(a).cmp(dict.name(b)));
    let mut rank = vec![0u32; ids.len()];
    for (r, &id) in ids.iter().enumerate() {
        rank[id as usize] = r as u32;
    }
    rank
}

/// Writes the rows `subset` of `rows` (all in UTC day `partition`) as segment
/// `id` at `path`, fsynced before returning.
pub fn write_segment(
    rows: &Rows,
    subset: &[u32],
    partition: i64,
    id: u64,
    path: &Path,
) -> Result<SegmentMeta> {
    build_segment(rows, subset, partition, id, path, true)
}

/// [`write_segment`], fsynced only when `sync` (a segment that is durable
/// elsewhere, such as a cluster worker's copy of a block, needs none).
pub(crate) fn build_segment(
    rows: &Rows,
    subset: &[u32],
    partition: i64,
    id: u64,
    path: &Path,
    sync: bool,
) -> Result<SegmentMeta> {
    let type_rank = ranks(&rows.types);
    let dev_rank = ranks(&rows.devices);
    // Sort keys computed once per row: comparisons then touch one array.
    let mut keyed: Vec<(u64, i64, u32)> = subset
        .iter()
        .map(|&r| {
            let i = r as usize;
            let series = (u64::from(type_rank[rows.type_id[i] as usize]) << 32)
                | u64::from(dev_rank[rows.device_id[i] as usize]);
            (series, rows.ts[i], r)
        })
        .collect();
    keyed.sort_unstable();
    let order: Vec<u32> = keyed.into_iter().map(|k| k.2).collect();
    let n = order.len();

    let mut types_blob = Vec::new();
    let mut types_off = vec![0u32];
    let mut type_series = vec![0u32];
    let mut type_rows = vec![0u32];
    let mut series_names: Vec<&str> = Vec::new();
    let mut series_row = vec![0i64];
    let mut row_series: Vec<u32> = Vec::with_capacity(n);
    for (i, &r) in order.iter().enumerate() {
        let (t, d) = (rows.type_id[r as usize], rows.device_id[r as usize]);
        let new_type = i == 0 || rows.type_id[order[i - 1] as usize] != t;
        let new_series = new_type || rows.device_id[order[i - 1] as usize] != d;
        if new_type && i > 0 {
            type_series.push(series_row.len() as u32);
            type_rows.push(i as u32);
        }
        if new_type {
            types_blob.extend_from_slice(rows.types.name(t).as_bytes());
            types_off.push(types_blob.len() as u32);
        }
        if new_series && i > 0 {
            series_row.push(i as i64);
        }
        if new_series {
            series_names.push(rows.devices.name(d));
        }
        row_series.push((series_names.len() - 1) as u32);
    }
    if n > 0 {
        type_series.push(series_row.len() as u32);
        type_rows.push(n as u32);
        series_row.push(n as i64);
    }
    let type_count = types_off.len() - 1;
    let series_count = series_names.len();
    let devices = Dictionary::of(&series_names);
    drop(series_names);

    let ts: Vec<i64> = order.iter().map(|&r| rows.ts[r as usize]).collect();
    let value: Vec<f64> = order.iter().map(|&r| rows.value[r as usize]).collect();
    let lat: Vec<f64> = order.iter().map(|&r| rows.lat[r as usize]).collect();
    let lon: Vec<f64> = order.iter().map(|&r| rows.lon[r as usize]).collect();
    let (prefix_hi, prefix_lo) = block_prefix_sums(&value);
    let (meta_lens, meta_blob) =
        metadata_sections(rows, &order).map_err(Error::io("compress metadata of", path))?;

    // Top-K sorted access: per type, series by count descending; the sort is
    // stable, so ties stay in device order.
    let mut topk: Vec<i64> = Vec::with_capacity(series_count);
    for t in 0..type_count {
        let mut s: Vec<u32> = (type_series[t]..type_series[t + 1]).collect();
        s.sort_by_key(|&s| std::cmp::Reverse(series_row[s as usize + 1] - series_row[s as usize]));
        topk.extend(s.into_iter().map(i64::from));
    }

    let min_ts = ts.iter().copied().min().unwrap_or(0);
    let max_ts = ts.iter().copied().max().unwrap_or(0);

    // Top-K over a window that cuts the segment: per type, its rows in time
    // order, as (timestamp, series).
    let (mut time_ts, mut time_series) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for t in 0..type_count {
        let rows = type_rows[t] as usize..type_rows[t + 1] as usize;
        let mut by_time: Vec<(i64, u32)> = rows.map(|i| (ts[i], row_series[i])).collect();
        by_time.sort_unstable();
        time_ts.extend(by_time.iter().map(|e| e.0));
        time_series.extend(by_time.iter().map(|e| i64::from(e.1)));
    }

    // Geo: a k-d tree per type over that type's rows.
    let mut points: Vec<kd::Entry> = (0..n)
        .map(|i| kd::Entry {
            point: KdPoint {
                lat: lat[i],
                lon: lon[i],
                ts: ts[i],
                value: value[i],
            },
            row: i as u32,
        })
        .collect();
    drop((lat, lon));
    let mut nodes: Vec<KdNode> = Vec::new();
    let mut type_nodes = vec![0u32];
    for t in 0..type_count {
        let (lo, hi) = (type_rows[t] as usize, type_rows[t + 1] as usize);
        let count = kd_nodes(hi - lo, KD_LEAF_ROWS);
        let base = nodes.len();
        nodes.resize(base + count, bytemuck::Zeroable::zeroed());
        kd::build(
            &mut points[lo..hi],
            &mut nodes[base..],
            kd_depth(hi - lo, KD_LEAF_ROWS),
        );
        type_nodes.push(nodes.len() as u32);
    }
    let nodes: Vec<CompactNode> = nodes.iter().map(|x| CompactNode::of(x, min_ts)).collect();
    let kd_lat: Vec<f64> = points.iter().map(|p| p.point.lat).collect();
    let kd_lon: Vec<f64> = points.iter().map(|p| p.point.lon).collect();
    let kd_row: Vec<i64> = points.iter().map(|p| i64::from(p.row)).collect();
    drop(points);

    let b = bytemuck::cast_slice::<u32, u8>;
    let w = SectionWriter::create(&FORMAT, path)?;
    let write = |mut w: SectionWriter| -> std::io::Result<u64> {
        w.section(&types_blob)?;
        w.section(b(&types_off))?;
        w.section(b(&type_series))?;
        w.section(b(&type_rows))?;
        let (names, name_blocks) = devices.front_coded();
        w.section(&names)?;
        w.section(&Packer::ints(&name_blocks))?;
        w.section(&Packer::ints(&series_row))?;
        w.section(&Packer::ints(&ts))?;
        w.section(&Packer::floats(&value))?;
        w.section(bytemuck::cast_slice(&prefix_hi))?;
        w.section(bytemuck::cast_slice(&prefix_lo))?;
        w.section(&[])?;
        w.section(&[])?;
        w.section(&meta_lens)?;
        w.section(&meta_blob)?;
        w.section(&Packer::ints(&topk))?;
        w.section(&Packer::floats(&kd_lat))?;
        w.section(bytemuck::cast_slice(&nodes))?;
        w.section(b(&type_nodes))?;
        w.section(&Packer::ints(&time_ts))?;
        w.section(&Packer::ints(&time_series))?;
        w.section(&Packer::floats(&kd_lon))?;
        w.section(&Packer::ints(&kd_row))?;
        w.section(&Packer::ints(&devices.index))?;
        let words = [
            n as u64,
            series_count as u64,
            type_count as u64,
            nodes.len() as u64,
            min_ts as u64,
            max_ts as u64,
            partition as u64,
            KD_LEAF_ROWS as u64,
            devices.len() as u64,
        ];
        if sync {
            w.finish(&words)
        } else {
            w.finish_unsynced(&words)
        }
    };
    let bytes = write(w).map_err(Error::io("write segment", path))?;
    Ok(SegmentMeta {
        id,
        partition,
        rows: n as u64,
        min_ts,
        max_ts,
        bytes,
    })
}
