//! Where a newly assigned partition resumes, from the store's next offset,
//! Kafka's committed offset and the partition's log range.
//!
//! The store's offset is the truth of what this store holds: normally it
//! is at or ahead of Kafka's (offsets are committed to Kafka after the
//! write) and inside the log. Two disagreements cannot be settled without
//! knowing how they came about, so by default the partition halts (its
//! messages are not consumed; `/healthz` and a metric say why) until an
//! operator chooses with `--kafka-on-offset-mismatch`:
//! - **Kafka is ahead of the store** (committed `k` > stored `s`): messages
//!   `s..k` were committed but are not in this store. After restoring the
//!   store from an older backup they must be read again (`store`); when
//!   several embedded nodes share one group, each keeping its own share,
//!   another node holds them (`kafka`).
//! - **The store is past the log's end** (stored `s` > high watermark): the
//!   topic was recreated or truncated, and every new message would be taken
//!   for one already applied. `kafka` resumes at Kafka's committed offset if
//!   it is inside the log, else at the log's start.

/// The operator's choice for partitions whose offsets disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMismatch {
    /// Do not consume the partition; report it.
    #[default]
    Halt,
    /// Resume at the store's offset (read again what it lacks).
    Store,
    /// Resume at Kafka's committed offset (skip what this store lacks).
    Kafka,
}

impl std::str::FromStr for OnMismatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "halt" => Ok(OnMismatch::Halt),
            "store" => Ok(OnMismatch::Store),
            "kafka" => Ok(OnMismatch::Kafka),
            other => Err(format!(
                "--kafka-on-offset-mismatch must be halt, store or kafka, got {other:?}"
            )),
        }
    }
}

/// Where to resume a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// At this offset (`None`: where the consumer's reset policy says).
    At(Option<i64>),
    /// Not at all, for this reason.
    Halt(String),
}

/// Decides where partition consumption resumes. `log` is the partition's
/// `(low, high)` watermarks, when the broker told them.
pub fn resume_point(
    stored: Option<i64>,
    committed: Option<i64>,
    log: Option<(i64, i64)>,
    policy: OnMismatch,
) -> Resume {
    if let (Some(s), Some((low, high))) = (stored, log) {
        if s > high {
            return match policy {
                OnMismatch::Kafka => Resume::At(Some(
                    committed.filter(|&k| (low..=high).contains(&k)).unwrap_or(low),
                )),
                _ => Resume::Halt(format!(
                    "the store's next offset {s} is past the partition's end {high}: the topic was recreated or truncated, and new messages would be taken for ones already applied; to consume it from Kafka's committed offset or its start, restart with --kafka-on-offset-mismatch kafka"
                )),
            };
        }
    }
    match (stored, committed) {
        (Some(s), Some(k)) if k > s => match policy {
            OnMismatch::Store => Resume::At(Some(s)),
            OnMismatch::Kafka => Resume::At(Some(k)),
            OnMismatch::Halt => Resume::Halt(format!(
                "Kafka's committed offset {k} is ahead of the store's next offset {s}: messages {s}..{k} were committed but are not in this store; after restoring the store from a backup, restart with --kafka-on-offset-mismatch store to read them again; if another node with a store of its own holds them, with --kafka-on-offset-mismatch kafka"
            )),
        },
        (Some(s), _) => Resume::At(Some(s)),
        (None, k) => Resume::At(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OnMismatch::*;

    #[test]
    fn agreement_resumes_at_the_store() {
        assert_eq!(
            resume_point(Some(10), Some(8), Some((0, 20)), Halt),
            Resume::At(Some(10))
        );
        assert_eq!(
            resume_point(Some(10), Some(10), Some((0, 10)), Halt),
            Resume::At(Some(10))
        );
        assert_eq!(
            resume_point(Some(10), None, None, Halt),
            Resume::At(Some(10))
        );
        assert_eq!(
            resume_point(None, Some(4), Some((0, 9)), Halt),
            Resume::At(Some(4))
        );
        assert_eq!(
            resume_point(None, None, Some((0, 9)), Halt),
            Resume::At(None)
        );
    }

    #[test]
    fn kafka_ahead_of_the_store_halts_unless_told() {
        assert!(
            matches!(resume_point(Some(5), Some(9), Some((0, 20)), Halt), Resume::Halt(m) if m.contains("5..9"))
        );
        assert_eq!(
            resume_point(Some(5), Some(9), Some((0, 20)), Store),
            Resume::At(Some(5))
        );
        assert_eq!(
            resume_point(Some(5), Some(9), Some((0, 20)), Kafka),
            Resume::At(Some(9))
        );
    }

    #[test]
    fn a_store_past_the_log_end_halts_unless_told() {
        assert!(
            matches!(resume_point(Some(50), None, Some((0, 3)), Halt), Resume::Halt(m) if m.contains("recreated"))
        );
        assert!(matches!(
            resume_point(Some(50), None, Some((0, 3)), Store),
            Resume::Halt(_)
        ));
        assert_eq!(
            resume_point(Some(50), Some(2), Some((0, 3)), Kafka),
            Resume::At(Some(2))
        );
        assert_eq!(
            resume_point(Some(50), Some(60), Some((1, 3)), Kafka),
            Resume::At(Some(1))
        );
        assert_eq!(
            resume_point(Some(50), None, Some((1, 3)), Kafka),
            Resume::At(Some(1))
        );
    }
}
