//! desa's embedded storage engine: where accepted events are made durable,
//! indexed and read back for the three queries.
//!
//! - [`wal`]: the write-ahead log, with group commit and torn-tail recovery.
//! - `head`: the newest events in memory, indexed, until flushed.
//! - [`segment`]: immutable per-day files with prefix sums, per-type top-K
//!   order and an aggregate k-d tree; merged by size-tiered compaction.
//! - [`summary`]: per-block totals over 2 to 1024 whole days, so that long
//!   windows read O(log days) files.
//! - `query`: how each query combines head and segments without reading
//!   every event of its window.
//!
//! It is not:
//! - a network service (see `desa-server`), nor a parser (see `desa-model`);
//! - approximate: every answer equals the brute-force answer.
//!
//! ```
//! use std::sync::Arc;
//! use desa_engine::{Engine, EngineConfig, SystemClock, WriteRequest};
//! use desa_model::{Event, TimeWindow};
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(EngineConfig::new(dir.path()), Arc::new(SystemClock)).unwrap();
//! let e = Event { device_id: "d1".into(), ts_secs: 100, event_type: "temperature".into(),
//!     value: 20.0, latitude: 1.0, longitude: 2.0, metadata: None };
//! engine.write(WriteRequest::events(vec![e])).unwrap();
//! let answer = engine.avg("d1", "temperature", TimeWindow::new(0, 200).unwrap()).unwrap();
//! assert_eq!(answer.count, 1);
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod breakdown;
mod clock;
mod durable;
mod engine;
mod error;
mod fences;
pub mod fsck;
mod head;
pub mod idempotency;
mod manifest;
mod names;
mod packed;
mod query;
mod sections;
pub mod segment;
pub mod segment_set;
mod store;
pub mod summary;
pub mod wal;

pub use clock::{Clock, ManualClock, SystemClock};
pub use durable::lock_dir;
pub use engine::{
    resident_bytes, Engine, EngineConfig, EngineObserver, EngineStats, WriteOutcome, WriteRequest,
};
pub use error::{Error, Result};
pub use packed::IdList;
pub use wal::SourceOffset;
