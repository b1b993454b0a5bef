//! Producing a stream into Kafka (`desa gen --kafka-brokers`): idempotent,
//! `acks=all`, keyed by device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::Result;

/// An undelivered message: key and value, to send again.
type Undelivered = (Option<Vec<u8>>, Vec<u8>);

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    /// Messages the broker refused or that timed out, to send again.
    failed: parking_lot::Mutex<Vec<Undelivered>>,
}

struct Ctx(Arc<Counts>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        use rdkafka::Message;
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                tracing::warn!(error = %e, "message not delivered; it will be sent again");
                let key = m.key().map(<[u8]>::to_vec);
                self.0
                    .failed
                    .lock()
                    .push((key, m.payload().unwrap_or_default().to_vec()));
            }
        }
    }
}

/// Queues a record, waiting while librdkafka's local queue is full.
pub(crate) fn send_blocking<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    C: ProducerContext<DeliveryOpaque = ()> + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Rounds of resending undelivered messages before giving up on them.
const RESEND_ROUNDS: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct ProduceSummary {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Sends `(key, value)` messages to `topic` and waits for every delivery
/// report, sending undelivered messages again (a message that failed was not
/// written, so this cannot duplicate it); `progress` is called with the
/// number sent so far.
pub fn produce_lines(
    brokers: &str,
    topic: &str,
    options: &[(String, String)],
    messages: impl Iterator<Item = (Option<String>, String)>,
    mut progress: impl FnMut(u64),
) -> Result<ProduceSummary> {
    let counts = Arc::new(Counts::default());
    let mut cfg = ClientConfig::new();
    // Keys (device ids) go to the partition Java clients pick for them,
    // which is also the device's shard in cluster mode
    // (`desa_model::shard_of`).
    cfg.set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
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
        send_blocking(&producer, record)?;
        sent += 1;
        if sent.is_multiple_of(10_000) {
            progress(sent);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    for _ in 0..RESEND_ROUNDS {
        let again = std::mem::take(&mut *counts.failed.lock());
        if again.is_empty() {
            break;
        }
        for (key, value) in &again {
            let mut record: BaseRecord<'_, Vec<u8>, Vec<u8>> = BaseRecord::to(topic).payload(value);
            if let Some(k) = key {
                record = record.key(k);
            }
            send_blocking(&producer, record)?;
        }
        producer.flush(Duration::from_secs(120))?;
    }
    progress(sent);
    let failed = counts.failed.lock().len() as u64;
    Ok(ProduceSummary {
        sent,
        delivered: counts.delivered.load(Ordering::Relaxed),
        failed,
        elapsed: started.elapsed(),
    })
}
