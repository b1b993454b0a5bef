//! The head: the newest acknowledged events, in memory, indexed for the three
//! queries, until they are flushed to a segment. Every event here is also in
//! the write-ahead log, so the head is rebuilt by replay after a crash.
//!
//! The head is bounded by `head_max_rows` and `head_max_bytes`; queries scan at most the rows of one
//! series (avg) or of one type (top-K, geo) in it. A top-K window that holds
//! every row of the head reads none: each type's series are kept in order of
//! count as they are inserted ([`ByCount`]), which the threshold algorithm
//! reads from the top. A geo window that holds every row of the head reads
//! each type's 1° cells: a cell inside the box adds its count and sum, one
//! cut by the box's edge is read row by row, one outside is skipped.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// The head's maps are keyed by interned ids and by device names from
/// clients: foldhash is several times faster than SipHash here and, seeded
/// per process, still hard to flood with colliding keys.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use desa_model::{DoubleDouble, Event, GeoBox, TimeWindow};

/// Interned strings: id order is insertion order, not string order.
#[derive(Debug, Default)]
pub struct Dict {
    ids: FastMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Dict {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(Box::from(s));
        self.ids.insert(Box::from(s), id);
        id
    }
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One event's fields, borrowed, on their way into [`Rows`].
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    pub event_type: &'a str,
    pub device: &'a str,
    pub ts: i64,
    pub value: f64,
    pub lat: f64,
    pub lon: f64,
    pub meta: Option<&'a str>,
}

impl<'a> NewRow<'a> {
    /// The row of an event.
    pub fn of(e: &'a Event) -> Self {
        NewRow {
            event_type: &e.event_type,
            device: &e.device_id,
            ts: e.ts_secs,
            value: e.value,
            lat: e.latitude,
            lon: e.longitude,
            meta: e.metadata.as_deref(),
        }
    }
}

/// Events as columns with interned type and device.
#[derive(Debug, Default)]
pub struct Rows {
    pub types: Dict,
    pub devices: Dict,
    pub type_id: Vec<u32>,
    pub device_id: Vec<u32>,
    pub ts: Vec<i64>,
    pub value: Vec<f64>,
    pub lat: Vec<f64>,
    pub lon: Vec<f64>,
    /// `meta_end[i]` is where row i's metadata ends in `meta`, and
    /// `meta_present[i]` whether row i has any.
    pub meta_end: Vec<u64>,
    pub meta_present: Vec<bool>,
    pub meta: String,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn push(&mut self, row: NewRow<'_>) {
        let t = self.types.intern(row.event_type);
        let d = self.devices.intern(row.device);
        self.push_interned(t, d, row);
    }

    /// Pushes a row whose type and device are already interned as `t`, `d`
    /// (the names in `row` are not read).
    pub fn push_interned(&mut self, t: u32, d: u32, row: NewRow<'_>) {
        self.type_id.push(t);
        self.device_id.push(d);
        self.ts.push(row.ts);
        self.value.push(row.value);
        self.lat.push(row.lat);
        self.lon.push(row.lon);
        if let Some(m) = row.meta {
            self.meta.push_str(m);
        }
        self.meta_present.push(row.meta.is_some());
        self.meta_end.push(self.meta.len() as u64);
    }

    pub fn metadata(&self, row: usize) -> Option<&str> {
        if !self.meta_present[row] {
            return None;
        }
        let start = if row == 0 {
            0
        } else {
            self.meta_end[row - 1] as usize
        };
        Some(&self.meta[start..self.meta_end[row] as usize])
    }
}

/// End of a series chain in [`Head`].
const NO_ROW: u32 = u32::MAX;

/// One type's series (by device id) in descending order of their row
/// counts, kept in order in O(1) per insert: a series whose count goes from
/// `c` to `c + 1` trades places with the first series of count `c`.
#[derive(Debug, Default)]
pub struct ByCount {
    /// Device ids, count descending.
    pub devices: Vec<u32>,
    /// `counts[i]` is the row count of `devices[i]`.
    pub counts: Vec<u32>,
    /// `first[c]`: index of the first series of count `c`, when one has it
    /// (valid only while `counts[first[c]] == c`).
    first: Vec<u32>,
}

impl ByCount {
    /// The index of the first series of count `c`, if any series has it.
    fn first_of(&self, c: u32) -> Option<usize> {
        let i = *self.first.get(c as usize)? as usize;
        (self.counts.get(i) == Some(&c)).then_some(i)
    }

    fn set_first(&mut self, c: u32, i: usize) {
        if self.first.len() <= c as usize {
            self.first.resize(c as usize + 1, u32::MAX);
        }
        self.first[c as usize] = i as u32;
    }

    /// Adds a new series of count 1 (the lowest count: it goes last).
    /// Returns its index.
    fn push(&mut self, device: u32) -> usize {
        let i = self.devices.len();
        self.devices.push(device);
        self.counts.push(1);
        if self.first_of(1).is_none() {
            self.set_first(1, i);
        }
        i
    }

    /// Counts one more row for the series at `i`. Returns the index it
    /// moved to and, when it traded places, the device now at `i`.
    fn bump(&mut self, i: usize) -> (usize, Option<u32>) {
        let c = self.counts[i];
        // The block of count `c` holds `i`, so it has a first index.
        let j = self.first_of(c).unwrap_or(i);
        let grown_block_exists = self.first_of(c + 1).is_some();
        self.devices.swap(i, j);
        self.counts[j] = c + 1;
        // The block of count `c` now starts one later (or is empty), and the
        // block of `c + 1` ends at `j`, or starts there if it is new.
        self.set_first(c, j + 1);
        if !grown_block_exists {
            self.set_first(c + 1, j);
        }
        (j, (i != j).then(|| self.devices[i]))
    }
}

/// One type's rows in one 1° cell: count, sum and newest row (earlier rows
/// chain back through [`Head`]'s `cell_prev`).
#[derive(Debug, Clone, Copy)]
struct CellRows {
    count: u64,
    sum: DoubleDouble,
    last: u32,
}

/// The 1° cell of a location as one key: latitude and longitude cells,
/// each floored (90 and 180 get cells of their own).
fn cell_key(lat: f64, lon: f64) -> i32 {
    (lat.floor() as i32 + 90) * 512 + (lon.floor() as i32 + 180)
}

/// The south-west corner of a [`cell_key`]'s cell.
fn cell_corner(key: i32) -> (f64, f64) {
    (f64::from(key / 512 - 90), f64::from(key % 512 - 180))
}

/// Rows plus the indexes the queries need.
#[derive(Debug, Default)]
pub struct Head {
    pub rows: Rows,
    /// Newest row of each (type, device) series and the series' place in
    /// its type's [`ByCount`]; `series_prev[row]` is the series' row before
    /// `row` ([`NO_ROW`] at its first). A chain through the rows instead of a
    /// vector per series: no allocation per series.
    series_last: FastMap<(u32, u32), (u32, u32)>,
    series_prev: Vec<u32>,
    /// Each type's series in order of count.
    by_count: Vec<ByCount>,
    /// Each (type, 1° cell)'s rows; `cell_prev[row]` is the cell's row
    /// before `row` ([`NO_ROW`] at its first).
    cells: FastMap<(u32, i32), CellRows>,
    cell_prev: Vec<u32>,
    /// The cells of each type that hold rows.
    type_cells: Vec<Vec<i32>>,
    /// Rows of each type, in arrival order.
    by_type: Vec<Vec<u32>>,
    /// Each type's first and last event time.
    type_span: Vec<(i64, i64)>,
    pub min_ts: i64,
    pub max_ts: i64,
}

impl Head {
    pub fn new() -> Self {
        Head {
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            ..Head::default()
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Approximate heap bytes held: columns, indexes, metadata text and
    /// interned strings.
    pub fn approx_bytes(&self) -> usize {
        const PER_ROW: usize = 4 + 4 + 8 * 5 + 1 + 4 + 4 + 4; // columns + three index entries
        self.rows.len() * PER_ROW
            + self.rows.meta.len()
            + self.rows.devices.len() * 64
            + self.series_last.len() * 40
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn insert(&mut self, e: &Event) {
        let row = self.rows.len() as u32;
        self.rows.push(NewRow::of(e));
        let t = self.rows.type_id[row as usize];
        let d = self.rows.device_id[row as usize];
        if self.by_type.len() <= t as usize {
            self.by_type.resize_with(t as usize + 1, Vec::new);
            self.by_count.resize_with(t as usize + 1, ByCount::default);
            self.type_cells.resize_with(t as usize + 1, Vec::new);
            self.type_span.resize(t as usize + 1, (i64::MAX, i64::MIN));
        }
        let span = &mut self.type_span[t as usize];
        *span = (span.0.min(e.ts_secs), span.1.max(e.ts_secs));
        let cell = cell_key(e.latitude, e.longitude);
        let cell_prev = match self.cells.entry((t, cell)) {
            Entry::Occupied(mut o) => {
                let c = o.get_mut();
                c.count += 1;
                c.sum = c.sum.add_f64(e.value);
                std::mem::replace(&mut c.last, row)
            }
            Entry::Vacant(v) => {
                v.insert(CellRows {
                    count: 1,
                    sum: DoubleDouble::ZERO.add_f64(e.value),
                    last: row,
                });
                self.type_cells[t as usize].push(cell);
                NO_ROW
            }
        };
        self.cell_prev.push(cell_prev);
        let order = &mut self.by_count[t as usize];
        let prev = match self.series_last.entry((t, d)) {
            Entry::Occupied(mut o) => {
                let (prev, at) = *o.get();
                let (moved_to, displaced) = order.bump(at as usize);
                o.insert((row, moved_to as u32));
                if let Some(other) = displaced {
                    // The series that held `moved_to` now sits at `at`.
                    if let Some(slot) = self.series_last.get_mut(&(t, other)) {
                        slot.1 = at;
                    }
                }
                prev
            }
            Entry::Vacant(v) => {
                v.insert((row, order.push(d) as u32));
                NO_ROW
            }
        };
        self.series_prev.push(prev);
        self.by_type[t as usize].push(row);
        self.min_ts = self.min_ts.min(e.ts_secs);
        self.max_ts = self.max_ts.max(e.ts_secs);
    }

    /// Each type's rows and first and last event time.
    pub fn type_stats(&self) -> Vec<desa_model::TypeStats> {
        self.by_type
            .iter()
            .zip(&self.type_span)
            .enumerate()
            .filter(|(_, (rows, _))| !rows.is_empty())
            .map(|(t, (rows, &(first, last)))| desa_model::TypeStats {
                event_type: self.rows.types.name(t as u32).to_owned(),
                events: rows.len() as u64,
                first,
                last,
            })
            .collect()
    }

    /// Count and sum of one series in the window.
    pub fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> (u64, DoubleDouble) {
        let (Some(t), Some(d)) = (
            self.rows.types.get(event_type),
            self.rows.devices.get(device),
        ) else {
            return (0, DoubleDouble::ZERO);
        };
        let mut count = 0;
        let mut sum = DoubleDouble::ZERO;
        let mut r = self.series_last.get(&(t, d)).map_or(NO_ROW, |s| s.0);
        while r != NO_ROW {
            if w.contains(self.rows.ts[r as usize]) {
                count += 1;
                sum = sum.add_f64(self.rows.value[r as usize]);
            }
            r = self.series_prev[r as usize];
        }
        (count, sum)
    }

    /// Count and sum of one type's rows inside the box, whatever their time.
    fn geo_by_cell(&self, t: u32, bbox: &GeoBox) -> (u64, DoubleDouble) {
        let mut count = 0;
        let mut sum = DoubleDouble::ZERO;
        let lons = bbox.lon_ranges();
        for &key in &self.type_cells[t as usize] {
            // Rows of the cell lie in [lat0, lat0 + 1) x [lon0, lon0 + 1).
            let (lat0, lon0) = cell_corner(key);
            let (lat1, lon1) = (lat0 + 1.0, lon0 + 1.0);
            let outside = bbox.max_lat < lat0
                || bbox.min_lat >= lat1
                || lons.iter().all(|&(a, b)| b < lon0 || a >= lon1);
            let Some(cell) = self.cells.get(&(t, key)).filter(|_| !outside) else {
                continue;
            };
            let inside = bbox.min_lat <= lat0
                && lat1 <= bbox.max_lat
                && lons.iter().any(|&(a, b)| a <= lon0 && lon1 <= b);
            if inside {
                count += cell.count;
                sum = sum + cell.sum;
                continue;
            }
            let mut r = cell.last;
            while r != NO_ROW {
                let i = r as usize;
                if bbox.contains(self.rows.lat[i], self.rows.lon[i]) {
                    count += 1;
                    sum = sum.add_f64(self.rows.value[i]);
                }
                r = self.cell_prev[i];
            }
        }
        (count, sum)
    }

    /// True when the window holds every row of the head.
    pub fn within(&self, w: TimeWindow) -> bool {
        !self.is_empty() && w.contains(self.min_ts) && w.contains(self.max_ts)
    }

    /// True when the window holds no row of the head.
    pub fn outside(&self, w: TimeWindow) -> bool {
        self.is_empty() || self.max_ts < w.start || self.min_ts >= w.end
    }

    /// Interned id of a type, if the head holds it.
    pub fn type_id(&self, event_type: &str) -> Option<u32> {
        self.rows.types.get(event_type)
    }

    /// A type's series in order of count (all of the head's rows).
    pub fn by_count(&self, t: u32) -> &ByCount {
        &self.by_count[t as usize]
    }

    /// Rows of one series, in the whole head.
    pub fn series_rows(&self, t: u32, device: &str) -> u64 {
        self.rows
            .devices
            .get(device)
            .and_then(|d| self.series_last.get(&(t, d)))
            .map_or(0, |&(_, at)| {
                u64::from(self.by_count[t as usize].counts[at as usize])
            })
    }

    /// Event count per device of one type in the window.
    pub fn device_counts(&self, event_type: &str, w: TimeWindow) -> HashMap<&str, u64> {
        let mut counts: FastMap<u32, u64> = FastMap::default();
        if let Some(t) = self.rows.types.get(event_type).filter(|_| !self.outside(w)) {
            for &r in &self.by_type[t as usize] {
                if w.contains(self.rows.ts[r as usize]) {
                    *counts.entry(self.rows.device_id[r as usize]).or_default() += 1;
                }
            }
        }
        counts
            .into_iter()
            .map(|(d, c)| (self.rows.devices.name(d), c))
            .collect()
    }

    /// Count and sum of one type inside the box and window.
    pub fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> (u64, DoubleDouble) {
        let mut count = 0;
        let mut sum = DoubleDouble::ZERO;
        if let Some(t) = self.rows.types.get(event_type).filter(|_| !self.outside(w)) {
            if self.within(w) {
                return self.geo_by_cell(t, bbox);
            }
            for &r in &self.by_type[t as usize] {
                let r = r as usize;
                if w.contains(self.rows.ts[r]) && bbox.contains(self.rows.lat[r], self.rows.lon[r])
                {
                    count += 1;
                    sum = sum.add_f64(self.rows.value[r]);
                }
            }
        }
        (count, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn event(ty: &str, device: &str, ts: i64) -> Event {
        Event {
            device_id: device.to_owned(),
            ts_secs: ts,
            event_type: ty.to_owned(),
            value: 1.0,
            latitude: 0.0,
            longitude: 0.0,
            metadata: None,
        }
    }

    /// A coordinate that is often on a cell edge, a pole or the antimeridian.
    fn coordinate(rng: &mut StdRng, lim: f64) -> f64 {
        match rng.gen_range(0..4) {
            0 => rng.gen_range(-lim..=lim),
            1 => f64::from(rng.gen_range(-lim as i32..=lim as i32)),
            2 => [lim, -lim, 0.0, -0.0][rng.gen_range(0..4)],
            _ => f64::from(rng.gen_range(-3..3)) + [0.5, 0.999_999, 1e-9][rng.gen_range(0..3)],
        }
    }

    /// Geo over a window that holds the whole head reads cells; it must
    /// answer as a scan of every row does, for boxes with edges on and off
    /// cell lines, across the antimeridian and at the poles.
    #[test]
    fn geo_by_cell_equals_a_scan() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut head = Head::new();
        let mut rows = Vec::new();
        for i in 0..3_000 {
            let mut e = event(["a", "b"][rng.gen_range(0..2)], "d", 100 + i);
            e.latitude = coordinate(&mut rng, 90.0);
            e.longitude = coordinate(&mut rng, 180.0);
            e.value = rng.gen_range(-50.0..50.0);
            head.insert(&e);
            rows.push(e);
        }
        let whole = TimeWindow::new(0, 10_000).unwrap();
        for _ in 0..2_000 {
            let (a, b) = (coordinate(&mut rng, 90.0), coordinate(&mut rng, 90.0));
            let (min_lon, max_lon) = (coordinate(&mut rng, 180.0), coordinate(&mut rng, 180.0));
            let bbox = GeoBox::new(a.min(b), a.max(b), min_lon, max_lon).unwrap();
            let got = head.geo("a", &bbox, whole);
            let mut want = (0u64, DoubleDouble::ZERO);
            for e in rows.iter().filter(|e| e.event_type == "a") {
                if bbox.contains(e.latitude, e.longitude) {
                    want = (want.0 + 1, want.1.add_f64(e.value));
                }
            }
            assert_eq!(got.0, want.0, "{bbox:?}");
            assert!((got.1.value() - want.1.value()).abs() <= 1e-9, "{bbox:?}");
        }
    }

    /// The count order stays sorted and exact under skewed random inserts,
    /// checked after every insert against counts kept by brute force.
    #[test]
    fn series_stay_in_order_of_count() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut head = Head::new();
        let mut want: HashMap<(String, String), u32> = HashMap::new();
        for i in 0..4_000 {
            let ty = ["a", "b"][rng.gen_range(0..2)];
            // Skewed: low device numbers are much more frequent.
            let spread = rng.gen_range(1..60);
            let d = format!("d{}", rng.gen_range(0..spread));
            head.insert(&event(ty, &d, i));
            *want.entry((ty.to_owned(), d)).or_default() += 1;
            for ty in ["a", "b"] {
                let Some(t) = head.type_id(ty) else { continue };
                let order = head.by_count(t);
                assert!(
                    order.counts.windows(2).all(|p| p[0] >= p[1]),
                    "{:?}",
                    order.counts
                );
                for (pos, &d) in order.devices.iter().enumerate() {
                    let name = head.rows.devices.name(d);
                    let n = want[&(ty.to_owned(), name.to_owned())];
                    assert_eq!(order.counts[pos], n, "{ty}/{name}");
                    assert_eq!(head.series_rows(t, name), u64::from(n), "{ty}/{name}");
                }
                let series = want.keys().filter(|(x, _)| x == ty).count();
                assert_eq!(order.devices.len(), series);
            }
        }
    }
}
