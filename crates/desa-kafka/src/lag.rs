//! A consumer group's lag over a whole topic, as a scaler sees it from
//! outside the group: every partition's high watermark and the offset the
//! group last committed, and the event time the unconsumed messages span.
//!
//! The probe never joins the group and never commits: it reads committed
//! offsets (OffsetFetch) and watermarks (ListOffsets) with a client of the
//! group's id, and reads single messages by assignment with a client of its
//! own. Workers commit to Kafka after each durable batch, so the committed
//! offset trails the stored one by at most a batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::Result;

/// One partition's position, as of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub high_watermark: i64,
    /// The group's committed offset; the log's start when it has none.
    pub committed: i64,
    /// Messages not yet consumed (`high_watermark - committed`, at least 0).
    pub lag_messages: u64,
    /// Event time between the oldest and the newest unconsumed message:
    /// the newest event of the last message minus the newest event of the
    /// first unconsumed one (0 when caught up, or when either is unreadable).
    pub lag_event_secs: i64,
}

/// Every partition of the topic at one instant.
#[derive(Debug, Clone)]
pub struct LagSnapshot {
    pub at: Instant,
    pub partitions: BTreeMap<i32, PartitionLag>,
}

impl LagSnapshot {
    pub fn lag_messages(&self) -> u64 {
        self.partitions.values().map(|p| p.lag_messages).sum()
    }

    /// The event-time lag of the partition furthest behind.
    pub fn lag_event_secs(&self) -> i64 {
        self.partitions
            .values()
            .map(|p| p.lag_event_secs)
            .max()
            .unwrap_or(0)
    }

    /// Sum of high watermarks: messages ever produced to the topic.
    pub fn produced(&self) -> i64 {
        self.partitions.values().map(|p| p.high_watermark).sum()
    }

    /// Sum of committed offsets: messages the group has consumed.
    pub fn consumed(&self) -> i64 {
        self.partitions.values().map(|p| p.committed).sum()
    }
}

/// Reads a group's lag; one per scaler.
pub struct GroupLag {
    topic: String,
    offsets: BaseConsumer,
    reader: BaseConsumer,
    timeout: Duration,
}

impl GroupLag {
    /// `options` are the extra librdkafka settings the workers use
    /// (security.protocol, sasl.*, ssl.*).
    pub fn new(
        brokers: &str,
        topic: &str,
        group: &str,
        options: &[(String, String)],
    ) -> Result<GroupLag> {
        let client = |group_id: &str| -> Result<BaseConsumer> {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", brokers)
                .set("group.id", group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false");
            for (k, v) in options {
                c.set(k, v);
            }
            Ok(c.create()?)
        };
        Ok(GroupLag {
            topic: topic.to_owned(),
            offsets: client(group)?,
            // Its own id: assigning partitions never touches the group.
            reader: client(&format!("{group}.lag-probe"))?,
            timeout: Duration::from_secs(5),
        })
    }

    /// The topic's partitions, their watermarks and the group's offsets;
    /// fails when the broker does not answer.
    pub fn probe(&self) -> Result<LagSnapshot> {
        let metadata = self
            .offsets
            .fetch_metadata(Some(&self.topic), self.timeout)?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            return Err(crate::Error::Other(format!(
                "topic {} has no partitions (does it exist?)",
                self.topic
            )));
        }
        let mut tpl = TopicPartitionList::new();
        for p in &ids {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = self.offsets.committed_offsets(tpl, self.timeout)?;
        let at = Instant::now();
        let mut partitions = BTreeMap::new();
        for p in ids {
            let (low, high) = self
                .offsets
                .fetch_watermarks(&self.topic, p, self.timeout)?;
            let committed = committed
                .find_partition(&self.topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                })
                .unwrap_or(low)
                .clamp(low, high);
            partitions.insert(
                p,
                PartitionLag {
                    high_watermark: high,
                    committed,
                    lag_messages: (high - committed) as u64,
                    lag_event_secs: 0,
                },
            );
        }
        self.event_time_lag(&mut partitions);
        Ok(LagSnapshot { at, partitions })
    }

    /// Fills `lag_event_secs` of the lagging partitions from their first
    /// unconsumed and their last message. A message that cannot be read in
    /// time leaves the partition at 0: the figure is for people, the
    /// scaling policy works on message counts.
    fn event_time_lag(&self, partitions: &mut BTreeMap<i32, PartitionLag>) {
        let lagging: Vec<(i32, PartitionLag)> = partitions
            .iter()
            .filter(|(_, p)| p.lag_messages > 0)
            .map(|(id, p)| (*id, *p))
            .collect();
        if lagging.is_empty() {
            return;
        }
        let oldest = self.read_at(lagging.iter().map(|(id, p)| (*id, p.committed)));
        let newest = self.read_at(lagging.iter().map(|(id, p)| (*id, p.high_watermark - 1)));
        for (id, _) in lagging {
            if let (Some(from), Some(to)) = (oldest.get(&id), newest.get(&id)) {
                if let Some(p) = partitions.get_mut(&id) {
                    p.lag_event_secs = (to - from).max(0);
                }
            }
        }
    }

    /// The newest event time in the message at each `(partition, offset)`.
    fn read_at(&self, at: impl Iterator<Item = (i32, i64)>) -> BTreeMap<i32, i64> {
        let mut tpl = TopicPartitionList::new();
        let mut wanted = 0;
        for (p, offset) in at {
            if tpl
                .add_partition_offset(&self.topic, p, Offset::Offset(offset))
                .is_ok()
            {
                wanted += 1;
            }
        }
        let mut found = BTreeMap::new();
        if let Err(e) = self.reader.assign(&tpl) {
            tracing::debug!(error = %e, "cannot assign partitions to read event times");
            return found;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while found.len() < wanted && Instant::now() < deadline {
            match self.reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Some(ts) = m.payload().and_then(newest_event_secs) {
                        found.entry(m.partition()).or_insert(ts);
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "reading event times"),
                None => {}
            }
        }
        let _ = self.reader.unassign();
        found
    }
}

/// The largest `timestamp` among a message's NDJSON lines.
fn newest_event_secs(payload: &[u8]) -> Option<i64> {
    payload
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter_map(|v| {
            let ts = v.get("timestamp")?;
            ts.as_i64()
                .or_else(|| ts.as_f64().map(|f| f.floor() as i64))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::newest_event_secs;

    #[test]
    fn the_newest_timestamp_of_a_message_counts() {
        let m = b"{\"device_id\":\"a\",\"timestamp\":100}\n{\"timestamp\":250.5,\"x\":1}\nnot json\n{\"timestamp\":7}";
        assert_eq!(newest_event_secs(m), Some(250));
        assert_eq!(newest_event_secs(b"garbage"), None);
    }
}
