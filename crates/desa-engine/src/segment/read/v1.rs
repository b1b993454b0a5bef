//! Writing a segment in format version 1, for tests of how older files are
//! read.

use std::path::Path;

use desa_model::DoubleDouble;

use super::super::kd::{KdNode, KdPoint};
use super::super::*;
use super::Segment;

impl Segment {
    /// Writes this segment in format version 1 (fixed-width columns, no
    /// time order) at `path`, for tests of how older files are read.
    pub(crate) fn write_as_v1(&self, path: &Path) {
        use crate::sections::SectionWriter;
        let rows = self.meta.rows as usize;
        let mut w = SectionWriter::create(&FORMAT_V1, path).unwrap();
        for s in 0..S_DEV_BLOB {
            w.section(self.bytes(s)).unwrap();
        }
        // Each series with its own copy of its device's name.
        let series = self.file.words[1] as usize;
        let (mut dev_blob, mut dev_off) = (Vec::new(), vec![0u32]);
        for s in 0..series {
            dev_blob.extend_from_slice(self.series_device(s).as_bytes());
            dev_off.push(dev_blob.len() as u32);
        }
        let series_row: Vec<u32> = (0..=series).map(|s| self.series_row(s) as u32).collect();
        w.section(&dev_blob).unwrap();
        w.section(bytemuck::cast_slice(&dev_off)).unwrap();
        w.section(bytemuck::cast_slice(&series_row)).unwrap();
        let ts: Vec<i64> = (0..rows).map(|i| self.ts(i)).collect();
        let value: Vec<f64> = (0..rows).map(|i| self.value(i)).collect();
        let mut acc = DoubleDouble::ZERO;
        let (mut hi, mut lo) = (vec![0.0], vec![0.0]);
        for &v in &value {
            acc = acc.add_f64(v);
            hi.push(acc.hi);
            lo.push(acc.lo);
        }
        let (lat, lon): (Vec<f64>, Vec<f64>) = self.locations().unwrap().into_iter().unzip();
        let mut meta_off = vec![0u64];
        let mut blob = Vec::new();
        for m in self.metadata().unwrap() {
            blob.extend_from_slice(m.as_deref().unwrap_or("").as_bytes());
            meta_off.push(blob.len() as u64);
        }
        // The k-d trees again, with the older leaf size.
        let mut entries: Vec<super::kd::Entry> = (0..rows)
            .map(|r| super::kd::Entry {
                point: KdPoint {
                    lat: lat[r],
                    lon: lon[r],
                    ts: ts[r],
                    value: value[r],
                },
                row: r as u32,
            })
            .collect();
        let mut nodes: Vec<KdNode> = Vec::new();
        let mut type_nodes = vec![0u32];
        for t in 0..self.types {
            let range = self.type_rows(t);
            let base = nodes.len();
            let n = range.len();
            nodes.resize(
                base + kd_nodes(n, KD_LEAF_ROWS_V2),
                bytemuck::Zeroable::zeroed(),
            );
            super::kd::build(
                &mut entries[range],
                &mut nodes[base..],
                kd_depth(n, KD_LEAF_ROWS_V2),
            );
            type_nodes.push(nodes.len() as u32);
        }
        let points: Vec<KdPoint> = entries.iter().map(|e| e.point).collect();
        w.section(bytemuck::cast_slice(&ts)).unwrap();
        w.section(bytemuck::cast_slice(&value)).unwrap();
        w.section(bytemuck::cast_slice(&hi)).unwrap();
        w.section(bytemuck::cast_slice(&lo)).unwrap();
        w.section(bytemuck::cast_slice(&lat)).unwrap();
        w.section(bytemuck::cast_slice(&lon)).unwrap();
        w.section(bytemuck::cast_slice(&meta_off)).unwrap();
        w.section(&blob).unwrap();
        let topk: Vec<u32> = (0..self.types)
            .flat_map(|t| self.topk_order(t).iter().collect::<Vec<_>>())
            .collect();
        w.section(bytemuck::cast_slice(&topk)).unwrap();
        w.section(bytemuck::cast_slice(&points)).unwrap();
        w.section(bytemuck::cast_slice(&nodes)).unwrap();
        w.section(bytemuck::cast_slice(&type_nodes)).unwrap();
        let mut words = self.file.words[..FORMAT_V1.words].to_vec();
        words[3] = nodes.len() as u64;
        words[7] = KD_LEAF_ROWS_V2 as u64;
        w.finish(&words).unwrap();
    }
}
