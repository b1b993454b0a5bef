//! desa's event model: what an event is, how a request body becomes events, and
//! the shapes of the three queries and their answers.
//!
//! This crate owns validation. Every source (HTTP batches, Kafka messages, the
//! generator) turns bytes into [`Event`]s through [`parse_body`] or
//! [`parse_event`], so the rules and error messages are the same everywhere.
//!
//! It is not:
//! - a storage engine (see `desa-engine`), nor does it do any I/O;
//! - an approximation: [`oracle::Oracle`] is the brute-force reference every
//!   engine answer is tested against.
//!
//! ```
//! use desa_model::{parse_body, BodyFormat, Limits};
//! let body = r#"{"device_id":"d1","timestamp":100,"type":"temperature","value":21.5,
//!               "location":{"latitude":48.85,"longitude":2.35}}"#;
//! let parsed = parse_body(body.as_bytes(), BodyFormat::Json, &Limits::at(1_000)).unwrap();
//! assert_eq!(parsed.events.len(), 1);
//! assert!(parsed.rejected.is_empty());
//! ```
#![deny(clippy::unwrap_used)]

mod admit;
mod event;
mod geo;
pub mod oracle;
mod overview;
mod parse;
mod query;
mod shard;
mod sum;

pub use admit::{admit, Admitted, Lateness};
pub use event::{
    check_lateness, first_kept_secs, Event, Invalid, Limits, Reason, MAX_DEVICE_ID_BYTES,
    MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_TYPE_BYTES,
};
pub use geo::GeoBox;
pub use overview::{
    series_windows, SeriesAnswer, SeriesPoint, TypeStats, TypesAnswer, MAX_SERIES_POINTS,
};
pub use parse::{
    parse_body, parse_body_capped, parse_event, BodyError, BodyFormat, ParsedBody, Rejection,
};
pub use query::{
    rank_devices, AvgAnswer, DeviceCount, GeoAnswer, QueryError, TimeWindow, TopkAnswer, MAX_TOPK_K,
};
pub use shard::{murmur2, shard_of};
pub use sum::DoubleDouble;
