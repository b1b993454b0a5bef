//! The storage seam of desa: what the HTTP API and the Kafka source need from
//! the place events are stored, as one trait with two backends.
//!
//! - the embedded engine (`desa-engine`), the default: one node, one data
//!   directory;
//! - PostgreSQL (`desa-postgres`), cluster mode: several workers share one
//!   database, and Kafka's consumer group decides which worker consumes which
//!   partition.
//!
//! It is not a storage engine: it holds no data and does no I/O.
//!
//! ```
//! use desa_store::{StoreError, WriteRequest};
//! let req = WriteRequest::events(Vec::new());
//! assert!(req.source_offsets.is_empty());
//! let e = StoreError::Fenced { stream: "kafka:events".into(), partition: 3 };
//! assert!(e.to_string().contains("partition 3"));
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod epochs;
mod part;
pub use epochs::{day_of, WriteEpochs};
pub use part::{PartQuery, PartRequest, Partial};

use desa_model::{
    AvgAnswer, Event, GeoAnswer, GeoBox, QueryError, SeriesAnswer, TimeWindow, TopkAnswer,
    TypesAnswer,
};

/// Events of one request, with what to answer a retry of it.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub events: Vec<Event>,
    pub idempotency_key: Option<String>,
    /// The response to store with the key.
    pub response: String,
    /// Source positions that become durable atomically with the events.
    pub source_offsets: Vec<SourceOffset>,
}

impl WriteRequest {
    /// Events with no key and no source positions.
    pub fn events(events: Vec<Event>) -> Self {
        WriteRequest {
            events,
            idempotency_key: None,
            response: String::new(),
            source_offsets: Vec::new(),
        }
    }
}

/// The next offset to read from one partition of a source, made durable
/// together with the events that came before it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceOffset {
    /// For example `kafka:events`.
    pub source: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// What a durable write did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// The events are durable and visible.
    Applied,
    /// The key was seen before: nothing was applied; here is the first response.
    Replayed(String),
}

/// Why a store did not do what was asked. Nothing of a failed write is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Cannot persist or read now (disk full, database unreachable); retry.
    #[error("{0}")]
    Unavailable(String),
    /// Writes are refused until an operator acts (the engine after a failed
    /// fsync).
    #[error("{0}")]
    Refused(String),
    /// Another worker has claimed the partition since this one did: the
    /// write carried offsets this worker no longer owns, and was dropped.
    #[error(
        "partition {partition} of {stream} is owned by another worker now; nothing was written"
    )]
    Fenced { stream: String, partition: i32 },
    /// The store is shutting down.
    #[error("the store is shut down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Sizes and state, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// "embedded" or "postgres".
    pub backend: &'static str,
    /// Events stored (for PostgreSQL, as of the last refresh).
    pub stored_events: u64,
    /// Events durable in the log but not yet in segments (embedded only).
    pub unflushed_events: u64,
    pub segments: u64,
    /// Summaries of whole-day blocks (embedded only).
    pub summaries: u64,
    /// A flush, merge or summary is due (in cluster mode: a merge of
    /// blocks): answers are exact either way, but not yet as fast as they
    /// will be.
    pub maintenance_pending: bool,
    pub storage_bytes: u64,
    /// Stored files whose checksum has not been verified yet since the
    /// node started (embedded only: the scrub's progress).
    pub unverified_files: u64,
    /// Largest event timestamp stored (event-time progress).
    pub watermark_secs: Option<i64>,
    /// Why writes fail now, when they do: the store is "degraded".
    pub unavailable: Option<String>,
    /// Why writes are refused for good, when they are.
    pub refused: Option<String>,
}

/// Where partitions of a source resume after a worker claimed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    /// The next offset to read; `None` when nothing was stored yet.
    pub next_offset: Option<i64>,
}

/// Reply of a queued write.
pub type Reply = Box<dyn FnOnce(Result<WriteOutcome>) + Send>;

/// Where accepted events go and where queries read them from.
///
/// Writes are durable when they return `Ok` (or `reply` gets it): every
/// event, the idempotency key and the source offsets of one request become
/// durable and visible together, or none of them do.
///
/// `write_with`, `watermark_secs`, `stats` and `metrics` return at once;
/// every other method may block on I/O (PostgreSQL answers over the
/// network), so async callers run them on a blocking thread.
pub trait Store: Send + Sync + 'static {
    /// Queues a write; `reply` runs once it is durable and visible, or failed.
    fn write_with(&self, req: WriteRequest, reply: Reply);

    /// Writes and waits until the events are durable and visible.
    fn write(&self, req: WriteRequest) -> Result<WriteOutcome> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.write_with(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// The stored response of an idempotency key, if it was seen (a fast path;
    /// `write` checks again atomically).
    fn idempotent_response(&self, key: &str) -> Option<String>;

    /// Makes this worker the owner of `partitions` of `source` (a topic of
    /// `of` partitions; 0: not known) and says where each resumes. Writes
    /// carrying offsets of a partition that another worker claimed later
    /// fail with [`StoreError::Fenced`].
    fn claim(&self, source: &str, partitions: &[i32], of: i32) -> Result<Vec<Claim>>;

    /// This worker no longer consumes `partitions` of `source` (a rebalance
    /// gave them to another member).
    fn release(&self, _source: &str, _partitions: &[i32]) {}

    /// The part of a query for `shards` (cluster mode), if this worker
    /// holds them; `None` if it does not (the asker then reads them from
    /// the store itself).
    fn partial(&self, _req: &PartRequest) -> Result<Option<Partial>> {
        Ok(None)
    }

    /// Largest event timestamp stored so far.
    fn watermark_secs(&self) -> Option<i64>;

    /// The write stamp of queries of `event_type` over `w` (see
    /// [`WriteEpochs`]), taken before their answer is computed: an answer
    /// may be served again while the stamp stays the same. `None`: this
    /// store keeps no stamps, and its answers are not cached. Returns once
    /// every write committed before the call counts (in cluster mode, after
    /// a look at the catalog).
    fn stamp(&self, _event_type: &str, _w: TimeWindow) -> Result<Option<u64>> {
        Ok(None)
    }

    fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> Result<AvgAnswer>;
    fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> Result<TopkAnswer>;
    fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> Result<GeoAnswer>;

    /// The stored event types: events, first and last event time of each.
    /// Costs a few reads per stored file, whatever the data's size.
    fn types(&self) -> Result<TypesAnswer>;

    /// A device's average step by step over the window: one exact average
    /// per step (at most `desa_model::MAX_SERIES_POINTS`) and one for the
    /// whole window, each costing what an average query costs.
    fn series(
        &self,
        device: &str,
        event_type: &str,
        w: TimeWindow,
        step: i64,
    ) -> Result<Result<SeriesAnswer, QueryError>> {
        let steps = match desa_model::series_windows(w, step) {
            Ok(steps) => steps,
            Err(e) => return Ok(Err(e)),
        };
        let whole = self.avg(device, event_type, w)?;
        let steps = steps
            .into_iter()
            .map(|s| self.avg(device, event_type, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Ok(SeriesAnswer::new(whole, step, steps)))
    }

    fn stats(&self) -> StoreStats;

    /// Backend-specific metrics, Prometheus text exposition.
    fn metrics(&self) -> String {
        String::new()
    }
}
