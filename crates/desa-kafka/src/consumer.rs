//! The consume loop: poll, parse, batch, write durably with offsets, commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use desa_engine::Clock;
use desa_model::{admit, BodyFormat, Event, Lateness, Limits, Reason};
use desa_store::{SourceOffset, Store, StoreError, WriteRequest};
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::dlq::{DeadLetter, DeadLetters};
use crate::resume::{resume_point, Resume};
use crate::status::KafkaStatus;
use crate::{KafkaConfig, Result};

/// Consumed but not yet durable.
#[derive(Default)]
struct Pending {
    /// Events by partition: each partition's are written with its offset.
    events: BTreeMap<i32, Vec<Event>>,
    event_count: usize,
    /// Next offset per partition covered by this batch.
    offsets: BTreeMap<i32, i64>,
    event_max_ts: BTreeMap<i32, i64>,
    dead: Vec<DeadLetter>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.offsets.is_empty() && self.dead.is_empty()
    }
}

struct LoopState {
    pending: Pending,
    /// Next offset to apply per assigned partition (the store's, advanced by
    /// `pending`); messages below it were applied already and are dropped.
    next: HashMap<i32, i64>,
    /// Partitions another worker claimed since this one did: their messages
    /// are dropped until the next assignment claims them again.
    fenced: HashSet<i32>,
    dlq: DeadLetters,
}

struct Shared {
    cfg: KafkaConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    status: Arc<KafkaStatus>,
    state: Mutex<LoopState>,
    stop: AtomicBool,
}

struct Context(Arc<Shared>);

impl ClientContext for Context {
    /// Every second: the high watermark the broker attached to its last fetch
    /// response, and the offset committed to Kafka, per assigned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(topic) = statistics.topics.get(&self.0.cfg.topic) {
            for (p, part) in &topic.partitions {
                if *p < 0 {
                    continue;
                }
                if part.hi_offset >= 0 {
                    self.0.status.high_watermark(*p, part.hi_offset);
                }
                if part.committed_offset >= 0 {
                    self.0.status.committed(*p, part.committed_offset);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error");
        self.0.status.broker_error(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Context {
    /// Eager and cooperative rebalances alike: revoked partitions are flushed
    /// and committed first; assigned partitions are claimed in the store and
    /// assigned at the offsets the store holds, so consumption resumes exactly
    /// after the last durable batch, whatever Kafka's committed offsets say
    /// and wherever this member's fetch position was.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts = partitions_of(tpl, &self.0.cfg.topic);
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let source = self.0.cfg.source_name();
                // The topic's partition count: in cluster mode, which
                // shards of devices the claimed partitions carry.
                let of = consumer
                    .fetch_metadata(Some(&self.0.cfg.topic), Duration::from_secs(5))
                    .map_err(
                        |e| tracing::warn!(error = %e, "cannot read the topic's partition count"),
                    )
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                    .unwrap_or(0);
                let claims = claim(&self.0, &source, &parts, of);
                let committed = consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(5))
                    .map_err(|e| tracing::warn!(error = %e, "cannot read committed offsets"))
                    .ok();
                self.0.status.assigned(&parts);
                {
                    let mut st = self.0.state.lock();
                    for c in &claims {
                        st.fenced.remove(&c.partition);
                        let in_kafka = committed
                            .as_ref()
                            .and_then(|t| t.find_partition(&self.0.cfg.topic, c.partition))
                            .and_then(|e| match e.offset() {
                                Offset::Offset(n) => Some(n),
                                _ => None,
                            });
                        let log = consumer
                            .fetch_watermarks(&self.0.cfg.topic, c.partition, Duration::from_secs(5))
                            .map_err(|e| tracing::warn!(error = %e, partition = c.partition, "cannot read the partition's watermarks"))
                            .ok();
                        match resume_point(
                            c.next_offset,
                            in_kafka,
                            log,
                            self.0.cfg.on_offset_mismatch,
                        ) {
                            Resume::At(resume) => {
                                self.0.status.resumed_at(c.partition, resume);
                                if let Some(next) = resume {
                                    st.next.insert(c.partition, next);
                                    let _ = tpl.set_partition_offset(
                                        &self.0.cfg.topic,
                                        c.partition,
                                        Offset::Offset(next),
                                    );
                                }
                            }
                            Resume::Halt(why) => {
                                tracing::error!(partition = c.partition, "partition halted: {why}");
                                self.0.status.halted(c.partition, why);
                                st.fenced.insert(c.partition);
                            }
                        }
                    }
                    // Not claimed (shutting down): consume nothing from them.
                    for p in &parts {
                        if !claims.iter().any(|c| c.partition == *p) {
                            st.fenced.insert(*p);
                        }
                    }
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "cannot assign partitions");
                }
                tracing::info!(partitions = ?parts, "partitions assigned");
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Make everything consumed from the revoked partitions durable
                // and committed before another member takes them over.
                flush(&self.0, consumer, CommitMode::Sync);
                {
                    let mut st = self.0.state.lock();
                    for p in &parts {
                        st.next.remove(p);
                    }
                }
                self.0.status.revoked(&parts);
                self.0.store.release(&self.0.cfg.source_name(), &parts);
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    tracing::error!(error = %e, "cannot unassign partitions");
                }
                tracing::info!(partitions = ?parts, "partitions revoked");
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                if consumer.unassign().is_err() {
                    tracing::error!("cannot unassign after a rebalance error");
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = &result {
            tracing::warn!(error = %e, "offset commit to Kafka failed");
        }
        if result.is_ok() {
            for e in offsets.elements() {
                if let Offset::Offset(o) = e.offset() {
                    self.0.status.committed(e.partition(), o);
                }
            }
        }
    }
}

/// Claims newly assigned partitions in the store, retrying while the store
/// is unreachable: consuming a partition before it is claimed could commit
/// over its new owner.
fn claim(shared: &Shared, source: &str, parts: &[i32], of: i32) -> Vec<desa_store::Claim> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match shared.store.claim(source, parts, of) {
            Ok(claims) => return claims,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim assigned partitions; retrying");
                shared.status.storage_error(Some(e.to_string()));
                if shared.stop.load(Ordering::SeqCst) {
                    return Vec::new();
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

/// A running Kafka source; dropping it stops the consumer after a last flush.
pub struct KafkaSource {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaSource {
    /// Subscribes and starts consuming on a thread of its own.
    pub fn start(
        cfg: KafkaConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        fallback_dlq: std::path::PathBuf,
    ) -> Result<KafkaSource> {
        let dlq = DeadLetters::new(
            &cfg.topic,
            cfg.dlq.clone(),
            &cfg.brokers,
            &cfg.options,
            fallback_dlq,
        )?;
        let shared = Arc::new(Shared {
            status: Arc::new(KafkaStatus::new(&cfg.topic)),
            cfg,
            store,
            clock,
            state: Mutex::new(LoopState {
                pending: Pending::default(),
                next: HashMap::new(),
                fenced: HashSet::new(),
                dlq,
            }),
            stop: AtomicBool::new(false),
        });
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &shared.cfg.brokers)
            .set("group.id", &shared.cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A member killed without leaving holds up the next rebalance
            // until the broker gives up on it: keep both timeouts short.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "30000")
            .set("statistics.interval.ms", "1000");
        for (k, v) in &shared.cfg.options {
            client.set(k, v);
        }
        let consumer: BaseConsumer<Context> =
            client.create_with_context(Context(shared.clone()))?;
        consumer.subscribe(&[&shared.cfg.topic])?;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("desa-kafka".into())
                .spawn(move || run(&shared, consumer))
                .map_err(|e| crate::Error::Other(format!("cannot start the Kafka thread: {e}")))?
        };
        Ok(KafkaSource {
            shared,
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> Arc<KafkaStatus> {
        self.shared.status.clone()
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Arc<Shared>, consumer: BaseConsumer<Context>) {
    let mut last_flush = Instant::now();
    let mut last_probe = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => handle(shared, &m),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consume error");
                shared.status.broker_error(e.to_string());
            }
            None => {}
        }
        let (count, any) = {
            let st = shared.state.lock();
            (st.pending.event_count, !st.pending.is_empty())
        };
        if count >= shared.cfg.batch_max_events
            || (any && last_flush.elapsed() >= shared.cfg.batch_max_wait)
        {
            flush(shared, &consumer, CommitMode::Async);
            last_flush = Instant::now();
        }
        if last_probe.elapsed() >= Duration::from_secs(2) {
            probe(shared, &consumer);
            last_probe = Instant::now();
        }
    }
    flush(shared, &consumer, CommitMode::Sync);
    consumer.unsubscribe();
}

/// Checks that the broker answers. (High watermarks and committed offsets
/// come from librdkafka's statistics, see `Context::stats`.)
fn probe(shared: &Shared, consumer: &BaseConsumer<Context>) {
    let topic = &shared.cfg.topic;
    match consumer.fetch_metadata(Some(topic), Duration::from_millis(1000)) {
        Ok(_) => shared.status.broker_ok(),
        Err(e) => shared
            .status
            .broker_error(format!("broker unreachable: {e}")),
    }
}

fn handle(shared: &Shared, m: &BorrowedMessage<'_>) {
    let (p, offset) = (m.partition(), m.offset());
    let mut st = shared.state.lock();
    if st.fenced.contains(&p) || st.next.get(&p).is_some_and(|&next| offset < next) {
        shared.status.skipped();
        return;
    }
    if let Some(&next) = st.next.get(&p) {
        if offset > next {
            // Compacted or transactional topics have gaps; otherwise the
            // broker skipped messages it should have served.
            tracing::warn!(partition = p, expected = next, got = offset, "offset gap");
        }
    }
    shared.status.message();
    let dead = |st: &mut LoopState,
                index: Option<usize>,
                error: String,
                payload: &[u8],
                reason: &'static str| {
        shared.status.dead_letter(reason);
        st.pending.dead.push(DeadLetter {
            partition: p,
            offset,
            index,
            error,
            payload: String::from_utf8_lossy(payload).into_owned(),
        });
    };
    let payload = m.payload().unwrap_or(&[]);
    if payload.is_empty() {
        dead(
            &mut st,
            None,
            "message has no value".into(),
            payload,
            "empty",
        );
    } else {
        let limits = Limits {
            now_secs: shared.clock.now_secs(),
            max_future_secs: shared.cfg.max_future_secs,
            retention_secs: shared.cfg.retention_secs,
        };
        let lateness = Lateness {
            watermark: shared.store.watermark_secs(),
            max_secs: shared.cfg.max_lateness_secs,
        };
        // Every rejection is listed: each goes to the dead letters.
        match admit(payload, BodyFormat::Ndjson, &limits, lateness, usize::MAX) {
            Err(e) => dead(&mut st, None, e.to_string(), payload, "unreadable"),
            Ok(admitted) => {
                let lines: Vec<&[u8]> = payload.split(|&b| b == b'\n').collect();
                for r in admitted.body.rejected {
                    let line = lines.get(r.index).copied().unwrap_or(payload);
                    let label = match r.reason {
                        Reason::TooLate | Reason::Expired => r.reason.label(),
                        _ => "invalid_event",
                    };
                    dead(&mut st, Some(r.index), r.error, line, label);
                }
                if let Some(late) = &shared.cfg.on_late {
                    for secs in admitted.late_secs {
                        (late.0)(secs);
                    }
                }
                for (_, e) in admitted.body.events {
                    let max = st.pending.event_max_ts.entry(p).or_insert(e.ts_secs);
                    *max = (*max).max(e.ts_secs);
                    st.pending.events.entry(p).or_default().push(e);
                    st.pending.event_count += 1;
                }
            }
        }
    }
    st.pending.offsets.insert(p, offset + 1);
    st.next.insert(p, offset + 1);
}

/// Makes the pending batch durable (dead letters first, then each
/// partition's events with its offset in a store write of their own, the
/// partitions' writes at once), then commits the offsets to Kafka.
///
/// Partitions are written apart so that their transactions can run side by
/// side: in cluster mode each writes its own blocks and offset row, so they
/// share no row to queue on. Each partition's offset still advances in
/// order: the next batch waits for every write of this one.
///
/// Retries a partition's write with backoff while the store cannot persist
/// it; nothing is dropped, unless another worker has claimed the
/// partition: then its events are that worker's to read again from the
/// store's offsets, and this worker stops consuming the partition until it
/// is assigned to it again.
fn flush(shared: &Shared, consumer: &BaseConsumer<Context>, mode: CommitMode) {
    let mut st = shared.state.lock();
    if st.pending.is_empty() {
        return;
    }
    let mut batch = std::mem::take(&mut st.pending);
    let mut backoff = Duration::from_millis(50);
    let mut retry = |e: String| -> bool {
        tracing::warn!(error = %e, "cannot persist consumed events; retrying");
        shared.status.storage_error(Some(e));
        if shared.stop.load(Ordering::SeqCst) && backoff > Duration::from_secs(5) {
            // Shutting down: what was not written is read again on restart.
            return false;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
        true
    };
    while let Err(e) = st.dlq.write_durable(&batch.dead) {
        if !retry(e.to_string()) {
            return;
        }
    }
    let source = shared.cfg.source_name();
    let mut todo: Vec<i32> = batch.offsets.keys().copied().collect();
    let mut written = Vec::with_capacity(todo.len());
    while !todo.is_empty() {
        let (tx, rx) = std::sync::mpsc::channel();
        for &p in &todo {
            let mut req = WriteRequest::events(batch.events.get(&p).cloned().unwrap_or_default());
            req.source_offsets = vec![SourceOffset {
                source: source.clone(),
                partition: p,
                next_offset: batch.offsets[&p],
            }];
            let tx = tx.clone();
            shared.store.write_with(
                req,
                Box::new(move |r| {
                    let _ = tx.send((p, r));
                }),
            );
        }
        drop(tx);
        let mut failed = Vec::new();
        let mut error = None;
        for (p, r) in rx {
            match r {
                Ok(_) => written.push(p),
                Err(StoreError::Fenced { stream, partition }) => {
                    tracing::warn!(
                        partition,
                        source = %stream,
                        "fenced: another worker owns the partition now; dropping its events"
                    );
                    shared.status.fenced();
                    // Not written: read again by the partition's owner.
                    st.fenced.insert(p);
                    st.next.remove(&p);
                }
                Err(e) => {
                    failed.push(p);
                    error = Some(e.to_string());
                }
            }
        }
        todo = failed;
        if let Some(e) = error {
            if !retry(e) {
                return;
            }
        }
    }
    shared.status.storage_error(None);
    drop(st);
    batch.offsets.retain(|p, _| written.contains(p));
    batch.event_max_ts.retain(|p, _| written.contains(p));
    let count = written
        .iter()
        .map(|p| batch.events.get(p).map_or(0, Vec::len))
        .sum();
    shared
        .status
        .written(count, &batch.offsets, &batch.event_max_ts);
    let mut tpl = TopicPartitionList::new();
    for (p, next) in &batch.offsets {
        let _ = tpl.add_partition_offset(&shared.cfg.topic, *p, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        // The node's own offsets are authoritative; Kafka's are for lag tools
        // and the next owner, and are committed again with the next batch.
        tracing::debug!(error = %e, "offset commit to Kafka failed");
    }
}
