//! What the Kafka source reports: per-partition positions for `/metrics`, and
//! broker reachability for `/healthz`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use parking_lot::Mutex;

#[derive(Debug, Default, Clone)]
struct Partition {
    /// Next offset the node will read; durable in the node's log.
    consumed: Option<i64>,
    /// Last offset committed to Kafka.
    committed: Option<i64>,
    high_watermark: Option<i64>,
    /// Largest event timestamp consumed from this partition.
    event_watermark: Option<i64>,
    /// Why the partition is not consumed (offsets that disagree).
    halted: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    partitions: BTreeMap<i32, Partition>,
    broker_error: Option<String>,
    storage_error: Option<String>,
    messages: u64,
    events: u64,
    skipped: u64,
    fenced: u64,
    dead_letters: BTreeMap<&'static str, u64>,
    last_message: Option<Instant>,
}

/// Shared between the consumer thread and the HTTP server.
#[derive(Debug)]
pub struct KafkaStatus {
    topic: String,
    inner: Mutex<Inner>,
}

impl KafkaStatus {
    pub fn new(topic: &str) -> Self {
        KafkaStatus {
            topic: topic.to_owned(),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn assigned(&self, partitions: &[i32]) {
        let mut s = self.inner.lock();
        for p in partitions {
            s.partitions.entry(*p).or_default();
        }
    }

    pub(crate) fn revoked(&self, partitions: &[i32]) {
        let mut s = self.inner.lock();
        for p in partitions {
            s.partitions.remove(p);
        }
    }

    pub(crate) fn halted(&self, partition: i32, why: String) {
        self.inner
            .lock()
            .partitions
            .entry(partition)
            .or_default()
            .halted = Some(why);
    }

    pub(crate) fn message(&self) {
        let mut s = self.inner.lock();
        s.messages += 1;
        s.last_message = Some(Instant::now());
        s.broker_error = None;
    }

    pub(crate) fn skipped(&self) {
        self.inner.lock().skipped += 1;
    }

    pub(crate) fn dead_letter(&self, reason: &'static str) {
        *self.inner.lock().dead_letters.entry(reason).or_default() += 1;
    }

    pub(crate) fn written(
        &self,
        events: usize,
        offsets: &BTreeMap<i32, i64>,
        event_max_ts: &BTreeMap<i32, i64>,
    ) {
        let mut s = self.inner.lock();
        s.events += events as u64;
        s.storage_error = None;
        for (p, next) in offsets {
            let part = s.partitions.entry(*p).or_default();
            part.consumed = Some(*next);
        }
        for (p, ts) in event_max_ts {
            let part = s.partitions.entry(*p).or_default();
            part.event_watermark = Some(part.event_watermark.map_or(*ts, |w| w.max(*ts)));
        }
    }

    pub(crate) fn resumed_at(&self, partition: i32, next: Option<i64>) {
        let mut s = self.inner.lock();
        let part = s.partitions.entry(partition).or_default();
        part.consumed = next;
        part.halted = None;
    }

    pub(crate) fn committed(&self, partition: i32, offset: i64) {
        self.inner
            .lock()
            .partitions
            .entry(partition)
            .or_default()
            .committed = Some(offset);
    }

    pub(crate) fn high_watermark(&self, partition: i32, high: i64) {
        if let Some(p) = self.inner.lock().partitions.get_mut(&partition) {
            p.high_watermark = Some(high);
        }
    }

    pub(crate) fn broker_error(&self, error: String) {
        self.inner.lock().broker_error = Some(error);
    }

    pub(crate) fn broker_ok(&self) {
        self.inner.lock().broker_error = None;
    }

    /// A batch was dropped because another worker claimed its partitions.
    pub(crate) fn fenced(&self) {
        self.inner.lock().fenced += 1;
    }

    pub(crate) fn storage_error(&self, error: Option<String>) {
        self.inner.lock().storage_error = error;
    }

    /// `(healthy, details)` for `/healthz`.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let s = self.inner.lock();
        let halted: BTreeMap<String, String> = s
            .partitions
            .iter()
            .filter_map(|(p, part)| part.halted.clone().map(|why| (p.to_string(), why)))
            .collect();
        let healthy = s.broker_error.is_none() && s.storage_error.is_none() && halted.is_empty();
        let lag: i64 = s
            .partitions
            .values()
            .filter_map(|p| Some(p.high_watermark? - p.consumed.unwrap_or(0)))
            .map(|l| l.max(0))
            .sum();
        let details = serde_json::json!({
            "topic": self.topic,
            "status": if healthy { "ok" } else { "degraded" },
            "broker": s.broker_error.clone().unwrap_or_else(|| "ok".into()),
            "storage": s.storage_error.clone().unwrap_or_else(|| "ok".into()),
            "assigned_partitions": s.partitions.keys().collect::<Vec<_>>(),
            "lag": lag,
            "halted_partitions": halted,
            "seconds_since_last_message": s.last_message.map(|t| t.elapsed().as_secs()),
        });
        (healthy, details)
    }

    /// Prometheus text exposition of the source's metrics.
    pub fn render_prometheus(&self) -> String {
        let s = self.inner.lock();
        let mut out = String::new();
        let topic = &self.topic;
        let gauge =
            |out: &mut String, name: &str, help: &str, f: &dyn Fn(&Partition) -> Option<i64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (p, part) in &s.partitions {
                    if let Some(v) = f(part) {
                        let _ = writeln!(out, "{name}{{topic=\"{topic}\",partition=\"{p}\"}} {v}");
                    }
                }
            };
        gauge(
            &mut out,
            "desa_kafka_consumed_offset",
            "Next offset the node reads, durable in its log.",
            &|p| p.consumed,
        );
        gauge(
            &mut out,
            "desa_kafka_committed_offset",
            "Offset last committed to Kafka.",
            &|p| p.committed,
        );
        gauge(
            &mut out,
            "desa_kafka_high_watermark",
            "Partition high watermark.",
            &|p| p.high_watermark,
        );
        gauge(
            &mut out,
            "desa_kafka_lag",
            "High watermark minus consumed offset.",
            &|p| Some((p.high_watermark? - p.consumed.unwrap_or(0)).max(0)),
        );
        gauge(
            &mut out,
            "desa_kafka_partition_halted",
            "1 when the partition is not consumed because the store's offset and Kafka's disagree (see /healthz).",
            &|p| Some(p.halted.is_some() as i64),
        );
        gauge(
            &mut out,
            "desa_kafka_event_time_watermark_seconds",
            "Largest event timestamp consumed from the partition.",
            &|p| p.event_watermark,
        );
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{topic=\"{topic}\"}} {v}"
            );
        };
        counter(
            &mut out,
            "desa_kafka_messages_total",
            "Messages consumed.",
            s.messages,
        );
        counter(
            &mut out,
            "desa_kafka_events_total",
            "Events stored from Kafka.",
            s.events,
        );
        counter(
            &mut out,
            "desa_kafka_skipped_messages_total",
            "Messages below the node's own offsets (already applied), dropped.",
            s.skipped,
        );
        counter(
            &mut out,
            "desa_kafka_fenced_batches_total",
            "Batches dropped unwritten because another worker had claimed their partitions.",
            s.fenced,
        );
        let _ = writeln!(
            out,
            "# HELP desa_kafka_dead_letters_total Messages or lines sent to the dead-letter destination, by reason.\n# TYPE desa_kafka_dead_letters_total counter"
        );
        for (reason, n) in &s.dead_letters {
            let _ = writeln!(
                out,
                "desa_kafka_dead_letters_total{{topic=\"{topic}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP desa_kafka_broker_up 1 when the broker answers.\n# TYPE desa_kafka_broker_up gauge\ndesa_kafka_broker_up{{topic=\"{topic}\"}} {}",
            s.broker_error.is_none() as u8
        );
        out
    }
}
