//! The engine: one write path (group commit to the log, then the head), one
//! background flusher (frozen heads to segments, then `maintain`: compaction
//! and summaries; memory budget), and queries over a consistent view of
//! head, frozen heads, segments and summaries.

mod maintain;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use desa_model::{AvgAnswer, DoubleDouble, GeoAnswer, GeoBox, TimeWindow, TopkAnswer};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::head::Head;
use crate::idempotency::IdempotencyKeys;
use crate::manifest::Manifest;
use crate::query;
use crate::sections::SectionFile;
use crate::segment::{write_segment, Segment, SegmentMeta};
use crate::summary::{LiveSummary, Summary, SummaryMeta};
use crate::wal::{self, encode_parts, RecordParts, SourceOffset, WalWriter};

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
    /// Resident memory the node aims to stay under.
    pub memory_budget_bytes: u64,
    /// Segments of one size tier in one day that trigger a merge.
    pub compaction_fanin: usize,
    /// Segments are not merged past this many rows.
    pub max_segment_rows: u64,
    /// Segments a summary may leave to queries (late events that arrived
    /// after it was built) before it is refreshed.
    pub summary_max_extras: usize,
}

impl EngineConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            dir: dir.into(),
            head_max_rows: 262_144,
            head_max_bytes: 64 << 20,
            max_frozen_heads: 2,
            memory_budget_bytes: 1 << 30,
            compaction_fanin: 4,
            max_segment_rows: 1 << 20,
            summary_max_extras: 4,
        }
    }
}

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
    /// A flush, merge or summary is due (the node has not caught up yet).
    pub maintenance_pending: bool,
    /// Largest event timestamp stored (event-time progress).
    pub watermark_secs: Option<i64>,
    pub poisoned: Option<String>,
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

/// Takes an exclusive `flock` on `DIR/LOCK` (released by the kernel when the
/// process exits, kill -9 included) and writes this process's id into it.
/// Held for as long as the returned file is open.
pub fn lock_dir(dir: &Path) -> Result<fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(Error::Locked {
            dir: dir.to_owned(),
            holder: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    let _ = f
        .set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| write!(f, "{}", std::process::id()));
    Ok(f)
}

fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}
fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

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
        let dir = cfg.dir.clone();
        for d in [dir.clone(), segments_dir(&dir), wal_dir(&dir)] {
            fs::create_dir_all(&d).map_err(Error::io("create dir", &d))?;
        }
        let lock = lock_dir(&dir)?;
        let manifest = Manifest::load(&dir)?.unwrap_or(Manifest {
            version: 1,
            next_segment_id: 1,
            wal_start: 1,
            segments: Vec::new(),
            summaries: Vec::new(),
            source_offsets: Vec::new(),
        });

        // Segments: the manifest's, verified; any other file is a leftover.
        let seg_dir = segments_dir(&dir);
        let mut segments = Vec::new();
        for m in &manifest.segments {
            segments.push(Arc::new(Segment::open(
                &seg_dir.join(SegmentMeta::file_name(m.id)),
                m.id,
            )?));
        }
        let mut summaries = Vec::new();
        for m in &manifest.summaries {
            let path = seg_dir.join(SummaryMeta::file_name(m.id));
            let file = Summary::open(&path, m.level, m.first_day)?;
            summaries.push(Arc::new(LiveSummary {
                meta: m.clone(),
                file: Arc::new(file),
            }));
        }
        let live: std::collections::HashSet<String> = manifest
            .segments
            .iter()
            .map(|m| SegmentMeta::file_name(m.id))
            .chain(
                manifest
                    .summaries
                    .iter()
                    .map(|m| SummaryMeta::file_name(m.id)),
            )
            .collect();
        for entry in fs::read_dir(&seg_dir).map_err(Error::io("read dir", &seg_dir))? {
            let entry = entry.map_err(Error::io("read dir", &seg_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                tracing::info!(file = %name, "removing segment file not named in the manifest");
                let _ = fs::remove_file(entry.path());
            }
        }

        // The log: delete what the manifest says is in segments, replay the rest.
        let wdir = wal_dir(&dir);
        for n in wal::list_files(&wdir)? {
            if n < manifest.wal_start {
                let _ = fs::remove_file(wal::file_path(&wdir, n));
            }
        }
        let mut keys = IdempotencyKeys::load(&dir)?;
        let mut head = Head::new();
        let mut watermark = segments
            .iter()
            .filter(|s| s.meta.rows > 0)
            .map(|s| s.meta.max_ts)
            .max();
        let mut offsets: BTreeMap<(String, i32), i64> = manifest
            .source_offsets
            .iter()
            .map(|o| ((o.source.clone(), o.partition), o.next_offset))
            .collect();
        let newest = wal::replay(&wdir, manifest.wal_start, |rec| {
            advance_offsets(&mut offsets, &rec.source_offsets);
            for e in &rec.events {
                head.insert(e);
                watermark = Some(watermark.map_or(e.ts_secs, |w| w.max(e.ts_secs)));
            }
            if let Some(k) = rec.idempotency_key {
                keys.insert(k, rec.response, rec.created_secs);
            }
        })?;
        keys.expire(clock.now_secs());
        let writer =
            WalWriter::create(&wdir, newest.max(manifest.wal_start.saturating_sub(1)) + 1)?;
        tracing::info!(
            segments = segments.len(),
            replayed_rows = head.len(),
            "storage engine opened"
        );

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
            }),
            manifest: Mutex::new(manifest),
            maintenance: Mutex::new(()),
            summarizing: Mutex::new(()),
            poisoned: Mutex::new(None),
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
                .spawn(move || committer_loop(&inner, writer, rx))
                .map_err(Error::io("spawn", "desa-commit"))?
        };
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-flush".into())
                .spawn(move || flusher_loop(&inner))
                .map_err(Error::io("spawn", "desa-flush"))?
        };
        let governor = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-memory".into())
                .spawn(move || {
                    while !inner.shutdown.load(Ordering::SeqCst) {
                        enforce_memory_budget(&inner);
                        std::thread::sleep(MEMORY_CHECK_INTERVAL);
                    }
                })
                .map_err(Error::io("spawn", "desa-memory"))?
        };
        let summarizer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("desa-summary".into())
                .spawn(move || summary_loop(&inner))
                .map_err(Error::io("spawn", "desa-summary"))?
        };
        Ok(Engine {
            inner,
            commit_tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![committer, flusher, governor, summarizer]),
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

    pub fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> AvgAnswer {
        let (count, sum) = self.count_and_sum(
            w,
            |h| h.avg(device, event_type, w),
            |plan| query::avg(plan, device, event_type, w),
        );
        AvgAnswer::new(device, event_type, w, count, sum.value())
    }

    pub fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> GeoAnswer {
        let (count, sum) = self.count_and_sum(
            w,
            |h| h.geo(event_type, bbox, w),
            |plan| query::geo(plan, event_type, bbox, w),
        );
        GeoAnswer::new(event_type, w, bbox, count, sum.value())
    }

    /// Adds up a count and sum over the heads (read under the state lock) and
    /// the files (read after it is released, from a snapshot of the lists).
    fn count_and_sum(
        &self,
        w: TimeWindow,
        in_head: impl Fn(&Head) -> (u64, DoubleDouble),
        in_files: impl Fn(&query::Plan) -> (u64, DoubleDouble),
    ) -> (u64, DoubleDouble) {
        let (mut count, mut sum, segs) = {
            let st = self.inner.state.read();
            let mut count = 0;
            let mut sum = DoubleDouble::ZERO;
            for h in heads(&st) {
                let (c, s) = in_head(h);
                count += c;
                sum = sum + s;
            }
            (count, sum, snapshot(&st))
        };
        let (c, s) = in_files(&query::plan(&segs.0, &segs.1, w));
        count += c;
        sum = sum + s;
        (count, sum)
    }

    /// A head the window holds whole is one more count-ordered list of the
    /// threshold algorithm, read under the state lock (usually a few
    /// entries); a head the window cuts is counted row by row into exact
    /// counts, and the files are then read without the lock.
    pub fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> TopkAnswer {
        let st = self.inner.state.read();
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut whole: Vec<&Head> = Vec::new();
        for h in heads(&st) {
            if h.within(w) {
                whole.push(h);
                continue;
            }
            for (d, c) in h.device_counts(event_type, w) {
                *counts.entry(d.to_owned()).or_default() += c;
            }
        }
        let segs = snapshot(&st);
        let run = |whole: &[&Head]| {
            let plan = query::plan(&segs.0, &segs.1, w);
            query::topk(whole, &counts, &plan, event_type, w, k)
        };
        let (devices, how) = if whole.is_empty() {
            drop(whole);
            drop(st);
            run(&[])
        } else {
            run(&whole)
        };
        if how.path == query::TopkPath::Merged {
            self.inner.observer.topk_merged();
        }
        if how.counted_segments > 0 {
            self.inner.observer.topk_counted(how.counted_segments);
        }
        TopkAnswer {
            event_type: event_type.to_owned(),
            start: w.start,
            end: w.end,
            k,
            devices,
        }
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
            maintenance_pending: pending,
            watermark_secs: st.watermark,
            poisoned: self.inner.poisoned.lock().clone(),
        }
    }

    /// Flushes, then compacts and summarizes until there is nothing left to
    /// do (the background threads do the same, a step at a time).
    pub fn settle(&self) -> Result<()> {
        self.flush()?;
        let _m = self.inner.maintenance.lock();
        let _s = self.inner.summarizing.lock();
        while maintain::compact_once(&self.inner)?
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

fn heads(st: &State) -> impl Iterator<Item = &Head> {
    std::iter::once(&st.head).chain(st.frozen.iter().map(|f| f.head.as_ref()))
}

const MAX_GROUP_BYTES: usize = 64 << 20;
/// How often the flusher wakes up when it has nothing to do.
const FLUSHER_IDLE_WAKE: Duration = Duration::from_millis(200);
/// How often resident memory is checked against the budget. Queries map
/// segment pages in quickly; this bounds how far they can overshoot.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_millis(20);

fn committer_loop(inner: &Inner, mut wal: WalWriter, rx: mpsc::Receiver<Commit>) {
    let mut buf = Vec::with_capacity(1 << 20);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut approx = 0usize;
        while approx < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(c) => {
                    approx += c.req.as_ref().map_or(0, |r| r.events.len() * 100);
                    group.push(c);
                }
                Err(_) => break,
            }
        }
        commit_group(inner, &mut wal, group, &mut buf);
    }
}

fn commit_group(inner: &Inner, wal: &mut WalWriter, group: Vec<Commit>, buf: &mut Vec<u8>) {
    if let Some(p) = inner.poisoned.lock().clone() {
        for c in group {
            (c.reply)(Err(Error::Poisoned(p.clone())));
        }
        return;
    }
    let now = inner.clock.now_secs();
    let mut force_freeze = false;
    let mut barriers: Vec<Reply> = Vec::new();
    let mut replays: Vec<(Reply, String)> = Vec::new();
    let mut applies: Vec<(WriteRequest, Reply)> = Vec::new();
    {
        let st = inner.state.read();
        let mut in_group: HashMap<String, String> = HashMap::new();
        for c in group {
            let Some(req) = c.req else {
                force_freeze = true;
                barriers.push(c.reply);
                continue;
            };
            if let Some(k) = &req.idempotency_key {
                if let Some(resp) = st
                    .keys
                    .get(k)
                    .map(str::to_owned)
                    .or_else(|| in_group.get(k).cloned())
                {
                    replays.push((c.reply, resp));
                    continue;
                }
                in_group.insert(k.clone(), req.response.clone());
            }
            applies.push((req, c.reply));
        }
    }
    buf.clear();
    for (req, _) in &applies {
        // The response is only needed to answer a retry of a keyed request.
        let response = if req.idempotency_key.is_some() {
            req.response.as_str()
        } else {
            ""
        };
        let parts = RecordParts {
            idempotency_key: req.idempotency_key.as_deref(),
            response,
            created_secs: now,
            events: &req.events,
            source_offsets: &req.source_offsets,
        };
        encode_parts(&parts, buf);
    }
    if !buf.is_empty() {
        let started = Instant::now();
        if let Err(e) = wal.append_durable(buf) {
            if let Error::Poisoned(p) = &e {
                tracing::error!(error = %p, "write-ahead log poisoned; refusing further writes");
                *inner.poisoned.lock() = Some(p.clone());
            }
            let msg = e.to_string();
            let poisoned = matches!(e, Error::Poisoned(_));
            let fail = || {
                if poisoned {
                    Error::Poisoned(msg.clone())
                } else {
                    Error::Unavailable(msg.clone())
                }
            };
            for reply in applies
                .into_iter()
                .map(|a| a.1)
                .chain(replays.into_iter().map(|r| r.0))
                .chain(barriers)
            {
                reply(Err(fail()));
            }
            return;
        }
        inner
            .observer
            .wal_synced(started.elapsed(), buf.len(), applies.len());
    }
    let freeze = {
        let mut st = inner.state.write();
        for (req, _) in &applies {
            advance_offsets(&mut st.offsets, &req.source_offsets);
            for e in &req.events {
                st.head.insert(e);
                st.watermark = Some(st.watermark.map_or(e.ts_secs, |w| w.max(e.ts_secs)));
            }
            if let Some(k) = &req.idempotency_key {
                st.keys.insert(k.clone(), req.response.clone(), now);
            }
        }
        (force_freeze && !st.head.is_empty())
            || st.head.len() >= inner.cfg.head_max_rows
            || st.head.approx_bytes() >= inner.cfg.head_max_bytes
    };
    for (_, reply) in applies {
        reply(Ok(WriteOutcome::Applied));
    }
    for (reply, resp) in replays {
        reply(Ok(WriteOutcome::Replayed(resp)));
    }
    if freeze {
        freeze_head(inner, wal);
    }
    for reply in barriers {
        reply(Ok(WriteOutcome::Applied));
    }
}

/// Moves the head to the frozen queue and starts a new log file for the next
/// head; waits while the flusher is too far behind (backpressure).
fn freeze_head(inner: &Inner, wal: &mut WalWriter) {
    {
        let mut guard = inner.frozen_lock.lock();
        while inner.state.read().frozen.len() >= inner.cfg.max_frozen_heads
            && inner.poisoned.lock().is_none()
        {
            inner
                .frozen_cv
                .wait_for(&mut guard, Duration::from_millis(100));
        }
    }
    let wal_next = match wal.rotate() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a new log file; the head stays in memory for now");
            return;
        }
    };
    {
        let mut st = inner.state.write();
        let head = std::mem::replace(&mut st.head, Head::new());
        st.frozen.push_back(Frozen {
            head: Arc::new(head),
            wal_next,
        });
    }
    *inner.flush_wake.lock() = true;
    inner.flush_cv.notify_all();
}

fn flusher_loop(inner: &Inner) {
    loop {
        {
            let mut wake = inner.flush_wake.lock();
            if !*wake {
                inner.flush_cv.wait_for(&mut wake, FLUSHER_IDLE_WAKE);
            }
            *wake = false;
        }
        if let Err(e) = flush_frozen(inner) {
            report_background_error(inner, "flush", e);
        }
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        loop {
            let worked = {
                let _m = inner.maintenance.lock();
                maintain::compact_once(inner)
            };
            trim_heap();
            enforce_memory_budget(inner);
            match worked {
                Ok(true) => {
                    if inner.state.read().frozen.is_empty() {
                        continue;
                    }
                    if let Err(e) = flush_frozen(inner) {
                        report_background_error(inner, "flush", e);
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    report_background_error(inner, "compaction", e);
                    break;
                }
            }
        }
        trim_heap();
        enforce_memory_budget(inner);
    }
}

/// How often the summary thread looks for blocks to summarize.
const SUMMARY_INTERVAL: Duration = Duration::from_millis(500);

/// Lowers the calling thread's CPU priority by `nice` (0 to 19).
fn lower_priority(nice: i32) {
    // SAFETY: setpriority on this thread's own id has no memory effects.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as _, nice);
    }
}

/// Puts the calling thread under `SCHED_IDLE` (nice 19 where that is
/// refused): it then gets only CPU time nothing else wants.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) with a
        // valid parameter changes only its scheduling.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            lower_priority(19);
        }
    }
}

/// A summary build and where its result goes.
type BuildRequest = (maintain::BuildJob, mpsc::SyncSender<maintain::Built>);

/// Starts the thread that runs summary builds under `SCHED_IDLE`. Builds
/// take no lock: a thread starved under `SCHED_IDLE` must not hold one that
/// others wait for, and an unprivileged thread cannot leave `SCHED_IDLE`.
fn start_builder() -> std::io::Result<(mpsc::Sender<BuildRequest>, std::thread::JoinHandle<()>)> {
    let (jobs, requests) = mpsc::channel::<BuildRequest>();
    let thread = std::thread::Builder::new()
        .name("desa-summary-build".into())
        .spawn(move || {
            idle_priority();
            for (job, reply) in requests {
                let _ = reply.send(job());
            }
        })?;
    Ok((jobs, thread))
}

/// Builds summaries one at a time. The CPU-heavy part (reading the inputs,
/// writing and verifying the file) runs on idle CPU, on the builder thread:
/// summaries only speed up long windows (answers are exact without them),
/// so while ingest keeps every core busy they wait, and they catch up when
/// it eases; during a bulk load that is about a sixth of the CPU left to
/// ingest (`/healthz` says "maintenance": "pending" meanwhile). This thread
/// itself, which takes the manifest and state locks to swap a summary in,
/// runs at nice 10.
fn summary_loop(inner: &Inner) {
    lower_priority(10);
    let builder = start_builder()
        .map_err(|e| tracing::warn!(error = %e, "no summary build thread; summaries are built at nice 10"))
        .ok();
    let run = |job: maintain::BuildJob| -> maintain::Built {
        let Some((jobs, _)) = &builder else {
            return job();
        };
        let (reply, result) = mpsc::sync_channel(1);
        let gone = || {
            Error::io("run a summary build on", "desa-summary-build")(std::io::Error::other(
                "the build thread stopped",
            ))
        };
        jobs.send((job, reply)).map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    };
    while !inner.shutdown.load(Ordering::SeqCst) {
        let worked = {
            let _s = inner.summarizing.lock();
            maintain::summarize_once(inner, &run)
        };
        match worked {
            Ok(true) => {
                trim_heap();
                continue;
            }
            Ok(false) => {}
            Err(e) => report_background_error(inner, "summary", e),
        }
        std::thread::sleep(SUMMARY_INTERVAL);
    }
    if let Some((jobs, thread)) = builder {
        drop(jobs);
        let _ = thread.join();
    }
}

/// Returns freed glibc heap memory to the operating system (glibc keeps it
/// otherwise): the engine's own allocations when it runs under the system
/// allocator, as in its tests. The `desa` binary allocates with mimalloc,
/// which returns freed memory by itself.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn report_background_error(inner: &Inner, what: &str, e: Error) {
    tracing::error!(error = %e, "{what} failed");
    if let Error::Poisoned(p) = e {
        *inner.poisoned.lock() = Some(p);
        inner.frozen_cv.notify_all();
    }
}

fn flush_frozen(inner: &Inner) -> Result<()> {
    loop {
        let Some((head, wal_next)) = inner
            .state
            .read()
            .frozen
            .front()
            .map(|f| (f.head.clone(), f.wal_next))
        else {
            return Ok(());
        };
        let started = Instant::now();
        let mut by_day: HashMap<i64, Vec<u32>> = HashMap::new();
        for (r, ts) in head.rows.ts.iter().enumerate() {
            by_day
                .entry(ts.div_euclid(86_400))
                .or_default()
                .push(r as u32);
        }
        let seg_dir = segments_dir(&inner.cfg.dir);
        let mut manifest = inner.manifest.lock();
        let mut new_segments = Vec::new();
        for (day, subset) in by_day {
            let id = manifest.next_segment_id;
            manifest.next_segment_id += 1;
            let path = seg_dir.join(SegmentMeta::file_name(id));
            let meta = write_segment(&head.rows, &subset, day, id, &path)?;
            manifest.segments.push(meta);
            new_segments.push(Arc::new(Segment::open(&path, id)?));
        }
        crate::wal::sync_dir(&seg_dir)?;
        inner.state.read().keys.store_durable(&inner.cfg.dir)?;
        let old_wal_start = manifest.wal_start;
        manifest.wal_start = wal_next;
        // May include positions of the active head too: its events are still
        // in the log from `wal_start`, and replay takes the larger offset.
        manifest.source_offsets = offsets_list(&inner.state.read().offsets);
        manifest.store_durable(&inner.cfg.dir)?;
        {
            let mut st = inner.state.write();
            st.frozen.pop_front();
            st.segments.extend(new_segments);
        }
        let wdir = wal_dir(&inner.cfg.dir);
        for n in old_wal_start..wal_next {
            let _ = fs::remove_file(wal::file_path(&wdir, n));
        }
        inner.frozen_cv.notify_all();
        inner.observer.head_flushed(started.elapsed(), head.len());
    }
}

/// Resident memory of this process, from /proc (0 where unavailable).
pub fn resident_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Drops mapped segment and summary pages from this process when it nears
/// its budget; they stay in the kernel's page cache and are mapped again on
/// access. The least recently queried files go first, a few at a time, until
/// resident memory is below half the budget, so hot pages stay mapped.
fn enforce_memory_budget(inner: &Inner) {
    let budget = inner.cfg.memory_budget_bytes;
    if resident_bytes() <= budget / 10 * 7 {
        return;
    }
    let (segs, sums) = snapshot(&inner.state.read());
    // Use times are read once: queries change them meanwhile, and a sort
    // whose keys move under it may panic.
    let mut mapped: Vec<(u64, &SectionFile)> = segs
        .iter()
        .map(|s| s.mapped())
        .chain(sums.iter().map(|s| s.file.mapped()))
        .map(|m| (m.last_used(), m))
        .collect();
    mapped.sort_by_key(|m| m.0);
    for (i, (_, file)) in mapped.iter().enumerate() {
        file.release_memory();
        if i % 4 == 3 && resident_bytes() <= budget / 2 {
            break;
        }
    }
}
