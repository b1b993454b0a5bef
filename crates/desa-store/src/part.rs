//! A query's part for some shards, in cluster mode: what a worker asks the
//! owner of those shards (`POST /v1/internal/partial`) and what it adds up.
//! Shards hold disjoint sets of devices, so parts add exactly: counts and
//! double-double sums for avg and geo, and each part's own top-K for top-K
//! (the global top-K is among the union of the parts' top-Ks).

use desa_model::{DeviceCount, DoubleDouble, GeoBox, TimeWindow, TypeStats, TypesAnswer};
use serde::{Deserialize, Serialize};

/// One of the three queries, or the stored types, as sent to an owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PartQuery {
    Avg {
        device_id: String,
        #[serde(rename = "type")]
        event_type: String,
        start: i64,
        end: i64,
    },
    Topk {
        #[serde(rename = "type")]
        event_type: String,
        start: i64,
        end: i64,
        k: usize,
    },
    Geo {
        #[serde(rename = "type")]
        event_type: String,
        start: i64,
        end: i64,
        min_lat: f64,
        max_lat: f64,
        min_lon: f64,
        max_lon: f64,
    },
    /// The stored types (`GET /v1/types`): over all time.
    Types,
}

impl PartQuery {
    /// The window, checked again on the owner's side.
    pub fn window(&self) -> Result<TimeWindow, String> {
        let (start, end) = match self {
            PartQuery::Avg { start, end, .. }
            | PartQuery::Topk { start, end, .. }
            | PartQuery::Geo { start, end, .. } => (*start, *end),
            PartQuery::Types => (i64::MIN, i64::MAX),
        };
        TimeWindow::new(start, end).map_err(|e| e.to_string())
    }

    /// The box of a geo query, checked again on the owner's side.
    pub fn bbox(&self) -> Result<Option<GeoBox>, String> {
        match self {
            PartQuery::Geo {
                min_lat,
                max_lat,
                min_lon,
                max_lon,
                ..
            } => GeoBox::new(*min_lat, *max_lat, *min_lon, *max_lon).map(Some),
            _ => Ok(None),
        }
    }
}

/// The request an owner gets: the query and the shards to answer it for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRequest {
    pub query: PartQuery,
    pub shards: Vec<u32>,
    /// The worker the asker takes for the shards' owner. Any other process
    /// at that address (the owner died and the address was reused, by a
    /// worker of another cluster even) refuses, and the asker answers for
    /// the shards itself.
    #[serde(default)]
    pub owner: Option<String>,
}

/// An owner's answer for its shards: count and exact sum (avg, geo), its
/// top-K (top-K), or its types (types).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    pub count: u64,
    pub sum_hi: f64,
    pub sum_lo: f64,
    #[serde(default)]
    pub devices: Vec<DeviceCount>,
    /// The stored types, by name (types).
    #[serde(default)]
    pub types: Vec<TypeStats>,
}

impl Partial {
    pub fn of_sum(count: u64, sum: DoubleDouble) -> Partial {
        Partial {
            count,
            sum_hi: sum.hi,
            sum_lo: sum.lo,
            devices: Vec::new(),
            types: Vec::new(),
        }
    }

    pub fn sum(&self) -> DoubleDouble {
        DoubleDouble::new(self.sum_hi, self.sum_lo)
    }

    /// Adds `other`'s count, sum and devices to this one's.
    pub fn add(&mut self, other: Partial) {
        self.count += other.count;
        let sum = self.sum() + other.sum();
        (self.sum_hi, self.sum_lo) = (sum.hi, sum.lo);
        self.devices.extend(other.devices);
        let mut types = TypesAnswer {
            types: std::mem::take(&mut self.types),
        };
        types.add(other.types);
        self.types = types.types;
    }
}
