//! The head: the newest acknowledged events, in memory, indexed for the three
//! queries, until they are flushed to a segment. Every event here is also in
//! the write-ahead log, so the head is rebuilt by replay after a crash.
//!
//! The head is bounded by `head_max_rows` and `head_max_bytes`; queries scan at most the rows of one
//! series (avg) or of one type (top-K, geo) in it.

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

/// Rows plus the indexes the queries need.
#[derive(Debug, Default)]
pub struct Head {
    pub rows: Rows,
    /// Newest row of each (type, device) series; `series_prev[row]` is the
    /// series' row before `row` ([`NO_ROW`] at its first). A chain through
    /// the rows instead of a vector per series: no allocation per series.
    series_last: FastMap<(u32, u32), u32>,
    series_prev: Vec<u32>,
    /// Rows of each type, in arrival order.
    by_type: Vec<Vec<u32>>,
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
        const PER_ROW: usize = 4 + 4 + 8 * 5 + 1 + 4 + 4; // columns + two index entries
        self.rows.len() * PER_ROW
            + self.rows.meta.len()
            + self.rows.devices.len() * 64
            + self.series_last.len() * 24
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn insert(&mut self, e: &Event) {
        let row = self.rows.len() as u32;
        self.rows.push(NewRow {
            event_type: &e.event_type,
            device: &e.device_id,
            ts: e.ts_secs,
            value: e.value,
            lat: e.latitude,
            lon: e.longitude,
            meta: e.metadata.as_deref(),
        });
        let t = self.rows.type_id[row as usize];
        let d = self.rows.device_id[row as usize];
        let prev = self.series_last.insert((t, d), row).unwrap_or(NO_ROW);
        self.series_prev.push(prev);
        if self.by_type.len() <= t as usize {
            self.by_type.resize_with(t as usize + 1, Vec::new);
        }
        self.by_type[t as usize].push(row);
        self.min_ts = self.min_ts.min(e.ts_secs);
        self.max_ts = self.max_ts.max(e.ts_secs);
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
        let mut r = self.series_last.get(&(t, d)).copied().unwrap_or(NO_ROW);
        while r != NO_ROW {
            if w.contains(self.rows.ts[r as usize]) {
                count += 1;
                sum = sum.add_f64(self.rows.value[r as usize]);
            }
            r = self.series_prev[r as usize];
        }
        (count, sum)
    }

    /// Event count per device of one type in the window.
    pub fn device_counts(&self, event_type: &str, w: TimeWindow) -> HashMap<&str, u64> {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        if let Some(t) = self.rows.types.get(event_type) {
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
        if let Some(t) = self.rows.types.get(event_type) {
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
