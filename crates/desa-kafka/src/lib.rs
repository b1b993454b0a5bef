//! desa's Kafka source: a node consumes a topic as a member of a consumer
//! group, with exactly-once effect on its own store.
//!
//! How exactly-once holds: every batch written to the engine carries the
//! next offset of each partition it covers, and the engine makes events and
//! offsets durable in the same log record. On restart (or when a partition is
//! assigned) the node resumes from its own offsets and drops any message below
//! them; offsets are committed to Kafka afterwards, for lag tools and for the
//! next owner after a rebalance. Where the store's offsets and Kafka's
//! disagree in a way that would lose or skip messages, the partition halts
//! until an operator decides (see `resume`).
//!
//! Messages that cannot be read or fail validation go to a dead-letter
//! destination with their partition, offset and reason, and the partition
//! moves on.
//!
//! It is not:
//! - a store or a parser: events are validated by `desa-model` and stored by
//!   `desa-engine`;
//! - cluster coordination: partition ownership comes from the consumer group.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod consumer;
mod dlq;
mod lag;
mod producer;
mod resume;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use consumer::KafkaSource;
pub use dlq::DlqTarget;
pub use lag::{GroupLag, LagSnapshot, PartitionLag};
pub use producer::{produce_lines, ProduceSummary};
pub use resume::{resume_point, OnMismatch, Resume};
pub use status::KafkaStatus;

/// Errors of the Kafka source and producer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("dead-letter file {path}: {source}")]
    DlqFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a node consumes Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub dlq: DlqTarget,
    /// Events per engine write at most.
    pub batch_max_events: usize,
    /// Longest a consumed message waits before it is written (freshness).
    pub batch_max_wait: Duration,
    /// Extra librdkafka settings (security.protocol, sasl.*, ssl.*, ...).
    pub options: Vec<(String, String)>,
    pub max_future_secs: i64,
    pub max_lateness_secs: Option<i64>,
    /// With a retention, events older than it keeps are dead letters.
    pub retention_secs: Option<i64>,
    /// Told the lateness of every accepted event behind the watermark (the
    /// node records it in the histogram HTTP ingest records it in).
    pub on_late: Option<LateObserver>,
    /// Partitions whose stored offset and Kafka's disagree: halt, or resume
    /// at one of them.
    pub on_offset_mismatch: OnMismatch,
}

/// Receives the lateness, in seconds, of an accepted event behind the
/// event-time watermark.
#[derive(Clone)]
pub struct LateObserver(pub Arc<dyn Fn(i64) + Send + Sync>);

impl std::fmt::Debug for LateObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateObserver")
    }
}

impl KafkaConfig {
    pub fn new(brokers: &str, topic: &str, group: &str) -> Self {
        KafkaConfig {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            dlq: DlqTarget::Topic(format!("{topic}.dlq")),
            batch_max_events: 50_000,
            batch_max_wait: Duration::from_millis(100),
            options: Vec::new(),
            max_future_secs: 86_400,
            max_lateness_secs: None,
            retention_secs: None,
            on_late: None,
            on_offset_mismatch: OnMismatch::Halt,
        }
    }

    /// The name under which the engine stores this source's offsets.
    pub fn source_name(&self) -> String {
        format!("kafka:{}", self.topic)
    }
}
