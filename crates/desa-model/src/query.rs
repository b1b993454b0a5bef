//! The three queries' windows and answers, as the HTTP API returns them.

use serde::{Deserialize, Serialize};

use crate::GeoBox;

/// Largest `k` a top-K query may ask for.
pub const MAX_TOPK_K: usize = 10_000;

/// A half-open event-time window `start <= ts < end`, unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub start: i64,
    pub end: i64,
}

impl TimeWindow {
    pub fn new(start: i64, end: i64) -> Result<Self, QueryError> {
        if start >= end {
            return Err(QueryError::EmptyWindow { start, end });
        }
        Ok(TimeWindow { start, end })
    }

    #[inline]
    pub fn contains(&self, ts: i64) -> bool {
        ts >= self.start && ts < self.end
    }
}

/// A query that cannot be answered as asked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("query parameter {name} must be {expected}, got {got:?}")]
    Malformed {
        name: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("start ({start}) must be less than end ({end})")]
    EmptyWindow { start: i64, end: i64 },
    #[error("k must be between 1 and {MAX_TOPK_K}, got {0}")]
    KOutOfRange(i64),
    #[error("{0}")]
    BadBox(String),
    #[error("step must be at least 1 second, got {0}")]
    BadStep(i64),
    #[error(
        "the window holds {points} steps and a series at most {max} points: raise step to at least {least}",
        max = crate::MAX_SERIES_POINTS
    )]
    TooManyPoints { points: i128, least: i128 },
}

/// Answer to the average query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvgAnswer {
    pub device_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub start: i64,
    pub end: i64,
    pub count: u64,
    /// `None` (JSON null) when `count` is 0.
    pub avg: Option<f64>,
}

/// One entry of a top-K answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCount {
    pub device_id: String,
    pub count: u64,
}

/// Answer to the top-K query: count descending, then device_id ascending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopkAnswer {
    #[serde(rename = "type")]
    pub event_type: String,
    pub start: i64,
    pub end: i64,
    pub k: usize,
    pub devices: Vec<DeviceCount>,
}

/// Answer to the geo query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoAnswer {
    #[serde(rename = "type")]
    pub event_type: String,
    pub start: i64,
    pub end: i64,
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
    pub count: u64,
    pub avg: Option<f64>,
}

impl GeoAnswer {
    pub fn new(event_type: &str, window: TimeWindow, bbox: &GeoBox, count: u64, sum: f64) -> Self {
        GeoAnswer {
            event_type: event_type.to_owned(),
            start: window.start,
            end: window.end,
            min_lat: bbox.min_lat,
            max_lat: bbox.max_lat,
            min_lon: bbox.min_lon,
            max_lon: bbox.max_lon,
            count,
            avg: average(count, sum),
        }
    }
}

impl AvgAnswer {
    pub fn new(
        device_id: &str,
        event_type: &str,
        window: TimeWindow,
        count: u64,
        sum: f64,
    ) -> Self {
        AvgAnswer {
            device_id: device_id.to_owned(),
            event_type: event_type.to_owned(),
            start: window.start,
            end: window.end,
            count,
            avg: average(count, sum),
        }
    }
}

/// Orders top-K entries as the API promises and keeps the first `k`.
pub fn rank_devices(mut devices: Vec<DeviceCount>, k: usize) -> Vec<DeviceCount> {
    devices.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.device_id.cmp(&b.device_id))
    });
    devices.truncate(k);
    devices
}

fn average(count: u64, sum: f64) -> Option<f64> {
    (count > 0).then(|| sum / count as f64)
}
