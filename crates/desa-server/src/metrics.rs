//! Prometheus metrics of one node, served at `GET /metrics`.

use std::time::Duration;

use desa_engine::EngineObserver;
use desa_store::StoreStats;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub events_accepted: IntCounter,
    pub events_rejected: IntCounterVec,
    pub event_lateness: Histogram,
    pub ingest_duration: Histogram,
    pub requests_replayed: IntCounter,
    pub query_duration: HistogramVec,
    pub queries_refused: IntCounterVec,
    /// Requests refused by `--auth-file`, by reason (missing, unknown, scope).
    pub auth_failures: IntCounterVec,
    pub body_timeouts: IntCounter,
    wal_sync_duration: Histogram,
    wal_sync_bytes: IntCounter,
    flush_duration: Histogram,
    compaction_duration: Histogram,
    summary_duration: Histogram,
    topk_merged: IntCounter,
    retention_dropped: IntCounter,
    topk_counted: IntCounter,
    stored_events: IntGauge,
    head_events: IntGauge,
    segments: IntGauge,
    summaries: IntGauge,
    storage_bytes: IntGauge,
    unverified_files: IntGauge,
    resident_bytes: IntGauge,
    watermark: Gauge,
    poisoned: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];
const LATENESS_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    60.0,
    300.0,
    3_600.0,
    21_600.0,
    86_400.0,
    604_800.0,
    2_592_000.0,
];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let q = HistogramVec::new(
            HistogramOpts::new(
                "desa_query_duration_seconds",
                "Query latency by kind (avg, topk, geo, series, types, partial).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"));
        let rejected = IntCounterVec::new(
            Opts::new(
                "desa_events_rejected_total",
                "Events not stored, by the field or rule at fault.",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"));
        let refused = IntCounterVec::new(
            Opts::new(
                "desa_queries_refused_total",
                "Queries answered 503: no slot within --query-timeout (busy) or no answer within it (timeout).",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"));
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "desa_http_auth_failures_total",
                "Requests refused by --auth-file: no token (missing), a token no credential has (unknown), or one without the endpoint's scope (scope).",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric definition: {e}"));
        for reason in ["missing", "unknown", "scope"] {
            auth_failures.with_label_values(&[reason]);
        }
        let counter =
            |n: &str, h: &str| IntCounter::new(n, h).unwrap_or_else(|e| unreachable!("{e}"));
        let gauge = |n: &str, h: &str| IntGauge::new(n, h).unwrap_or_else(|e| unreachable!("{e}"));
        let m = Metrics {
            registry: Registry::new(),
            events_accepted: counter("desa_events_accepted_total", "Events stored durably."),
            events_rejected: rejected,
            event_lateness: histogram(
                "desa_event_lateness_seconds",
                "How far behind the event-time watermark accepted events were (on-time events are not observed).",
                LATENESS_BUCKETS,
            ),
            ingest_duration: histogram(
                "desa_ingest_request_duration_seconds",
                "POST /v1/events latency, from body read to durable acknowledgement.",
                LATENCY_BUCKETS,
            ),
            requests_replayed: counter(
                "desa_ingest_idempotent_replays_total",
                "Requests answered from a stored Idempotency-Key response.",
            ),
            query_duration: q,
            queries_refused: refused,
            auth_failures,
            body_timeouts: counter(
                "desa_ingest_body_timeouts_total",
                "POST /v1/events answered 408: the body did not arrive within --body-timeout.",
            ),
            wal_sync_duration: histogram(
                "desa_wal_fsync_duration_seconds",
                "Write and fsync of one group commit to the write-ahead log.",
                LATENCY_BUCKETS,
            ),
            wal_sync_bytes: counter("desa_wal_written_bytes_total", "Bytes appended to the write-ahead log."),
            flush_duration: histogram(
                "desa_head_flush_duration_seconds",
                "Writing a frozen head to segments.",
                LATENCY_BUCKETS,
            ),
            compaction_duration: histogram(
                "desa_compaction_duration_seconds",
                "Merging segments of one day.",
                LATENCY_BUCKETS,
            ),
            summary_duration: histogram(
                "desa_summary_duration_seconds",
                "Building or refreshing the summary of a block of whole days.",
                LATENCY_BUCKETS,
            ),
            retention_dropped: counter(
                "desa_retention_dropped_events_total",
                "Events dropped by --retention (whole expired days).",
            ),
            topk_merged: counter(
                "desa_topk_merged_total",
                "Top-K queries that added up every count list of their window (activity too flat for the threshold algorithm to stop early).",
            ),
            topk_counted: counter(
                "desa_topk_counted_segments_total",
                "Segments a top-K window cut to at most half of the type's rows, counted from their rows in the window instead of read by all-time count.",
            ),
            stored_events: gauge("desa_stored_events", "Events stored (head and segments)."),
            head_events: gauge("desa_head_events", "Events in memory not yet in segments."),
            segments: gauge("desa_segments", "Live segment files."),
            summaries: gauge("desa_summaries", "Live summary files (whole-day blocks)."),
            storage_bytes: gauge("desa_storage_bytes", "Bytes of live segment and summary files (cluster mode: of the database's desa tables)."),
            unverified_files: gauge("desa_files_unverified", "Stored files whose checksum has not been verified since the node started (the scrub's progress; 0 once it has read every file)."),
            resident_bytes: gauge("desa_resident_memory_bytes", "Resident memory of the process."),
            watermark: Gauge::new("desa_event_time_watermark_seconds", "Largest event timestamp stored.")
                .unwrap_or_else(|e| unreachable!("{e}")),
            poisoned: gauge("desa_storage_poisoned", "1 when writes are refused after a failed fsync."),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.events_accepted.clone()),
            Box::new(m.events_rejected.clone()),
            Box::new(m.event_lateness.clone()),
            Box::new(m.ingest_duration.clone()),
            Box::new(m.requests_replayed.clone()),
            Box::new(m.query_duration.clone()),
            Box::new(m.queries_refused.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.body_timeouts.clone()),
            Box::new(m.wal_sync_duration.clone()),
            Box::new(m.wal_sync_bytes.clone()),
            Box::new(m.flush_duration.clone()),
            Box::new(m.compaction_duration.clone()),
            Box::new(m.summary_duration.clone()),
            Box::new(m.topk_merged.clone()),
            Box::new(m.retention_dropped.clone()),
            Box::new(m.topk_counted.clone()),
            Box::new(m.stored_events.clone()),
            Box::new(m.head_events.clone()),
            Box::new(m.segments.clone()),
            Box::new(m.summaries.clone()),
            Box::new(m.storage_bytes.clone()),
            Box::new(m.unverified_files.clone()),
            Box::new(m.resident_bytes.clone()),
            Box::new(m.watermark.clone()),
            Box::new(m.poisoned.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| unreachable!("metric names are unique: {e}"));
        }
        m
    }

    /// The text exposition, with gauges refreshed from the engine.
    pub fn render(&self, stats: &StoreStats) -> String {
        self.stored_events.set(stats.stored_events as i64);
        self.head_events.set(stats.unflushed_events as i64);
        self.segments.set(stats.segments as i64);
        self.summaries.set(stats.summaries as i64);
        self.storage_bytes.set(stats.storage_bytes as i64);
        self.unverified_files.set(stats.unverified_files as i64);
        self.resident_bytes
            .set(desa_engine::resident_bytes() as i64);
        if let Some(w) = stats.watermark_secs {
            self.watermark.set(w as f64);
        }
        self.poisoned.set(stats.refused.is_some() as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl EngineObserver for Metrics {
    fn expired(&self, events: u64) {
        self.retention_dropped.inc_by(events);
    }
    fn wal_synced(&self, elapsed: Duration, bytes: usize, _requests: usize) {
        self.wal_sync_duration.observe(elapsed.as_secs_f64());
        self.wal_sync_bytes.inc_by(bytes as u64);
    }
    fn head_flushed(&self, elapsed: Duration, _rows: usize) {
        self.flush_duration.observe(elapsed.as_secs_f64());
    }
    fn compacted(&self, elapsed: Duration, _rows: u64) {
        self.compaction_duration.observe(elapsed.as_secs_f64());
    }
    fn summarized(&self, elapsed: Duration, _events: u64) {
        self.summary_duration.observe(elapsed.as_secs_f64());
    }
    fn topk_merged(&self) {
        self.topk_merged.inc();
    }
    fn topk_counted(&self, segments: usize) {
        self.topk_counted.inc_by(segments as u64);
    }
}
