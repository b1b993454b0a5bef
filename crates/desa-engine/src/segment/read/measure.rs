//! Measures the column encodings against the alternatives DESIGN weighs,
//! on the segments of a real data dir: `DESA_MEASURE_DIR=DATA_DIR cargo
//! test --release -p desa-engine measure_encodings -- --ignored
//! --nocapture`. For each column: the packed section as stored, the raw
//! 8-byte values, zstd (level 3) over the raw values, and zstd over their
//! deltas (each value minus the one before, as bits), in bytes per event.

use std::collections::BTreeMap;

use super::super::*;
use super::Segment;

/// (packed, raw, zstd, zstd of deltas) bytes of one column.
#[derive(Default)]
struct Sizes([u64; 4]);

fn add(sizes: &mut Sizes, packed: usize, values: &[u64]) {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut last = 0u64;
    let deltas: Vec<u8> = values
        .iter()
        .flat_map(|&v| {
            let d = v.wrapping_sub(last);
            last = v;
            d.to_le_bytes()
        })
        .collect();
    let zstd = |b: &[u8]| zstd::bulk::compress(b, 3).map_or(0, |c| c.len());
    for (slot, n) in sizes
        .0
        .iter_mut()
        .zip([packed, raw.len(), zstd(&raw), zstd(&deltas)])
    {
        *slot += n as u64;
    }
}

#[test]
#[ignore]
fn measure_encodings() {
    let Ok(dir) = std::env::var("DESA_MEASURE_DIR") else {
        eprintln!("set DESA_MEASURE_DIR to a data dir");
        return;
    };
    let mut columns: BTreeMap<&str, Sizes> = BTreeMap::new();
    let mut events = 0u64;
    for entry in std::fs::read_dir(std::path::Path::new(&dir).join("segments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let seg = Segment::open(&path, 0).unwrap();
        if seg.version() < 4 {
            continue;
        }
        let rows = seg.meta.rows as usize;
        events += rows as u64;
        let size = |s: usize| seg.bytes(s).len();
        let per_row = |f: &dyn Fn(usize) -> u64| (0..rows).map(f).collect::<Vec<u64>>();
        let (lat, lon) = (seg.packed(S_KD_LAT), seg.packed(S_KD_LON));
        let (time_ts, time_series) = (seg.packed(S_TIME_TS), seg.packed(S_TIME_SERIES));
        let kd_row = seg.packed(S_KD_ROW);
        let measured: [(&str, usize, Vec<u64>); 7] = [
            ("timestamps", S_TS, per_row(&|i| seg.ts(i) as u64)),
            ("values", S_VALUE, per_row(&|i| seg.value(i).to_bits())),
            (
                "latitudes (k-d order)",
                S_KD_LAT,
                per_row(&|i| lat.float(i).to_bits()),
            ),
            (
                "longitudes (k-d order)",
                S_KD_LON,
                per_row(&|i| lon.float(i).to_bits()),
            ),
            ("k-d rows", S_KD_ROW, per_row(&|i| kd_row.int(i) as u64)),
            (
                "time order: timestamps",
                S_TIME_TS,
                per_row(&|i| time_ts.int(i) as u64),
            ),
            (
                "time order: series",
                S_TIME_SERIES,
                per_row(&|i| time_series.int(i) as u64),
            ),
        ];
        for (name, section, values) in measured {
            add(columns.entry(name).or_default(), size(section), &values);
        }
    }
    assert!(events > 0, "no format 4 segment in {dir}");
    eprintln!("bytes per event over {events} events: packed | raw | zstd | zstd of deltas");
    for (name, s) in &columns {
        let [p, r, z, d] = s.0.map(|b| b as f64 / events as f64);
        eprintln!("{name:26} {p:6.2} | {r:6.2} | {z:6.2} | {d:6.2}");
    }
}
