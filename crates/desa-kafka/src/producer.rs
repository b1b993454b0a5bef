//! Producing a stream into Kafka (`desa gen --kafka-brokers`): idempotent,
//! `acks=all`, keyed by device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::{Error, Result};

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Counts>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProduceSummary {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Sends `(key, value)` messages to `topic` and waits for every delivery
/// report; `progress` is called with the number sent so far.
pub fn produce_lines(
    brokers: &str,
    topic: &str,
    options: &[(String, String)],
    messages: impl Iterator<Item = (Option<String>, String)>,
    mut progress: impl FnMut(u64),
) -> Result<ProduceSummary> {
    let counts = Arc::new(Counts::default());
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in options {
        cfg.set(k, v);
    }
    let producer: ThreadedProducer<Ctx> = cfg.create_with_context(Ctx(counts.clone()))?;
    let started = Instant::now();
    let mut sent = 0u64;
    for (key, value) in messages {
        let mut record: BaseRecord<'_, String, String> = BaseRecord::to(topic).payload(&value);
        if let Some(k) = &key {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(Error::Kafka(e)),
            }
        }
        sent += 1;
        if sent.is_multiple_of(10_000) {
            progress(sent);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    progress(sent);
    Ok(ProduceSummary {
        sent,
        delivered: counts.delivered.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
