//! A worker's local copy of the blocks, and how it follows the catalog.
//!
//! Every block is immutable, named by an id that is never reused, and
//! removed only by a merge, which adds a block of the same day in the same
//! transaction, or by retention (`expire`), which raises the catalog's
//! retention horizon (`desa_meta` key `first_kept`) in the same
//! transaction: every block wholly before the horizon is gone, and a look
//! drops them from the view. So a local copy is kept current by reading the catalog rows
//! that committed since the last look: those of transactions at or after
//! the oldest transaction that was still running then (`pg_snapshot_xmin`);
//! anything older had ended and was seen. For each day with a new block,
//! the day's list of blocks is read in the same snapshot, and local blocks
//! it no longer names are dropped. (A merge's own inputs are not enough: a
//! worker may never see a block that was merged into another before it
//! looked.) New blocks' bodies are then fetched, in batches and outside
//! that snapshot's transaction, written to the worker's block directory and
//! mapped; if a merge removed one of them meanwhile, the look starts over.
//!
//! Each query first looks (one round trip when nothing is new), so a query
//! sees every write committed before it started, on any worker. A worker's
//! own writes and merges leave their blocks' files in place, so reading them
//! in the catalog costs no fetch. A local file is used only if its length,
//! row count and checksum are the catalog's, and only in a directory made
//! for this database (`desa_meta.cluster_id`), so a database re-created or
//! restored, whose ids are issued again, never meets a stale file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use desa_engine::segment::{checksum_of, Segment, SegmentMeta};
use desa_engine::segment_set::SegmentSet;
use parking_lot::{Condvar, Mutex, RwLock};
use postgres::{Client, IsolationLevel};

use crate::error::{Error, Result};
use desa_store::{day_of, WriteEpochs};

/// Bodies fetched in one statement: at most this many bytes (by the
/// catalog), or one block.
const FETCH_BYTES: i64 = 64 << 20;
/// Files younger than this are left alone by the cleanup: they may be a
/// write's or a merge's, committed but not yet read in the catalog.
pub(crate) const CLEANUP_AGE: Duration = Duration::from_secs(120);
/// Listings in a row whose blocks merges removed before they were fetched,
/// before a look gives up (each such listing follows a merge).
const LIST_ATTEMPTS: usize = 20;
/// A block spanning more days than this changes every cached answer
/// (a shared block of sparse old days spans up to 1,024).
const MAX_TOUCHED_DAYS: usize = 64;
/// The file naming the database a block directory belongs to.
const CLUSTER_FILE: &str = "CLUSTER";

/// Blocks opened for the view: id, shard and the block.
type Added = Vec<(i64, u32, Arc<Segment>)>;

/// Blocks known locally, as one consistent snapshot.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub by_id: BTreeMap<i64, Arc<Segment>>,
    /// The shard of each block.
    pub shard_of: HashMap<i64, u32>,
    pub set: SegmentSet,
    pub bytes: u64,
    pub max_ts: Option<i64>,
}

impl View {
    fn with(&self, added: Added, gone: &HashSet<i64>) -> View {
        let mut by_id = self.by_id.clone();
        let mut shard_of = self.shard_of.clone();
        by_id.retain(|id, _| !gone.contains(id));
        shard_of.retain(|id, _| !gone.contains(id));
        for (id, shard, seg) in added.into_iter().filter(|(id, ..)| !gone.contains(id)) {
            by_id.insert(id, seg);
            shard_of.insert(id, shard);
        }
        let segs: Vec<Arc<Segment>> = by_id.values().cloned().collect();
        View {
            bytes: segs.iter().map(|s| s.meta.bytes).sum(),
            max_ts: segs
                .iter()
                .filter(|s| s.meta.rows > 0)
                .map(|s| s.meta.max_ts)
                .max(),
            set: SegmentSet::new(segs),
            by_id,
            shard_of,
        }
    }
}

/// How long a query waits for a catalog look another one started.
const LOOK_WAIT: Duration = Duration::from_secs(30);

/// The catalog looks of [`Blocks::sync`], numbered.
#[derive(Default)]
struct Looks {
    /// The xmin of the last look applied; `None` until the first full
    /// listing.
    tail: Option<u64>,
    running: bool,
    started: u64,
    finished: u64,
    /// How the last finished look failed, if it did.
    failed: Option<String>,
    /// Changes of the shards held, counted: a look that started before one
    /// may have skipped blocks of a shard now held, so the next lists all.
    holds: u64,
    /// The changes that stopped holding some shard, counted: each drops
    /// blocks from the view.
    drops: u64,
}

pub(crate) struct Blocks {
    dir: PathBuf,
    view: RwLock<Arc<View>>,
    /// The shards this worker keeps copies of; `None`: every shard.
    held: RwLock<Option<Arc<HashSet<u32>>>>,
    /// Who is looking at the catalog and how far the view got; one look
    /// runs at a time (the view changes in the order the catalog was read),
    /// and no lock is held while it talks to the database.
    looks: Mutex<Looks>,
    looked: Condvar,
    /// What cached answers are checked against, raised by each look.
    epochs: Mutex<WriteEpochs>,
    /// The retention horizon the last look read.
    horizon: Mutex<Option<i64>>,
    next_temp: AtomicU64,
    _lock: std::fs::File,
}

/// A block built locally and not yet committed.
pub(crate) struct NewBlock {
    pub shard: u32,
    pub day: i64,
    pub events: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub crc: u32,
    pub body: Vec<u8>,
    pub file: PathBuf,
}

/// A catalog row.
struct Listed {
    id: i64,
    shard: i32,
    day: i32,
    events: i64,
    bytes: i64,
    crc: i64,
    /// Least and greatest event time.
    span: (i64, i64),
}

/// What one look at the catalog read, in one snapshot.
struct Listing {
    xmin: u64,
    /// Rows of transactions at or after the previous xmin (every row, for
    /// a full listing).
    rows: Vec<Listed>,
    /// The blocks of each day that has a row the view does not hold.
    days: HashMap<i32, HashSet<i64>>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| {
        Error::Local(desa_engine::Error::Io {
            op,
            path: path.to_owned(),
            source,
        })
    }
}

fn parse_xid(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| Error::Schema(format!("unexpected transaction id {text:?}")))
}

impl Blocks {
    /// Opens (creating) the block directory of the database `cluster_id`,
    /// locked against other processes; drops unfinished files, and every
    /// block file if the directory was another database's.
    pub fn open(dir: &Path, cluster_id: &str) -> Result<Blocks> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let lock = desa_engine::lock_dir(dir)?;
        let marker = dir.join(CLUSTER_FILE);
        let same = std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == cluster_id);
        for entry in std::fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") || (!same && name.ends_with(".seg")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if !same {
            std::fs::write(&marker, cluster_id).map_err(io("write", &marker))?;
        }
        Ok(Blocks {
            dir: dir.to_owned(),
            view: RwLock::new(Arc::new(View::default())),
            held: RwLock::new(None),
            looks: Mutex::new(Looks::default()),
            looked: Condvar::new(),
            epochs: Mutex::new(WriteEpochs::default()),
            horizon: Mutex::new(None),
            next_temp: AtomicU64::new(0),
            _lock: lock,
        })
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Whether this worker keeps copies of `shard`'s blocks.
    fn holds(&self, shard: u32) -> bool {
        self.held.read().as_ref().is_none_or(|h| h.contains(&shard))
    }

    /// Keeps copies of the blocks of `shards` only (`None`: of every
    /// shard): the blocks of other shards leave the view and their files go
    /// now, and the next look lists the whole catalog, so that the blocks of
    /// a shard newly held are fetched.
    pub fn hold(&self, shards: Option<HashSet<u32>>) {
        self.change_held(|_| shards);
    }

    /// Keeps copies of `shards` too (whose owners did not answer), until
    /// the next [`hold`](Self::hold).
    pub fn borrow(&self, shards: &[u32]) {
        self.change_held(|held| {
            held.map(|h| {
                let mut more = h.clone();
                more.extend(shards);
                more
            })
        });
    }

    /// Sets the shards held to `next(current)`, counted as one change of
    /// [`held_now`](Self::held_now)'s number, and drops the blocks of the
    /// shards no longer held from the view, in the same step: a query that
    /// sees the change and looks at the catalog after it keeps what it
    /// fetched (dropped later, with the shards of an earlier change, they
    /// left its view without a count of it).
    fn change_held(&self, next: impl FnOnce(Option<&HashSet<u32>>) -> Option<HashSet<u32>>) {
        let gone = {
            let mut looks = self.looks.lock();
            let mut held = self.held.write();
            let shards = next(held.as_deref()).map(Arc::new);
            let dropped = match (held.as_deref(), shards.as_deref()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(was), Some(now)) => !was.is_subset(now),
            };
            *held = shards.clone();
            looks.holds += 1;
            looks.drops += u64::from(dropped);
            looks.tail = None;
            let mut view = self.view.write();
            let gone: HashSet<i64> = match &shards {
                None => HashSet::new(),
                Some(shards) => view
                    .shard_of
                    .iter()
                    .filter(|(_, s)| !shards.contains(s))
                    .map(|(id, _)| *id)
                    .collect(),
            };
            if !gone.is_empty() {
                *view = Arc::new(view.with(Vec::new(), &gone));
            }
            gone
        };
        #[cfg(test)]
        {
            let query = tests::AFTER_HELD_CHANGE.lock().take();
            if let Some(query) = query {
                query();
            }
        }
        self.remove_files(&gone);
    }

    /// The shards this worker keeps copies of (`None`: all).
    pub fn held(&self) -> Option<Arc<HashSet<u32>>> {
        self.held.read().clone()
    }

    /// [`held`](Self::held), and the number of changes to it so far that
    /// stopped holding some shard. A view read after a
    /// [`sync`](Self::sync) that started later holds every block of those
    /// shards if that number is still the same once the view is read (a
    /// shard stopped and held again in between lost its blocks; a shard
    /// newly held made the next look list the whole catalog).
    pub fn held_now(&self) -> (Option<Arc<HashSet<u32>>>, u64) {
        let looks = self.looks.lock();
        (self.held(), looks.drops)
    }

    /// The changes so far that stopped holding some shard (see
    /// [`held_now`](Self::held_now)).
    pub fn drops(&self) -> u64 {
        self.looks.lock().drops
    }

    fn path(&self, id: i64) -> PathBuf {
        self.dir.join(format!("b{id:012}.seg"))
    }

    /// A new file name for a block being built.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("new-{}-{n}.tmp", std::process::id()))
    }

    /// Reads the segment of `shard` just written at `file` (described by
    /// `meta`) into a [`NewBlock`].
    pub fn built(&self, meta: &SegmentMeta, shard: u32, file: PathBuf) -> Result<NewBlock> {
        let body = std::fs::read(&file).map_err(io("read", &file))?;
        let Some(crc) = checksum_of(&body) else {
            return Err(Error::Schema(format!(
                "{} is too short to be a segment",
                file.display()
            )));
        };
        Ok(NewBlock {
            shard,
            day: meta.partition,
            events: meta.rows,
            min_ts: meta.min_ts,
            max_ts: meta.max_ts,
            crc,
            body,
            file,
        })
    }

    /// Keeps the files of committed blocks (`ids[i]` is `built[i]`'s) as the
    /// local copies of those blocks. They enter the view, like every other
    /// block, when [`sync`](Self::sync) reads them in the catalog: the view
    /// changes in catalog order only, so a block merged away by the time it
    /// is read never comes back.
    pub fn keep(&self, built: Vec<NewBlock>, ids: &[i64]) -> Result<()> {
        let mut failed = None;
        for (b, &id) in built.into_iter().zip(ids) {
            if !self.holds(b.shard) {
                // Another worker's shard: it fetches the block.
                let _ = std::fs::remove_file(&b.file);
                continue;
            }
            let path = self.path(id);
            if let Err(e) = std::fs::rename(&b.file, &path) {
                let _ = std::fs::remove_file(&b.file);
                failed.get_or_insert(io("rename", &path)(e));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn replace_view(&self, added: Added, gone: &HashSet<i64>) {
        {
            // Read and replaced under one lock: a look's blocks and a
            // change of the shards held never undo each other.
            let mut view = self.view.write();
            *view = Arc::new(view.with(added, gone));
        }
        self.remove_files(gone);
    }

    /// Deletes the local copies of blocks that left the view (a query
    /// still reading one keeps its mapping).
    fn remove_files(&self, gone: &HashSet<i64>) {
        for id in gone {
            let _ = std::fs::remove_file(self.path(*id));
        }
    }

    /// Brings the view up to the catalog as committed now: returns once a
    /// look that started after this call has been applied. Callers at once
    /// share one look (the next one, if one is running); none holds a lock
    /// while a look talks to the database, and a caller waits at most
    /// [`LOOK_WAIT`] for another's look.
    pub fn sync(&self, c: &mut Client) -> Result<()> {
        let deadline = std::time::Instant::now() + LOOK_WAIT;
        let mut looks = self.looks.lock();
        let need = looks.started + 1;
        loop {
            if looks.finished >= need {
                return match &looks.failed {
                    None => Ok(()),
                    Some(e) => Err(Error::Schema(e.clone())),
                };
            }
            if !looks.running {
                looks.running = true;
                looks.started += 1;
                let number = looks.started;
                let (from, holds) = (looks.tail, looks.holds);
                drop(looks);
                let result = self.look(c, from);
                let mut looks = self.looks.lock();
                looks.running = false;
                looks.finished = number;
                looks.failed = match &result {
                    Ok(tail) => {
                        looks.tail = tail.filter(|_| looks.holds == holds);
                        None
                    }
                    Err(e) => Some(e.describe()),
                };
                self.looked.notify_all();
                return result.map(|_| ());
            }
            if self.looked.wait_until(&mut looks, deadline).timed_out() {
                return Err(Error::Schema(format!(
                    "the catalog look another query started has not finished in {} s",
                    LOOK_WAIT.as_secs()
                )));
            }
        }
    }

    /// One look at the catalog from `tail` (the xmin of the last look,
    /// `None` for a full listing), applied to the view; returns the next
    /// tail. Only one runs at a time.
    fn look(&self, c: &mut Client, mut tail: Option<u64>) -> Result<Option<u64>> {
        if let Some(from) = tail {
            // One statement, one snapshot: the catalog rows since the last
            // look, and the snapshot's bounds.
            let rows = c.query(
                "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text, b.id,
                        (SELECT value FROM desa_meta WHERE key = 'first_kept'), b.shard,
                        b.min_ts, b.max_ts
                   FROM pg_current_snapshot() AS s
                   LEFT JOIN desa_blocks b ON b.xid >= $1::text::xid8",
                &[&from.to_string()],
            )?;
            let Some(first) = rows.first() else {
                return Err(Error::Schema("the catalog look returned no row".into()));
            };
            let (xmin, xmax) = (parse_xid(first.get(0))?, parse_xid(first.get(1))?);
            let horizon: Option<String> = first.get(3);
            self.drop_expired(horizon.and_then(|h| h.parse().ok()));
            // Every shard's new blocks, held here or not, change answers.
            self.touched(
                rows.iter()
                    .map(|r| r.get::<_, Option<i64>>(5).zip(r.get::<_, Option<i64>>(6))),
            );
            if xmax < from {
                // Transaction ids went back (the database was restored or
                // failed over to a replica that was behind): list it all.
                tracing::warn!(
                    from,
                    xmax,
                    "transaction ids went back; listing every block again"
                );
                tail = None;
            } else {
                let view = self.view();
                let all_known = rows.iter().all(|r| {
                    let shard = r.get::<_, Option<i32>>(4).unwrap_or(0) as u32;
                    r.get::<_, Option<i64>>(2)
                        .is_none_or(|id| view.by_id.contains_key(&id) || !self.holds(shard))
                });
                if all_known {
                    return Ok(Some(xmin));
                }
            }
        }
        // A block listed but merged away before its body was read is
        // replaced, in the next listing, by the block it was merged into.
        for _ in 0..LIST_ATTEMPTS {
            let listing = list(c, tail)?;
            if let Some(added) = self.fetch_new(c, &listing)? {
                self.apply(&listing, added, tail.is_none());
                return Ok(Some(listing.xmin));
            }
        }
        Err(Error::Schema(format!(
            "blocks listed in desa_blocks had no body in desa_block_bodies {LIST_ATTEMPTS} times in a row"
        )))
    }

    /// The listing's blocks the view does not hold, opened from local files
    /// that match the catalog or fetched; `None` if one of them is gone.
    fn fetch_new(&self, c: &mut Client, listing: &Listing) -> Result<Option<Added>> {
        let view = self.view();
        let mut added = Vec::new();
        let mut want: Vec<&Listed> = Vec::new();
        for r in listing
            .rows
            .iter()
            .filter(|r| !view.by_id.contains_key(&r.id) && self.holds(r.shard as u32))
        {
            match self.open_matching(r) {
                Some(seg) => added.push((r.id, r.shard as u32, Arc::new(seg))),
                None => want.push(r),
            }
        }
        let mut at = 0;
        while at < want.len() {
            let mut end = at + 1;
            let mut bytes = want[at].bytes;
            while end < want.len() && bytes + want[end].bytes <= FETCH_BYTES {
                bytes += want[end].bytes;
                end += 1;
            }
            let batch = &want[at..end];
            at = end;
            let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
            let mut days: Vec<i32> = batch.iter().map(|r| r.day).collect();
            days.sort_unstable();
            days.dedup();
            let bodies = c.query(
                "SELECT id, body FROM desa_block_bodies WHERE day = ANY($1) AND id = ANY($2)",
                &[&days, &ids],
            )?;
            if bodies.len() != ids.len() {
                return Ok(None);
            }
            for b in &bodies {
                let id: i64 = b.get(0);
                let body: &[u8] = b.get(1);
                let temp = self.temp_path();
                std::fs::write(&temp, body).map_err(io("write", &temp))?;
                let path = self.path(id);
                std::fs::rename(&temp, &path).map_err(io("rename", &path))?;
                let seg = Segment::open(&path, id as u64)?;
                let Some(listed) = batch
                    .iter()
                    .find(|r| r.id == id)
                    .filter(|r| matches(&seg, r))
                else {
                    return Err(Error::Schema(format!(
                        "block {id}'s body does not match its catalog row (length, events or checksum)"
                    )));
                };
                added.push((id, listed.shard as u32, Arc::new(seg)));
            }
        }
        Ok(Some(added))
    }

    /// The local file of a listed block, if there is one and it is that block.
    fn open_matching(&self, r: &Listed) -> Option<Segment> {
        let seg = Segment::open(&self.path(r.id), r.id as u64).ok()?;
        matches(&seg, r).then_some(seg)
    }

    fn apply(&self, listing: &Listing, added: Added, full: bool) {
        if full {
            self.epochs.lock().touch_all();
        } else {
            self.touched(listing.rows.iter().map(|r| Some(r.span)));
        }
        let view = self.view();
        // Blocks held locally that the catalog no longer lists are gone:
        // all of them after a full listing, else those of the days with a
        // new block (only a merge removes blocks, and it adds one); and so
        // are the blocks of shards no longer held.
        let listed: HashSet<i64> = listing.rows.iter().map(|r| r.id).collect();
        let gone: HashSet<i64> = view
            .by_id
            .iter()
            .filter(|(id, seg)| {
                if view.shard_of.get(id).is_some_and(|s| !self.holds(*s)) {
                    true
                } else if full {
                    !listed.contains(id)
                } else {
                    listing
                        .days
                        .get(&(seg.meta.partition as i32))
                        .is_some_and(|day| !day.contains(id))
                }
            })
            .map(|(id, _)| *id)
            .collect();
        self.replace_view(added, &gone);
    }

    /// Drops from the view the blocks wholly before the retention horizon
    /// `first_kept` (unix seconds), which retention deleted.
    fn drop_expired(&self, first_kept: Option<i64>) {
        let Some(first_kept) = first_kept else {
            return;
        };
        let gone: HashSet<i64> = self
            .view()
            .by_id
            .iter()
            .filter(|(_, s)| s.meta.rows > 0 && s.meta.max_ts < first_kept)
            .map(|(id, _)| *id)
            .collect();
        if !gone.is_empty() {
            self.replace_view(Vec::new(), &gone);
        }
        let mut horizon = self.horizon.lock();
        if *horizon != Some(first_kept) {
            *horizon = Some(first_kept);
            self.epochs.lock().touch_all();
        }
    }

    /// Raises the write epochs of the days of blocks that committed or
    /// went, each given by its least and greatest event time (`None` for a
    /// catalog row that names no block).
    fn touched(&self, spans: impl Iterator<Item = Option<(i64, i64)>>) {
        let mut epochs = self.epochs.lock();
        let epoch = epochs.new_epoch();
        for (min_ts, max_ts) in spans.flatten() {
            let days = day_of(min_ts)..=day_of(max_ts);
            if days.clone().count() > MAX_TOUCHED_DAYS {
                epochs.touch_all();
                continue;
            }
            for day in days {
                epochs.touch_day(day, epoch);
            }
        }
    }

    /// The write stamp of queries over `w` as of the last look (see
    /// `desa_store::WriteEpochs`; the catalog does not know blocks' types,
    /// so a write to a day changes the stamps of every type's queries).
    pub fn stamp(&self, event_type: &str, w: desa_model::TimeWindow) -> u64 {
        self.epochs.lock().stamp(event_type, w)
    }

    /// Deletes files the view does not hold (an earlier run's, a block
    /// merged away before its write kept it, a half-written one) that are
    /// older than `min_age`: [`CLEANUP_AGE`] while writes may be keeping
    /// files the view does not hold yet, zero before any write.
    pub fn remove_unlisted(&self, min_age: Duration) {
        let view = self.view();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = if let Some(id) = name
                .strip_prefix('b')
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<i64>().ok())
            {
                !view.by_id.contains_key(&id)
            } else {
                name.ends_with(".tmp")
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= min_age);
            if stale && old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether a segment is the block a catalog row describes.
fn matches(seg: &Segment, r: &Listed) -> bool {
    seg.meta.rows as i64 == r.events
        && seg.meta.bytes as i64 == r.bytes
        && i64::from(seg.checksum()) == r.crc
}

/// Reads the catalog in one short repeatable-read transaction: rows since
/// `from` (all of them when `None`), and the blocks of each day with a row
/// the caller may not hold.
fn list(c: &mut Client, from: Option<u64>) -> Result<Listing> {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let xmin = parse_xid(
        tx.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])?
            .get(0),
    )?;
    let rows: Vec<Listed> = tx
        .query(
            "SELECT id, shard, day, events, bytes, crc, min_ts, max_ts
               FROM desa_blocks WHERE xid >= $1::text::xid8",
            &[&from.unwrap_or(0).to_string()],
        )?
        .iter()
        .map(|r| Listed {
            id: r.get(0),
            shard: r.get(1),
            day: r.get(2),
            events: i64::from(r.get::<_, i32>(3)),
            bytes: i64::from(r.get::<_, i32>(4)),
            crc: r.get(5),
            span: (r.get(6), r.get(7)),
        })
        .collect();
    let mut days: HashMap<i32, HashSet<i64>> = HashMap::new();
    if from.is_some() && !rows.is_empty() {
        let mut wanted: Vec<i32> = rows.iter().map(|r| r.day).collect();
        wanted.sort_unstable();
        wanted.dedup();
        for r in tx.query(
            "SELECT day, id FROM desa_blocks WHERE day = ANY($1)",
            &[&wanted],
        )? {
            days.entry(r.get(0)).or_default().insert(r.get(1));
        }
    }
    tx.commit()?;
    Ok(Listing { xmin, rows, days })
}

#[cfg(test)]
mod tests {
    use super::*;
    use desa_model::Event;

    /// Runs once in [`Blocks::change_held`], when the new shards held are
    /// visible to queries: a query that runs at that moment.
    pub(super) static AFTER_HELD_CHANGE: Mutex<Option<Box<dyn FnOnce() + Send>>> = Mutex::new(None);

    /// A block of `shard` with one event, opened.
    fn block(dir: &Path, id: i64, shard: u32) -> (i64, u32, Arc<Segment>) {
        let day = 20_454;
        let event = Event {
            device_id: format!("d{shard}"),
            ts_secs: day * 86_400 + 60,
            event_type: "t".into(),
            value: 1.0,
            latitude: 0.0,
            longitude: 0.0,
            metadata: None,
        };
        let path = dir.join(format!("b{id:012}.seg"));
        desa_engine::segment_set::write_events_unsynced(&[&event], day, &path).unwrap();
        (
            id,
            shard,
            Arc::new(Segment::open(&path, id as u64).unwrap()),
        )
    }

    /// A revoke drops the blocks of the shards it stops holding. A query
    /// that runs as soon as the revoke is visible borrows the shards back
    /// and looks at the catalog (here: adds back the blocks the view lacks).
    /// No change stops holding a shard after its read of the drops count,
    /// so the view it then reads must hold every block: a revoke may not
    /// drop them once the query has looked.
    #[test]
    fn a_revoke_does_not_drop_blocks_after_a_query_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let blocks = Arc::new(Blocks::open(tmp.path(), "c").unwrap());
        let all: Vec<(i64, u32, Arc<Segment>)> = (0..4)
            .map(|i| block(tmp.path(), i + 1, i as u32 % 2))
            .collect();
        blocks.hold(Some(HashSet::from([0, 1])));
        blocks.replace_view(all.clone(), &HashSet::new());
        let seen = Arc::new(Mutex::new(None));
        let (b, all2, seen2) = (blocks.clone(), all.clone(), seen.clone());
        *AFTER_HELD_CHANGE.lock() = Some(Box::new(move || {
            let (held, _) = b.held_now();
            let absent: Vec<u32> = [0, 1]
                .into_iter()
                .filter(|s| held.as_ref().is_some_and(|h| !h.contains(s)))
                .collect();
            b.borrow(&absent);
            let drops = b.drops();
            let view = b.view();
            let missing: Added = all2
                .iter()
                .filter(|(id, ..)| !view.by_id.contains_key(id))
                .cloned()
                .collect();
            b.replace_view(missing, &HashSet::new());
            *seen2.lock() = Some(drops);
        }));
        blocks.hold(Some(HashSet::new()));
        let drops = seen.lock().take().expect("the query ran");
        assert_eq!(blocks.drops(), drops, "no revoke after the query's look");
        let view = blocks.view();
        let ids: Vec<i64> = view.by_id.keys().copied().collect();
        assert_eq!(
            ids,
            [1, 2, 3, 4],
            "the view after the revoke and the query's look"
        );
    }
}
