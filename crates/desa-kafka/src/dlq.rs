//! Dead letters: messages (or NDJSON lines) that cannot become events.
//!
//! Each is a JSON object `{"topic","partition","offset","index","error",
//! "payload"}` (`index` is the line within an NDJSON message). They are made
//! durable before the offsets that pass them, so a crash can only repeat a
//! dead letter, never lose one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::producer::send_blocking;
use crate::{Error, Result};

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq)]
pub enum DlqTarget {
    /// A Kafka topic (default `<topic>.dlq`).
    Topic(String),
    /// An NDJSON file, appended and fsynced.
    File(PathBuf),
}

impl std::str::FromStr for DlqTarget {
    type Err = String;
    /// `topic:NAME` or `file:PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(t) = s.strip_prefix("topic:") {
            Ok(DlqTarget::Topic(t.to_owned()))
        } else if let Some(p) = s.strip_prefix("file:") {
            Ok(DlqTarget::File(PathBuf::from(p)))
        } else {
            Err(format!(
                "dead-letter target {s:?} must be topic:NAME or file:PATH"
            ))
        }
    }
}

/// One message or line that could not be stored.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub index: Option<usize>,
    pub error: String,
    pub payload: String,
}

#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

struct DlqContext(Arc<DeliveryCounter>);

impl ClientContext for DlqContext {}
impl ProducerContext for DlqContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "dead letter not delivered");
            self.0.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub(crate) struct DeadLetters {
    source_topic: String,
    target: DlqTarget,
    producer: Option<ThreadedProducer<DlqContext>>,
    counter: Arc<DeliveryCounter>,
    file: Option<File>,
    fallback: PathBuf,
}

impl DeadLetters {
    /// `fallback` is the file used when the dead-letter topic refuses a
    /// message, so that a bad message never blocks its partition.
    pub fn new(
        source_topic: &str,
        target: DlqTarget,
        brokers: &str,
        options: &[(String, String)],
        fallback: PathBuf,
    ) -> Result<Self> {
        let counter = Arc::new(DeliveryCounter::default());
        let producer = match &target {
            DlqTarget::Topic(_) => {
                let mut cfg = ClientConfig::new();
                cfg.set("bootstrap.servers", brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("message.timeout.ms", "10000");
                for (k, v) in options {
                    cfg.set(k, v);
                }
                Some(cfg.create_with_context(DlqContext(counter.clone()))?)
            }
            DlqTarget::File(_) => None,
        };
        Ok(DeadLetters {
            source_topic: source_topic.to_owned(),
            target,
            producer,
            counter,
            file: None,
            fallback,
        })
    }

    fn json(&self, d: &DeadLetter) -> String {
        serde_json::json!({
            "topic": self.source_topic,
            "partition": d.partition,
            "offset": d.offset,
            "index": d.index,
            "error": d.error,
            "payload": d.payload,
        })
        .to_string()
    }

    fn append_file(&mut self, path: &PathBuf, line: &str) -> Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::DlqFile {
                    path: path.clone(),
                    source,
                })?;
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .map_err(|source| Error::DlqFile {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes the dead letters and waits until they are durable.
    pub fn write_durable(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = letters.iter().map(|d| self.json(d)).collect();
        let mut to_file: Vec<&String> = Vec::new();
        match (&self.target, &self.producer) {
            (DlqTarget::Topic(topic), Some(producer)) => {
                let before = self.counter.failed.load(Ordering::SeqCst);
                let queued = lines.iter().try_for_each(|line| {
                    send_blocking(producer, BaseRecord::<(), String>::to(topic).payload(line))
                });
                let flushed = producer.flush(Duration::from_secs(10));
                if queued.is_err()
                    || flushed.is_err()
                    || self.counter.failed.load(Ordering::SeqCst) != before
                {
                    tracing::warn!(topic = %topic, file = %self.fallback.display(),
                        "dead-letter topic did not take every message; writing them to the fallback file");
                    to_file = lines.iter().collect();
                }
            }
            _ => to_file = lines.iter().collect(),
        }
        if !to_file.is_empty() {
            let path = match &self.target {
                DlqTarget::File(p) => p.clone(),
                DlqTarget::Topic(_) => self.fallback.clone(),
            };
            for line in to_file {
                self.append_file(&path, line)?;
            }
            if let Some(f) = &self.file {
                f.sync_data()
                    .map_err(|source| Error::DlqFile { path, source })?;
            }
        }
        Ok(())
    }
}
