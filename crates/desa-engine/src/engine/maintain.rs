//! Background maintenance of the stored files: size-tiered compaction of
//! each day's segments, then one segment per day once the watermark has
//! left the day behind (on the flusher thread), and the summaries of
//! whole-day blocks (see `crate::summary`; on a thread of its own at a lower
//! CPU priority, so that building them never delays a flush or an ingest).
//!
//! Every change to the file lists happens under the manifest lock. A summary
//! is built outside it from a snapshot and committed under it only if every
//! segment it covers is still live; otherwise it is dropped and built again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::change::change_manifest;
use super::flush::report_background;
use super::memory::trim_heap;
use super::{segments_dir, EngineConfig, Inner, State};
use crate::durable::remove_written;
use crate::error::{Error, Result};
use crate::head::Rows;
use crate::segment::{write_segment, Segment, SegmentMeta};
use crate::summary::{self, Input, LiveSummary, Summary, SummaryMeta, LEVEL_STEP, MIN_LEVEL};

const DAY: i64 = 86_400;

/// Segments below this many rows share the lowest tier, so the small
/// segments of late events merge together quickly.
const TIER0_ROWS: u64 = 64 * 1024;

/// Size tier of a segment: segments in one tier are within a factor of `fanin`.
fn tier(rows: u64, fanin: usize) -> u32 {
    let mut t = 0;
    let mut cap = TIER0_ROWS;
    while rows >= cap {
        t += 1;
        cap = cap.saturating_mul(fanin as u64);
    }
    t
}

/// Merges one group of segments if there is one: same day (or all of
/// several days), same size tier and covered by the same summaries, whose `covers` then name the merged
/// segment instead (so a merge never leaves a summary half covered).
pub(super) fn compact_once(inner: &Inner) -> Result<bool> {
    super::flush::refuse_if_poisoned(inner)?;
    // Held from the choice to the commit, so that no summary commits in
    // between and the victims' summaries stay the ones chosen here.
    let mut manifest = inner.manifest.lock();
    let Some((victims, signature)) = pick_compaction(&inner.state.read(), &inner.cfg) else {
        return Ok(false);
    };
    let started = Instant::now();
    let mut rows = Rows::default();
    for s in &victims {
        s.append_to(&mut rows)?;
        s.release_memory();
    }
    let subset: Vec<u32> = (0..rows.len() as u32).collect();
    let partition = victims.iter().map(|s| s.meta.partition).min().unwrap_or(0);
    let seg_dir = segments_dir(&inner.cfg.dir);
    let id = manifest.next_segment_id;
    let path = seg_dir.join(SegmentMeta::file_name(id));
    let gone: HashSet<u64> = victims.iter().map(|s| s.meta.id).collect();
    let recover = |m: &mut SummaryMeta| {
        if signature.contains(&m.id) {
            m.covers.retain(|c| !gone.contains(c));
            m.covers.push(id);
            m.covers.sort_unstable();
        }
    };
    let (meta, merged) = change_manifest(&mut manifest, &inner.cfg.dir, |next, written| {
        next.next_segment_id += 1;
        written.push(path.clone());
        let meta = write_segment(&rows, &subset, partition, id, &path)?;
        let merged = Arc::new(Segment::open(&path, id)?);
        crate::durable::sync_dir(&seg_dir)?;
        next.segments.retain(|m| !gone.contains(&m.id));
        next.segments.push(meta.clone());
        next.summaries.iter_mut().for_each(recover);
        Ok((meta, merged))
    })?;
    {
        let mut st = inner.state.write();
        st.segments.retain(|s| !gone.contains(&s.meta.id));
        st.segments.push(merged);
        for x in st.summaries.iter_mut() {
            if signature.contains(&x.meta.id) {
                let mut meta = x.meta.clone();
                recover(&mut meta);
                *x = Arc::new(LiveSummary {
                    meta,
                    file: x.file.clone(),
                });
            }
        }
    }
    for s in &victims {
        let _ = fs::remove_file(s.path());
    }
    inner.observer.compacted(started.elapsed(), meta.rows);
    Ok(true)
}

/// Segments that may merge: the day (`None`: several days), the size tier
/// and the summaries that hold them.
type MergeGroup = (Option<i64>, u32, Vec<u64>);

/// The oldest group of segments due for a merge, with the summaries that
/// cover them.
fn pick_compaction(st: &State, cfg: &EngineConfig) -> Option<(Vec<Arc<Segment>>, Vec<u64>)> {
    let fanin = cfg.compaction_fanin.max(2);
    let mut groups: HashMap<MergeGroup, Vec<Arc<Segment>>> = HashMap::new();
    for s in &st.segments {
        if s.meta.rows < cfg.max_segment_rows {
            let covered_by: Vec<u64> = st
                .summaries
                .iter()
                .filter(|x| x.meta.covers(s.meta.id))
                .map(|x| x.meta.id)
                .collect();
            // Segments of several days merge among themselves.
            groups
                .entry((s.meta.single_day(), tier(s.meta.rows, fanin), covered_by))
                .or_default()
                .push(s.clone());
        }
    }
    let settled_before = st.watermark.map(|w| w.div_euclid(DAY));
    let tiered = groups
        .iter()
        .filter(|g| g.1.len() >= fanin)
        .filter_map(|((_, _, covered_by), g)| {
            let mut g = g.clone();
            g.sort_by_key(|s| s.meta.id);
            // A merge holds all its rows in memory (about 250 bytes each
            // while the segment is built): the oldest that fit the cap.
            let mut total = 0;
            let fit = g
                .iter()
                .take(fanin)
                .take_while(|s| {
                    total += s.meta.rows;
                    total <= cfg.max_segment_rows
                })
                .count();
            g.truncate(fit);
            (fit >= 2).then(|| (g, covered_by.clone()))
        })
        .min_by_key(|g| g.0[0].meta.id);
    tiered.or_else(|| settle_day(&groups, settled_before?, cfg))
}

/// A day the watermark has left behind, whose segments fit one: they merge
/// into one once the smaller ones hold at least `1 / SETTLE_RATIO` of the
/// largest's rows, so that a query over the day searches one file, and late
/// events that trickle in rewrite the day at most once per that share.
fn settle_day(
    groups: &HashMap<MergeGroup, Vec<Arc<Segment>>>,
    settled_before: i64,
    cfg: &EngineConfig,
) -> Option<(Vec<Arc<Segment>>, Vec<u64>)> {
    let mut days: HashMap<(i64, &[u64]), Vec<Arc<Segment>>> = HashMap::new();
    for ((day, _, covered_by), g) in groups {
        if let Some(day) = day.filter(|&d| d < settled_before) {
            days.entry((day, covered_by))
                .or_default()
                .extend(g.iter().cloned());
        }
    }
    days.into_iter()
        .filter(|(_, g)| g.len() >= 2)
        .filter(|(_, g)| {
            let rows: u64 = g.iter().map(|s| s.meta.rows).sum();
            let largest = g.iter().map(|s| s.meta.rows).max().unwrap_or(0);
            rows <= cfg.max_segment_rows && (rows - largest) * SETTLE_RATIO >= largest
        })
        .map(|((_, covered_by), mut g)| {
            g.sort_by_key(|s| s.meta.id);
            (g, covered_by.to_vec())
        })
        .min_by_key(|g| g.0[0].meta.id)
}

/// A settled day's segments merge when the smaller ones hold at least this
/// fraction (one in `SETTLE_RATIO`) of the largest's rows.
const SETTLE_RATIO: u64 = 8;

/// True while a flush, merge or summary is due: the node has not caught up
/// with what it was sent.
pub(super) fn pending(inner: &Inner) -> bool {
    let st = inner.state.read();
    !st.frozen.is_empty()
        || pick_compaction(&st, &inner.cfg).is_some()
        || next_summary(
            &st.segments,
            &st.summaries,
            st.watermark,
            kept_from_day(inner),
            &inner.cfg,
        )
        .is_some()
}

/// Builds or refreshes one summary if one is due. A block is summarized
/// once its last day is more than a day behind the event-time watermark
/// (so in-order traffic has moved on) and two of its parts hold events
/// (else the smaller block holding them answers as well; see
/// `summary::part_days`), lowest level first, so that larger blocks are
/// built from the smaller summaries.
/// A summary build's result: its events, its bytes and the opened file.
pub(super) type Built = Result<(u64, u64, Arc<Summary>)>;
/// A summary build, owning its inputs so that it can run on another thread.
pub(super) type BuildJob = Box<dyn FnOnce() -> Built + Send>;

/// The first day retention keeps (`i64::MIN` without retention): blocks
/// that start before it are not summarized, as retention drops them.
fn kept_from_day(inner: &Inner) -> i64 {
    inner.cfg.retention_secs.map_or(i64::MIN, |keep| {
        super::expire::first_kept_secs(inner.clock.now_secs(), keep).div_euclid(DAY)
    })
}

/// Writes the next summary due, if any; `run` runs its build (on the
/// calling thread, or on the summary thread's idle-priority builder).
pub(super) fn summarize_once(inner: &Inner, run: &dyn Fn(BuildJob) -> Built) -> Result<bool> {
    super::flush::refuse_if_poisoned(inner)?;
    let (segments, summaries, watermark) = {
        let st = inner.state.read();
        (st.segments.clone(), st.summaries.clone(), st.watermark)
    };
    match next_summary(
        &segments,
        &summaries,
        watermark,
        kept_from_day(inner),
        &inner.cfg,
    ) {
        Some(due) => {
            write(inner, &due, run)?;
            Ok(true)
        }
        None => retire_unbuilt(inner),
    }
}

/// Retires the summaries of levels no longer built (every level was, in
/// earlier versions), once no summary is due: the built levels then answer
/// their windows, with the segments of the days no built block holds. They
/// leave the manifest first, then their files are removed; a query that
/// still holds one reads it through its mapping.
fn retire_unbuilt(inner: &Inner) -> Result<bool> {
    let mut manifest = inner.manifest.lock();
    let old: HashSet<u64> = manifest
        .summaries
        .iter()
        .filter(|m| !summary::built_levels().any(|l| l == m.level))
        .map(|m| m.id)
        .collect();
    if old.is_empty() {
        return Ok(false);
    }
    change_manifest(&mut manifest, &inner.cfg.dir, |next, _| {
        next.summaries.retain(|m| !old.contains(&m.id));
        Ok(())
    })?;
    let gone: Vec<Arc<LiveSummary>> = {
        let mut st = inner.state.write();
        let (gone, kept) = st
            .summaries
            .drain(..)
            .partition(|s| old.contains(&s.meta.id));
        st.summaries = kept;
        gone
    };
    drop(manifest);
    for s in &gone {
        let _ = fs::remove_file(s.file.path());
    }
    tracing::info!(
        summaries = gone.len(),
        "retired summaries of levels no longer built"
    );
    Ok(true)
}

/// One summary to write: its block, its inputs, and the summary it replaces.
struct Due {
    level: u32,
    first_day: i64,
    children: Vec<Arc<LiveSummary>>,
    /// The segments each child covers (where its missing points are), if
    /// all are live.
    covered: Vec<Option<Vec<Arc<Segment>>>>,
    segs: Vec<Arc<Segment>>,
    replaces: Option<Arc<LiveSummary>>,
}

/// The first block, lowest level first, whose summary is missing or has
/// too many segments beside it.
fn next_summary(
    segments: &[Arc<Segment>],
    summaries: &[Arc<LiveSummary>],
    watermark: Option<i64>,
    kept_from_day: i64,
    cfg: &EngineConfig,
) -> Option<Due> {
    // Blocks must end at or before this day.
    let settled_end = watermark?.div_euclid(DAY) - 1;
    let mut by_day: BTreeMap<i64, Vec<&Arc<Segment>>> = BTreeMap::new();
    for s in segments {
        // Segments of several days are left to queries.
        if let Some(day) = s.meta.single_day() {
            by_day.entry(day).or_default().push(s);
        }
    }
    let by_block: HashMap<(u32, i64), &Arc<LiveSummary>> = summaries
        .iter()
        .map(|s| ((s.meta.level, s.meta.first_day), s))
        .collect();
    for level in summary::built_levels() {
        let size = 1i64 << level;
        let part = summary::part_days(level);
        let holds = |a: i64| by_day.range(a..a + part).next().is_some();
        let blocks: std::collections::BTreeSet<i64> = by_day
            .keys()
            .map(|d| d.div_euclid(size) * size)
            .filter(|&first| first + size <= settled_end && first >= kept_from_day)
            .filter(|&first| {
                (first..first + size)
                    .step_by(part as usize)
                    .filter(|&a| holds(a))
                    .count()
                    >= 2
            })
            .collect();
        for first in blocks {
            let existing = by_block.get(&(level, first)).copied();
            let in_block = || by_day.range(first..first + size).flat_map(|(_, v)| v);
            // A missing summary is built from its halves' summaries; one
            // with too many late segments beside it, from itself.
            let children: Vec<Arc<LiveSummary>> = match existing {
                Some(x) => {
                    let extras = in_block().filter(|s| !x.meta.covers(s.meta.id)).count();
                    if extras <= cfg.summary_max_extras {
                        continue;
                    }
                    vec![x.clone()]
                }
                None if level > MIN_LEVEL => (first..first + size)
                    .step_by(part as usize)
                    .filter_map(|d| by_block.get(&(level - LEVEL_STEP, d)).map(|c| (*c).clone()))
                    .collect(),
                None => Vec::new(),
            };
            let segs: Vec<Arc<Segment>> = in_block()
                .filter(|s| !children.iter().any(|c| c.meta.covers(s.meta.id)))
                .map(|s| (*s).clone())
                .collect();
            let by_id: HashMap<u64, &Arc<Segment>> =
                segments.iter().map(|s| (s.meta.id, s)).collect();
            let covered = children
                .iter()
                .map(|c| {
                    let mut ids = c.meta.covers.iter();
                    ids.try_fold(Vec::new(), |mut v, id| {
                        v.push((*by_id.get(id)?).clone());
                        Some(v)
                    })
                })
                .collect();
            return Some(Due {
                level,
                first_day: first,
                children,
                covered,
                segs,
                replaces: existing.cloned(),
            });
        }
    }
    None
}

/// Writes the summary of `children` and `segs` for the block and swaps it in
/// for `replaces`, unless the files changed meanwhile (then the new file is
/// deleted, and the next round builds it again).
fn write(inner: &Inner, due: &Due, run: &dyn Fn(BuildJob) -> Built) -> Result<()> {
    let Due {
        level,
        first_day,
        ref children,
        ref covered,
        ref segs,
        ref replaces,
    } = *due;
    let started = Instant::now();
    let mut covers: Vec<u64> = children
        .iter()
        .flat_map(|c| c.meta.covers.iter().copied())
        .chain(segs.iter().map(|s| s.meta.id))
        .collect();
    covers.sort_unstable();
    let seg_dir = segments_dir(&inner.cfg.dir);
    // Ids are never reused, so the id is taken now even though the summary
    // may never be installed.
    let id = {
        let mut manifest = inner.manifest.lock();
        manifest.next_segment_id += 1;
        manifest.next_segment_id - 1
    };
    let path = seg_dir.join(SummaryMeta::file_name(id));
    // The build takes no lock: it reads its inputs through their mappings.
    let job: BuildJob = {
        let (children, covered, segs) = (children.clone(), covered.clone(), segs.clone());
        let (path, seg_dir) = (path.clone(), seg_dir.clone());
        Box::new(move || {
            let inputs: Vec<Input> = children
                .iter()
                .zip(&covered)
                .map(|(c, segs)| Input::Summary(&c.file, segs.as_deref()))
                .chain(segs.iter().map(|s| Input::Segment(s)))
                .collect();
            let (events, bytes) = summary::write_summary(&inputs, level, first_day, &path)?;
            let file = Arc::new(Summary::open(&path, level, first_day)?);
            crate::durable::sync_dir(&seg_dir)?;
            Ok((events, bytes, file))
        })
    };
    let (events, bytes, file) = match run(job) {
        Ok(built) => built,
        Err(e) => {
            remove_written(std::slice::from_ref(&path), &e);
            return Err(e);
        }
    };
    let mut manifest = inner.manifest.lock();
    let live: HashSet<u64> = manifest.segments.iter().map(|m| m.id).collect();
    let old = replaces.as_ref().map(|r| r.meta.id);
    let current = manifest
        .summaries
        .iter()
        .find(|m| (m.level, m.first_day) == (level, first_day))
        .map(|m| m.id);
    if current != old || !covers.iter().all(|c| live.contains(c)) {
        tracing::debug!(
            level,
            first_day,
            "files changed while summarizing; will retry"
        );
        drop(manifest);
        let _ = fs::remove_file(&path);
        return Ok(());
    }
    let meta = SummaryMeta {
        id,
        level,
        first_day,
        covers,
        events,
        bytes,
    };
    change_manifest(&mut manifest, &inner.cfg.dir, |next, written| {
        written.push(path.clone());
        next.summaries.retain(|m| Some(m.id) != old);
        next.summaries.push(meta.clone());
        Ok(())
    })?;
    {
        let mut st = inner.state.write();
        st.summaries.retain(|s| Some(s.meta.id) != old);
        st.summaries.push(Arc::new(LiveSummary { meta, file }));
    }
    if let Some(r) = replaces.as_ref() {
        let _ = fs::remove_file(r.file.path());
    }
    inner.observer.summarized(started.elapsed(), events);
    tracing::debug!(
        level,
        first_day,
        events,
        bytes,
        secs = started.elapsed().as_secs_f64(),
        "summary written"
    );
    Ok(())
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
pub(super) fn idle_priority() {
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
type BuildRequest = (BuildJob, mpsc::SyncSender<Built>);

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
pub(super) fn summary_loop(inner: &Inner) {
    lower_priority(10);
    let builder = start_builder()
        .map_err(|e| tracing::warn!(error = %e, "no summary build thread; summaries are built at nice 10"))
        .ok();
    let run = |job: BuildJob| -> Built {
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
        if inner.poisoned.lock().is_some() {
            std::thread::sleep(SUMMARY_INTERVAL);
            continue;
        }
        let worked = {
            let _s = inner.summarizing.lock();
            summarize_once(inner, &run)
        };
        match worked {
            Ok(true) => {
                report_background(inner, "summary", Ok(()));
                trim_heap();
                continue;
            }
            Ok(false) => report_background(inner, "summary", Ok(())),
            Err(e) => report_background(inner, "summary", Err(e)),
        }
        std::thread::sleep(SUMMARY_INTERVAL);
    }
    if let Some((jobs, thread)) = builder {
        drop(jobs);
        let _ = thread.join();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use desa_model::{Event, GeoBox, TimeWindow};

    use super::{write, Due};
    use crate::segment::Segment;
    use crate::{Engine, EngineConfig, SystemClock, WriteRequest};

    const DAY: i64 = 86_400;
    /// The first event's time: a multiple of 32 days.
    const T0: i64 = 20_480 * DAY;

    /// A node holding `hours` hourly events from [`T0`] (5 devices, one
    /// type, latitudes 1 to 7), flushed, compacted and summarized.
    fn settled_hours(hours: i64) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EngineConfig::new(dir.path());
        cfg.head_max_rows = 500;
        let engine = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
        let events: Vec<Event> = (0..hours)
            .map(|h| Event {
                device_id: format!("d{}", h % 5),
                ts_secs: T0 + h * 3_600,
                event_type: "t".into(),
                value: h as f64,
                latitude: 1.0 + (h % 7) as f64,
                longitude: 2.0,
                metadata: None,
            })
            .collect();
        engine.write(WriteRequest::events(events)).unwrap();
        engine.settle().unwrap();
        (dir, engine)
    }

    /// 40 days of hourly events: blocks of 2, 8 and 32 days are built, and
    /// none of the levels between them.
    #[test]
    fn summaries_are_built_at_every_second_level() {
        let (_dir, engine) = settled_hours(40 * 24);
        let st = engine.inner.state.read();
        let blocks: BTreeSet<(u32, i64)> = st
            .summaries
            .iter()
            .map(|s| (s.meta.level, s.meta.first_day - T0 / DAY))
            .collect();
        let levels: BTreeSet<u32> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(levels, BTreeSet::from([1, 3, 5]), "{blocks:?}");
        // Event time reaches day 39, so blocks end by day 38.
        let of = |l| blocks.iter().filter(|b| b.0 == l).count();
        assert_eq!((of(1), of(3), of(5)), (19, 4, 1), "{blocks:?}");
    }

    /// A summary of a level no longer built (as earlier versions wrote) is
    /// retired once every summary due is built: dropped from the manifest,
    /// then its file removed, and answers do not change.
    #[test]
    fn summaries_of_levels_not_built_are_retired() {
        let (_dir, engine) = settled_hours(12 * 24);
        // A 4-day summary (level 2), written as an earlier version did.
        let segs: Vec<Arc<Segment>> = engine
            .inner
            .state
            .read()
            .segments
            .iter()
            .filter(|s| {
                s.meta
                    .single_day()
                    .is_some_and(|d| (0..4).contains(&(d - T0 / DAY)))
            })
            .cloned()
            .collect();
        let due = Due {
            level: 2,
            first_day: T0 / DAY,
            children: Vec::new(),
            covered: Vec::new(),
            segs,
            replaces: None,
        };
        write(&engine.inner, &due, &|job| job()).unwrap();
        let old: Vec<_> = engine
            .inner
            .state
            .read()
            .summaries
            .iter()
            .filter(|s| s.meta.level == 2)
            .map(|s| s.file.path().to_path_buf())
            .collect();
        assert_eq!(old.len(), 1);
        assert!(old[0].exists());
        let w = TimeWindow::new(T0, T0 + 4 * DAY).unwrap();
        let bbox = GeoBox::new(0.0, 5.0, 0.0, 5.0).unwrap();
        let before = (
            engine.avg("d1", "t", w).unwrap(),
            engine.geo("t", &bbox, w).unwrap(),
        );

        engine.settle().unwrap();
        let levels = |st: &crate::engine::State| -> BTreeSet<u32> {
            st.summaries.iter().map(|s| s.meta.level).collect()
        };
        assert_eq!(levels(&engine.inner.state.read()), BTreeSet::from([1, 3]));
        let manifest = engine.inner.manifest.lock();
        assert!(manifest.summaries.iter().all(|m| m.level != 2));
        drop(manifest);
        assert!(!old[0].exists(), "{} is still on disk", old[0].display());
        let after = (
            engine.avg("d1", "t", w).unwrap(),
            engine.geo("t", &bbox, w).unwrap(),
        );
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
    }
}
