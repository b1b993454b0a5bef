//! A worker's local copy of the blocks, and how it follows the catalog.
//!
//! Every block is immutable, named by an id that is never reused, and
//! removed only by a merge, which adds a block of the same day in the same
//! transaction. So a local copy is kept current by reading the catalog rows
//! that committed since the last look: those of transactions at or after
//! the oldest transaction that was still running then (`pg_snapshot_xmin`);
//! anything older had ended and was seen. New blocks' bodies are fetched
//! once, written to the worker's block directory and mapped; for each day
//! with a new block, the day's list of blocks is read in the same snapshot,
//! and local blocks it no longer names are dropped. (A merge's own inputs
//! are not enough: a worker may never see a block that was merged into
//! another before it looked.)
//!
//! Each query first looks (one round trip when nothing is new), so a query
//! sees every write committed before it started, on any worker. A worker's
//! own writes and merges leave their blocks' files in place, so reading them
//! in the catalog costs no fetch.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use desa_engine::segment::Segment;
use desa_engine::segment_set::SegmentSet;
use parking_lot::{Mutex, RwLock};
use postgres::{Client, IsolationLevel};

use crate::error::{Error, Result};

/// Blocks known locally, as one consistent snapshot.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub by_id: BTreeMap<i64, Arc<Segment>>,
    pub set: SegmentSet,
    pub events: u64,
    pub bytes: u64,
    pub max_ts: Option<i64>,
}

impl View {
    fn with(&self, added: Vec<(i64, Arc<Segment>)>, gone: &HashSet<i64>) -> View {
        let mut by_id = self.by_id.clone();
        by_id.retain(|id, _| !gone.contains(id));
        by_id.extend(added.into_iter().filter(|(id, _)| !gone.contains(id)));
        let segs: Vec<Arc<Segment>> = by_id.values().cloned().collect();
        View {
            events: segs.iter().map(|s| s.meta.rows).sum(),
            bytes: segs.iter().map(|s| s.meta.bytes).sum(),
            max_ts: segs
                .iter()
                .filter(|s| s.meta.rows > 0)
                .map(|s| s.meta.max_ts)
                .max(),
            set: SegmentSet::new(segs),
            by_id,
        }
    }
}

pub(crate) struct Blocks {
    dir: PathBuf,
    view: RwLock<Arc<View>>,
    /// Held while the view changes, so that the catalog is applied in the
    /// order it was read. `None` until the first full listing.
    tail: Mutex<Option<String>>,
    next_temp: AtomicU64,
}

/// A block built locally and not yet committed.
pub(crate) struct NewBlock {
    pub day: i64,
    pub events: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub body: Vec<u8>,
    pub file: PathBuf,
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

impl Blocks {
    /// Opens (creating) the block directory and drops unfinished files.
    pub fn open(dir: &Path) -> Result<Blocks> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        for entry in std::fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Blocks {
            dir: dir.to_owned(),
            view: RwLock::new(Arc::new(View::default())),
            tail: Mutex::new(None),
            next_temp: AtomicU64::new(0),
        })
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    fn path(&self, id: i64) -> PathBuf {
        self.dir.join(format!("b{id:012}.seg"))
    }

    /// A new file name for a block being built.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("new-{}-{n}.tmp", std::process::id()))
    }

    /// Reads a block built at `file` into a [`NewBlock`].
    pub fn built(&self, day: i64, file: PathBuf) -> Result<NewBlock> {
        let body = std::fs::read(&file).map_err(io("read", &file))?;
        let seg = Segment::open(&file, 0)?;
        Ok(NewBlock {
            day,
            events: seg.meta.rows,
            min_ts: seg.meta.min_ts,
            max_ts: seg.meta.max_ts,
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
        for (b, &id) in built.into_iter().zip(ids) {
            let path = self.path(id);
            std::fs::rename(&b.file, &path).map_err(io("rename", &path))?;
        }
        Ok(())
    }

    fn replace_view(&self, added: Vec<(i64, Arc<Segment>)>, gone: &HashSet<i64>) {
        let next = Arc::new(self.view().with(added, gone));
        *self.view.write() = next;
        for id in gone {
            let _ = std::fs::remove_file(self.path(*id));
        }
    }

    /// Brings the view up to the catalog as committed now.
    pub fn sync(&self, c: &mut Client) -> Result<()> {
        let mut tail = self.tail.lock();
        if let Some(from) = tail.as_deref() {
            // One statement, one snapshot: the catalog rows since the last
            // look, and the oldest transaction running now.
            let rows = c.query(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, b.id
                   FROM (SELECT 1) AS one
                   LEFT JOIN desa_blocks b ON b.xid >= $1::text::xid8",
                &[&from],
            )?;
            let view = self.view();
            let all_known = rows.iter().all(|r| {
                r.get::<_, Option<i64>>(1)
                    .is_none_or(|id| view.by_id.contains_key(&id))
            });
            if all_known {
                if let Some(r) = rows.first() {
                    *tail = Some(r.get(0));
                }
                return Ok(());
            }
        }
        let full = tail.is_none();
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let xmin: String = tx
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])?
            .get(0);
        let from = tail.clone().unwrap_or_else(|| "0".into());
        let rows = tx.query(
            "SELECT id, day FROM desa_blocks WHERE xid >= $1::text::xid8",
            &[&from],
        )?;
        let view = self.view();
        let mut gone: HashSet<i64> = HashSet::new();
        let mut added: Vec<(i64, Arc<Segment>)> = Vec::new();
        let (mut want_ids, mut want_days) = (Vec::new(), Vec::new());
        let mut new_days: Vec<i32> = Vec::new();
        for r in &rows {
            let (id, day): (i64, i32) = (r.get(0), r.get(1));
            if view.by_id.contains_key(&id) {
                continue;
            }
            new_days.push(day);
            // A copy kept from an earlier run is as good as a fetched one:
            // a block's content never changes.
            match Segment::open(&self.path(id), id as u64) {
                Ok(seg) => added.push((id, Arc::new(seg))),
                Err(_) => {
                    want_ids.push(id);
                    want_days.push(day);
                }
            }
        }
        // Blocks held locally that the catalog no longer lists are gone:
        // all of them after a full listing, else those of the days with a
        // new block (only a merge removes blocks, and it adds one).
        let listed: HashSet<i64> = if full {
            rows.iter().map(|r| r.get(0)).collect()
        } else {
            new_days.sort_unstable();
            new_days.dedup();
            tx.query(
                "SELECT id FROM desa_blocks WHERE day = ANY($1)",
                &[&new_days],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        gone.extend(view.by_id.iter().filter_map(|(id, seg)| {
            let listed_day = full || new_days.contains(&(seg.meta.partition as i32));
            (listed_day && !listed.contains(id)).then_some(*id)
        }));
        if !want_ids.is_empty() {
            want_days.sort_unstable();
            want_days.dedup();
            let bodies = tx.query(
                "SELECT id, body FROM desa_block_bodies WHERE day = ANY($1) AND id = ANY($2)",
                &[&want_days, &want_ids],
            )?;
            if bodies.len() != want_ids.len() {
                return Err(Error::Schema(format!(
                    "{} of {} listed blocks have no body in desa_block_bodies",
                    want_ids.len() - bodies.len(),
                    want_ids.len()
                )));
            }
            for r in &bodies {
                let id: i64 = r.get(0);
                let body: &[u8] = r.get(1);
                let temp = self.temp_path();
                std::fs::write(&temp, body).map_err(io("write", &temp))?;
                let path = self.path(id);
                std::fs::rename(&temp, &path).map_err(io("rename", &path))?;
                added.push((id, Arc::new(Segment::open(&path, id as u64)?)));
            }
        }
        tx.commit()?;
        self.replace_view(added, &gone);
        if full {
            self.remove_unlisted();
        }
        *tail = Some(xmin);
        Ok(())
    }

    /// Deletes block files the view does not hold (left by an earlier run).
    fn remove_unlisted(&self) {
        let view = self.view();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| {
                n.strip_prefix('b')?
                    .strip_suffix(".seg")?
                    .parse::<i64>()
                    .ok()
            });
            if id.is_some_and(|id| !view.by_id.contains_key(&id)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
