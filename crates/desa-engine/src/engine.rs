//! The engine: one write path (group commit to the log, then the head), one
//! background flusher (frozen heads to segments, then `maintain`: compaction
//! and summaries; memory budget), and queries over a consistent view of
//! head, frozen heads, segments and summaries.
//!
//! Each thread has its file: `recover` opens the data dir, `commit` is the
//! commit thread, `flush` the flusher, `maintain` compaction and the summary
//! thread, `memory` the memory governor.

mod change;
mod commit;
mod expire;
mod flush;
mod maintain;
mod memory;
mod recover;
mod scrub;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use desa_model::{AvgAnswer, DoubleDouble, GeoAnswer, GeoBox, TimeWindow, TopkAnswer, TypesAnswer};
use parking_lot::{Condvar, Mutex, RwLock};

use self::commit::committer_loop;
use self::flush::flusher_loop;
use self::maintain::summary_loop;
use self::memory::{enforce_memory_budget, MEMORY_CHECK_INTERVAL};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::head::Head;
use crate::idempotency::IdempotencyKeys;
use crate::manifest::Manifest;
use crate::query;
use crate::segment::Segment;
use crate::summary::LiveSummary;
use crate::wal::SourceOffset;

/// Tuning of the engine; [`EngineConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub dir: PathBuf,
    /// Rows in the in-memory head before it is frozen and flushed.
    pub head_max_rows: usize,
    /// Approximate bytes in the head before it is frozen (large metadata
    /// fills a head long before its row limit).
    pub head_max_bytes: usize,
    /// Frozen heads waiting for the flusher before writers wait too.
    pub max_frozen_heads: usize,
    /// A head of at least `idle_flush_rows` rows that has taken no write
    /// for this long is frozen and flushed: queries then read its events
    /// from a segment and its summaries instead of counting its rows (a
    /// top-K over a window that holds a head counts every row of it), and
    /// a restart replays less of the log. A smaller head costs little to
    /// count and would only add a small segment per lull.
    pub idle_flush_after: Duration,
    pub idle_flush_rows: usize,
    /// Resident memory the node aims to stay under.
    pub memory_budget_bytes: u64,
    /// Segments of one size tier in one day that trigger a merge.
    pub compaction_fanin: usize,
    /// No merge writes a segment of more than this many rows: a merge
    /// holds its rows in memory, so this bounds its memory.
    pub max_segment_rows: u64,
    /// Segments a summary may leave to queries (late events that arrived
    /// after it was built) before it is refreshed.
    pub summary_max_extras: usize,
    /// When set, whole UTC days further behind the clock than this are
    /// dropped (see `engine::expire`).
    pub retention_secs: Option<i64>,
    /// How often the scrub reads every file again to verify its checksum
    /// (damage since it was first read; see `engine::scrub`).
    pub scrub_every: Duration,
}

impl EngineConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            dir: dir.into(),
            head_max_rows: 262_144,
            head_max_bytes: 64 << 20,
            max_frozen_heads: 2,
            idle_flush_after: Duration::from_secs(5),
            idle_flush_rows: 16_384,
            memory_budget_bytes: 1 << 30,
            compaction_fanin: 4,
            max_segment_rows: 1 << 20,
            summary_max_extras: 4,
            retention_secs: None,
            scrub_every: Duration::from_secs(24 * 3600),
        }
    }
}

pub use self::memory::resident_bytes;
pub(crate) use self::recover::ORPHANS_DIR;
pub use desa_store::{WriteOutcome, WriteRequest};

/// Receives timings from the engine, for metrics.
pub trait EngineObserver: Send + Sync + 'static {
    fn wal_synced(&self, _elapsed: Duration, _bytes: usize, _requests: usize) {}
    fn head_flushed(&self, _elapsed: Duration, _rows: usize) {}
    fn compacted(&self, _elapsed: Duration, _rows: u64) {}
    fn summarized(&self, _elapsed: Duration, _events: u64) {}
    /// A top-K query added up every count list of its window: the threshold
    /// algorithm's bound did not fall (activity too flat to stop early).
    fn topk_merged(&self) {}
    /// A top-K query counted `segments` segments its window cut from their
    /// rows in the window (time order) instead of reading them by all-time
    /// count.
    fn topk_counted(&self, _segments: usize) {}
    /// Retention dropped `events` events (whole expired days).
    fn expired(&self, _events: u64) {}
}

struct NoObserver;
impl EngineObserver for NoObserver {}

/// Sizes and progress, for `/metrics` and `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub head_rows: u64,
    pub frozen_rows: u64,
    pub segments: u64,
    pub segment_rows: u64,
    pub segment_bytes: u64,
    pub summaries: u64,
    pub summary_bytes: u64,
    /// Files whose checksum has not been verified yet since the engine
    /// opened (the scrub's progress; see `engine::scrub`).
    pub unverified_files: u64,
    /// A flush, merge or summary is due (the node has not caught up yet).
    pub maintenance_pending: bool,
    /// Largest event timestamp stored (event-time progress).
    pub watermark_secs: Option<i64>,
    pub poisoned: Option<String>,
    /// Background tasks failing now (`"flush: ..."`), retried until they
    /// succeed; while flushes fail and the frozen heads are full, writes
    /// are refused.
    pub failing: Option<String>,
}

type Reply = Box<dyn FnOnce(Result<WriteOutcome>) + Send>;

struct Commit {
    /// `None` is a barrier that freezes the head (see [`Engine::flush`]).
    req: Option<WriteRequest>,
    reply: Reply,
}

struct Frozen {
    head: Arc<Head>,
    /// First log file that is not covered by this head.
    wal_next: u64,
}

struct State {
    head: Head,
    frozen: VecDeque<Frozen>,
    segments: Vec<Arc<Segment>>,
    summaries: Vec<Arc<LiveSummary>>,
    keys: IdempotencyKeys,
    watermark: Option<i64>,
    /// Next offset per (source, partition), as durable as the events before it.
    offsets: BTreeMap<(String, i32), i64>,
    /// What cached answers are checked against.
    epochs: desa_store::WriteEpochs,
}

struct Inner {
    cfg: EngineConfig,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn EngineObserver>,
    state: RwLock<State>,
    /// Every change to the file lists (flush, merge, summary) is made and
    /// stored under this lock.
    manifest: Mutex<Manifest>,
    /// Held while compacting (flusher or [`Engine::settle`]).
    maintenance: Mutex<()>,
    /// Held while summarizing (summary thread or [`Engine::settle`]).
    summarizing: Mutex<()>,
    poisoned: Mutex<Option<String>>,
    /// The last error of each background task ("flush", "compaction",
    /// "summary") that has not succeeded since; cleared by its next success.
    failing: Mutex<BTreeMap<&'static str, String>>,
    flush_wake: Mutex<bool>,
    flush_cv: Condvar,
    frozen_cv: Condvar,
    frozen_lock: Mutex<()>,
    shutdown: AtomicBool,
}

/// The embedded storage engine of one node.
pub struct Engine {
    inner: Arc<Inner>,
    commit_tx: Mutex<Option<mpsc::Sender<Commit>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Holds the exclusive lock on `DIR/LOCK` while the engine is open.
    _lock: fs::File,
}

pub(crate) use crate::manifest::{segments_dir, wal_dir};

impl Engine {
    /// Opens (or creates) the data directory, recovering from the manifest and
    /// the write-ahead log.
    pub fn open(cfg: EngineConfig, clock: Arc<dyn Clock>) -> Result<Engine> {
        Engine::open_with_observer(cfg, clock, Arc::new(NoObserver))
    }

    pub fn open_with_observer(
        cfg: EngineConfig,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn EngineObserver>,
    ) -> Result<Engine> {
        let recovered = recover::open_dir(&cfg, clock.as_ref())?;
        let recover::Recovered {
            lock,
            manifest,
            segments,
            summaries,
            keys,
            mut head,
            watermark,
            offsets,
            writer,
        } = recovered;
        let mut frozen = VecDeque::new();
        if !head.is_empty() {
            // Replayed rows go straight to a segment, so the log they came
            // from can be dropped and the head starts empty.
            frozen.push_back(Frozen {
                head: Arc::new(std::mem::replace(&mut head, Head::new())),
                wal_next: writer.number(),
            });
        }
        let inner = Arc::new(Inner {
            cfg,
            clock,
            observer,
            state: RwLock::new(State {
                head,
                frozen,
                segments,
                summaries,
                keys,
                watermark,
                offsets,
                epochs: Default::default(),
            }),
            manifest: Mutex::new(manifest),
            maintenance: Mutex::new(()),
            summarizing: Mutex::new(()),
            poisoned: Mutex::new(None),
            failing: Mutex::new(BTreeMap::new()),
            flush_wake: Mutex::new(true),
            flush_cv: Condvar::new(),
            frozen_cv: Condvar::new(),
            frozen_lock: Mutex::new(()),
            shutdown: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<Commit>();
        let committer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-commit".into())
                .spawn(move || {
                    supervise(&inner, "desa-commit", || committer_loop(&inner, writer, rx))
                })
                .map_err(Error::io("spawn", "desa-commit"))?
        };
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-flush".into())
                .spawn(move || supervise(&inner, "desa-flush", || flusher_loop(&inner)))
                .map_err(Error::io("spawn", "desa-flush"))?
        };
        let governor = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-memory".into())
                .spawn(move || {
                    supervise(&inner, "desa-memory", || {
                        while !inner.shutdown.load(Ordering::SeqCst) {
                            enforce_memory_budget(&inner);
                            std::thread::sleep(MEMORY_CHECK_INTERVAL);
                        }
                    })
                })
                .map_err(Error::io("spawn", "desa-memory"))?
        };
        let summarizer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-summary".into())
                .spawn(move || supervise(&inner, "desa-summary", || summary_loop(&inner)))
                .map_err(Error::io("spawn", "desa-summary"))?
        };
        let scrubber = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-scrub".into())
                .spawn(move || supervise(&inner, "desa-scrub", || scrub::scrub_loop(&inner)))
                .map_err(Error::io("spawn", "desa-scrub"))?
        };
        Ok(Engine {
            inner,
            commit_tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![committer, flusher, governor, summarizer, scrubber]),
            _lock: lock,
        })
    }

    /// Queues a write; `reply` runs once the events are durable and visible
    /// (or the write failed). Concurrent writes share one log sync.
    pub fn write_with(
        &self,
        req: WriteRequest,
        reply: impl FnOnce(Result<WriteOutcome>) + Send + 'static,
    ) {
        self.send(Commit {
            req: Some(req),
            reply: Box::new(reply),
        });
    }

    fn send(&self, commit: Commit) {
        match self.commit_tx.lock().as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(c)) = tx.send(commit) {
                    (c.reply)(Err(Error::Closed));
                }
            }
            None => (commit.reply)(Err(Error::Closed)),
        }
    }

    /// Writes and waits until the events are durable and visible.
    pub fn write(&self, req: WriteRequest) -> Result<WriteOutcome> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.write_with(req, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// The stored response of an idempotency key, if it was seen.
    pub fn idempotent_response(&self, key: &str) -> Option<String> {
        self.inner.state.read().keys.get(key).map(str::to_owned)
    }

    /// The next offset to read from a source partition, if any was stored.
    pub fn source_offset(&self, source: &str, partition: i32) -> Option<i64> {
        self.inner
            .state
            .read()
            .offsets
            .get(&(source.to_owned(), partition))
            .copied()
    }

    /// Every stored source position.
    pub fn source_offsets(&self) -> Vec<SourceOffset> {
        offsets_list(&self.inner.state.read().offsets)
    }

    /// Largest event timestamp stored so far.
    pub fn watermark_secs(&self) -> Option<i64> {
        self.inner.state.read().watermark
    }

    /// The average of one device and type over the window. Like `geo` and
    /// `topk`, an error only when a file the answer needs fails its
    /// checksum (`Error::Corrupt`, naming it): never an answer without it.
    pub fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> Result<AvgAnswer> {
        let (count, sum) = self.count_and_sum(
            w,
            &query::all,
            |h| h.avg(device, event_type, w),
            |plan| query::avg(plan, device, event_type, w),
        )?;
        Ok(AvgAnswer::new(device, event_type, w, count, sum.value()))
    }

    pub fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> Result<GeoAnswer> {
        let (count, sum) = self.count_and_sum(
            w,
            &query::geo_use(event_type),
            |h| h.geo(event_type, bbox, w),
            |plan| query::geo(plan, event_type, bbox, w),
        )?;
        Ok(GeoAnswer::new(event_type, w, bbox, count, sum.value()))
    }

    /// The write stamp of queries of `event_type` over `w` (see
    /// `desa_store::WriteEpochs`).
    pub fn stamp(&self, event_type: &str, w: TimeWindow) -> u64 {
        self.inner.state.read().epochs.stamp(event_type, w)
    }

    /// The stored types: the heads' and the segments' (summaries hold the
    /// segments' events again). Reads a few values per segment; a segment
    /// whose checksum fails is reported, as for a query.
    pub fn types(&self) -> Result<TypesAnswer> {
        let mut out = TypesAnswer::default();
        let (frozen, segs) = {
            let st = self.inner.state.read();
            out.add(st.head.type_stats());
            let frozen: Vec<Arc<Head>> = st.frozen.iter().map(|f| f.head.clone()).collect();
            (frozen, snapshot(&st))
        };
        for h in &frozen {
            out.add(h.type_stats());
        }
        for s in &segs.0 {
            s.verify()
                .inspect_err(|e| scrub::report_damaged(&self.inner, e))?;
            out.add(s.type_stats());
        }
        Ok(out)
    }

    /// Verifies the checksum of each file `plan` reads (each file once
    /// while it is open); a damaged one is reported on `/healthz` too.
    fn verify(&self, plan: &query::Plan) -> Result<()> {
        plan.verify()
            .inspect_err(|e| scrub::report_damaged(&self.inner, e))
    }

    /// Adds up a count and sum over the active head (read under the state
    /// lock), and the frozen heads and the files (read after it is released:
    /// they never change).
    fn count_and_sum(
        &self,
        w: TimeWindow,
        answers: query::Answers,
        in_head: impl Fn(&Head) -> (u64, DoubleDouble),
        in_files: impl Fn(&query::Plan) -> (u64, DoubleDouble),
    ) -> Result<(u64, DoubleDouble)> {
        let ((mut count, mut sum), frozen, segs) = {
            let st = self.inner.state.read();
            let frozen: Vec<Arc<Head>> = st.frozen.iter().map(|f| f.head.clone()).collect();
            (in_head(&st.head), frozen, snapshot(&st))
        };
        for h in &frozen {
            let (c, s) = in_head(h);
            count += c;
            sum = sum + s;
        }
        let plan = query::plan(&segs.0, &segs.1, w, answers);
        self.verify(&plan)?;
        let (c, s) = in_files(&plan);
        count += c;
        sum = sum + s;
        Ok((count, sum))
    }

    /// The active head is counted row by row into exact counts under the
    /// state lock (it is at most `head_max_rows`); the frozen heads, which
    /// never change, and the files are read after the lock is released, so
    /// a long top-K never holds up a write. A frozen head the window holds
    /// whole is one more count-ordered list of the threshold algorithm; one
    /// the window cuts is counted into the exact counts.
    pub fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> Result<TopkAnswer> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let (frozen, segs) = {
            let st = self.inner.state.read();
            for (d, c) in st.head.device_counts(event_type, w) {
                *counts.entry(d.to_owned()).or_default() += c;
            }
            let frozen: Vec<Arc<Head>> = st.frozen.iter().map(|f| f.head.clone()).collect();
            (frozen, snapshot(&st))
        };
        let mut whole: Vec<&Head> = Vec::new();
        for h in &frozen {
            if h.within(w) {
                whole.push(h);
                continue;
            }
            for (d, c) in h.device_counts(event_type, w) {
                *counts.entry(d.to_owned()).or_default() += c;
            }
        }
        let plan = query::plan(&segs.0, &segs.1, w, &query::all);
        self.verify(&plan)?;
        let (devices, how) = query::topk(&whole, &counts, &plan, event_type, w, k);
        if how.path == query::TopkPath::Merged {
            self.inner.observer.topk_merged();
        }
        if how.counted_segments > 0 {
            self.inner.observer.topk_counted(how.counted_segments);
        }
        Ok(TopkAnswer {
            event_type: event_type.to_owned(),
            start: w.start,
            end: w.end,
            k,
            devices,
        })
    }

    pub fn stats(&self) -> EngineStats {
        let pending = maintain::pending(&self.inner);
        let st = self.inner.state.read();
        EngineStats {
            head_rows: st.head.len() as u64,
            frozen_rows: st.frozen.iter().map(|f| f.head.len() as u64).sum(),
            segments: st.segments.len() as u64,
            segment_rows: st.segments.iter().map(|s| s.meta.rows).sum(),
            segment_bytes: st.segments.iter().map(|s| s.meta.bytes).sum(),
            summaries: st.summaries.len() as u64,
            summary_bytes: st.summaries.iter().map(|s| s.meta.bytes).sum(),
            unverified_files: mapped_files(&st.segments, &st.summaries)
                .filter(|f| !f.verified())
                .count() as u64,
            maintenance_pending: pending,
            watermark_secs: st.watermark,
            poisoned: self.inner.poisoned.lock().clone(),
            failing: failing_summary(&self.inner.failing.lock()),
        }
    }

    /// Flushes, then compacts and summarizes until there is nothing left to
    /// do (the background threads do the same, a step at a time).
    pub fn settle(&self) -> Result<()> {
        self.flush()?;
        let _m = self.inner.maintenance.lock();
        let _s = self.inner.summarizing.lock();
        while expire::expire_once(&self.inner)?
            || maintain::compact_once(&self.inner)?
            || maintain::summarize_once(&self.inner, &|job| job())?
        {}
        Ok(())
    }

    /// Freezes the head and waits until every frozen head is in segments.
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Commit {
            req: None,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx.recv().unwrap_or(Err(Error::Closed))?;
        let mut guard = self.inner.frozen_lock.lock();
        loop {
            {
                let st = self.inner.state.read();
                if st.frozen.is_empty() {
                    return Ok(());
                }
            }
            if let Some(p) = self.inner.poisoned.lock().clone() {
                return Err(Error::Poisoned(p));
            }
            self.inner
                .frozen_cv
                .wait_for(&mut guard, Duration::from_millis(50));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.commit_tx.lock().take();
        self.inner.shutdown.store(true, Ordering::SeqCst);
        {
            *self.inner.flush_wake.lock() = true;
            self.inner.flush_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs a background thread's loop; if it panics, the engine is poisoned
/// (writes refused, `/healthz` says which thread and why) instead of going
/// on without the thread: a dead flusher would let the head grow and every
/// write wait forever.
fn supervise(inner: &Inner, thread: &str, body: impl FnOnce()) {
    supervise_with(&inner.poisoned, &inner.frozen_cv, thread, body)
}

/// [`supervise`] over the poison slot and the condition variable writers
/// wait on, which is all it touches.
fn supervise_with(
    poisoned: &Mutex<Option<String>>,
    waiters: &Condvar,
    thread: &str,
    body: impl FnOnce(),
) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(thread, panic = %what, "background thread panicked; refusing further writes");
        *poisoned.lock() = Some(format!("thread {thread} panicked: {what}"));
        waiters.notify_all();
    }
}

fn advance_offsets(offsets: &mut BTreeMap<(String, i32), i64>, new: &[SourceOffset]) {
    for o in new {
        let next = offsets
            .entry((o.source.clone(), o.partition))
            .or_insert(o.next_offset);
        *next = (*next).max(o.next_offset);
    }
}

fn offsets_list(offsets: &BTreeMap<(String, i32), i64>) -> Vec<SourceOffset> {
    offsets
        .iter()
        .map(|((source, partition), next)| SourceOffset {
            source: source.clone(),
            partition: *partition,
            next_offset: *next,
        })
        .collect()
}

type Snapshot = (Vec<Arc<Segment>>, Vec<Arc<LiveSummary>>);

fn snapshot(st: &State) -> Snapshot {
    (st.segments.clone(), st.summaries.clone())
}

/// The mapped file of every segment and summary of a snapshot.
fn mapped_files<'a>(
    segs: &'a [Arc<Segment>],
    sums: &'a [Arc<LiveSummary>],
) -> impl Iterator<Item = &'a crate::sections::SectionFile> {
    segs.iter()
        .map(|s| s.mapped())
        .chain(sums.iter().map(|s| s.file.mapped()))
}

fn failing_summary(failing: &BTreeMap<&'static str, String>) -> Option<String> {
    (!failing.is_empty()).then(|| {
        failing
            .iter()
            .map(|(what, e)| format!("{what} failing: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_poisons_and_a_clean_one_does_not() {
        let poisoned = Arc::new(Mutex::new(None));
        let waiters = Arc::new(Condvar::new());
        let (p, w) = (poisoned.clone(), waiters.clone());
        std::thread::spawn(move || supervise_with(&p, &w, "desa-flush", || {}))
            .join()
            .unwrap();
        assert_eq!(*poisoned.lock(), None);
        let (p, w) = (poisoned.clone(), waiters.clone());
        std::thread::spawn(move || {
            supervise_with(&p, &w, "desa-flush", || panic!("segment {} is odd", 7))
        })
        .join()
        .expect("the supervisor catches the panic");
        assert_eq!(
            poisoned.lock().as_deref(),
            Some("thread desa-flush panicked: segment 7 is odd")
        );
    }
}
