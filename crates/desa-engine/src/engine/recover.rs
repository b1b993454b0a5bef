//! Opening a data dir: the manifest, the files it names, and the log
//! replayed on top.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::{advance_offsets, segments_dir, wal_dir, EngineConfig};
use crate::clock::Clock;
use crate::durable::lock_dir;
use crate::error::{Error, Result};
use crate::head::Head;
use crate::idempotency::IdempotencyKeys;
use crate::manifest::{self, Manifest};
use crate::segment::{Segment, SegmentMeta};
use crate::summary::{LiveSummary, Summary, SummaryMeta};
use crate::wal::{self, WalWriter};

/// What a data dir holds once opened: the state to serve from.
pub(super) struct Recovered {
    pub lock: fs::File,
    pub manifest: Manifest,
    pub segments: Vec<Arc<Segment>>,
    pub summaries: Vec<Arc<LiveSummary>>,
    pub keys: IdempotencyKeys,
    /// The log's events not yet in segments.
    pub head: Head,
    pub watermark: Option<i64>,
    pub offsets: BTreeMap<(String, i32), i64>,
    pub writer: WalWriter,
}

/// Opens (or creates) the data dir of `cfg`, recovering from the manifest
/// and the write-ahead log.
pub(super) fn open_dir(cfg: &EngineConfig, clock: &dyn Clock) -> Result<Recovered> {
    let dir = cfg.dir.clone();
    for d in [dir.clone(), segments_dir(&dir), wal_dir(&dir)] {
        fs::create_dir_all(&d).map_err(Error::io("create dir", &d))?;
    }
    let lock = lock_dir(&dir)?;
    let manifest = match Manifest::load(&dir)? {
        Some(m) => m,
        None => first_manifest(&dir)?,
    };

    // Segments: the manifest's, their structure checked; each checksum is
    // verified before the first query or merge reads the file, and by the
    // scrub (`engine::scrub`). Any other file is a leftover.
    let seg_dir = segments_dir(&dir);
    let mut segments = Vec::new();
    for m in &manifest.segments {
        segments.push(Arc::new(Segment::open_unverified(
            &seg_dir.join(SegmentMeta::file_name(m.id)),
            m.id,
        )?));
    }
    let mut summaries = Vec::new();
    for m in &manifest.summaries {
        let path = seg_dir.join(SummaryMeta::file_name(m.id));
        let file = Summary::open_unverified(&path, m.level, m.first_day)?;
        summaries.push(Arc::new(LiveSummary {
            meta: m.clone(),
            file: Arc::new(file),
        }));
    }
    let live: HashSet<String> = manifest
        .segments
        .iter()
        .map(|m| SegmentMeta::file_name(m.id))
        .chain(
            manifest
                .summaries
                .iter()
                .map(|m| SummaryMeta::file_name(m.id)),
        )
        .chain([manifest::COPY.to_owned()])
        .collect();
    quarantine_unnamed(&dir, &live)?;

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
    let writer = WalWriter::create(&wdir, newest.max(manifest.wal_start.saturating_sub(1)) + 1)?;
    tracing::info!(
        segments = segments.len(),
        replayed_rows = head.len(),
        "storage engine opened"
    );
    Ok(Recovered {
        lock,
        manifest,
        segments,
        summaries,
        keys,
        head,
        watermark,
        offsets,
        writer,
    })
}

/// Where files the manifest does not name are moved, inside the data dir.
pub const ORPHANS_DIR: &str = "orphans";

/// The manifest of a data dir that has none: an empty one for a new dir
/// (stored at once, so that from now on a missing MANIFEST is always an
/// operator's mistake), or the log alone for a dir that never flushed. A
/// dir with segment files, or whose log does not start at file 1, has lost
/// its MANIFEST: serving it would serve only part of what was acknowledged,
/// and deleting its files would lose the rest, so it is refused.
fn first_manifest(dir: &Path) -> Result<Manifest> {
    let seg_dir = segments_dir(dir);
    let mut seg_files = 0usize;
    for entry in fs::read_dir(&seg_dir).map_err(Error::io("read dir", &seg_dir))? {
        entry.map_err(Error::io("read dir", &seg_dir))?;
        seg_files += 1;
    }
    let logs = wal::list_files(&wal_dir(dir))?;
    if seg_files > 0 || logs.first().is_some_and(|&n| n != 1) {
        return Err(Error::ManifestMissing {
            dir: dir.to_owned(),
            seg_files,
            log_files: logs.len(),
        });
    }
    let manifest = Manifest {
        version: 1,
        next_segment_id: 1,
        wal_start: 1,
        segments: Vec::new(),
        summaries: Vec::new(),
        source_offsets: Vec::new(),
    };
    manifest.store_durable(dir)?;
    Ok(manifest)
}

/// Moves every file of `segments/` that is not in `live` to `orphans/`,
/// with a warning: a crash between writing a file and naming it leaves one,
/// but so does an operator copying files in, and only the operator can tell.
fn quarantine_unnamed(dir: &Path, live: &HashSet<String>) -> Result<()> {
    let seg_dir = segments_dir(dir);
    let orphans = dir.join(ORPHANS_DIR);
    let mut moved = 0usize;
    for entry in fs::read_dir(&seg_dir).map_err(Error::io("read dir", &seg_dir))? {
        let entry = entry.map_err(Error::io("read dir", &seg_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if live.contains(&name) {
            continue;
        }
        if moved == 0 {
            fs::create_dir_all(&orphans).map_err(Error::io("create dir", &orphans))?;
        }
        let mut target = orphans.join(&name);
        let mut n = 1;
        while target.exists() {
            target = orphans.join(format!("{name}.{n}"));
            n += 1;
        }
        fs::rename(entry.path(), &target).map_err(Error::io("rename", entry.path()))?;
        tracing::warn!(
            file = %name,
            moved_to = %target.display(),
            "file in segments/ not named in the manifest (left by a crash, or copied in); moved aside, not deleted"
        );
        moved += 1;
    }
    if moved > 0 {
        crate::durable::sync_dir(&seg_dir)?;
        crate::durable::sync_dir(&orphans)?;
    }
    Ok(())
}
