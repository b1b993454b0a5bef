//! `desa fsck`: what a data dir holds, checked file by file without
//! changing it, and the one repair a node will not make by itself:
//! rebuilding a lost MANIFEST from the files.
//!
//! Both take the data dir's lock, so they never run beside a node.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::durable::{lock_dir, sync_dir};
use crate::engine::{segments_dir, wal_dir, ORPHANS_DIR};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::segment::{Segment, SegmentMeta};
use crate::summary::{Summary, SummaryMeta};
use crate::wal;

/// What `check` found. `problems` empty means the dir is whole.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub manifest: bool,
    pub segments: usize,
    pub segment_events: u64,
    pub summaries: usize,
    pub log_files: usize,
    pub log_records: u64,
    pub log_events: u64,
    /// Events a node would serve: segments plus the log from `wal_start`.
    pub stored_events: u64,
    /// Files in `segments/` the manifest does not name (a node moves them
    /// to `orphans/` when it opens the dir).
    pub unnamed: Vec<String>,
    /// Files already in `orphans/`.
    pub orphans: Vec<String>,
    /// Bytes of the live files by part of the format (see `breakdown`).
    pub bytes_by_part: std::collections::BTreeMap<&'static str, u64>,
    pub problems: Vec<String>,
}

/// Verifies every file a node would read: each segment and summary the
/// manifest names (checksums and structure, as a node's open does), and
/// every log record from `wal_start`. Changes nothing.
pub fn check(dir: &Path) -> Result<Report> {
    let _lock = lock_dir(dir)?;
    let mut r = Report::default();
    let seg_dir = segments_dir(dir);
    let manifest = match Manifest::load(dir) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(e.to_string());
            None
        }
    };
    r.manifest = manifest.is_some();
    let mut named = HashSet::new();
    if let Some(m) = &manifest {
        for s in &m.segments {
            let name = SegmentMeta::file_name(s.id);
            match Segment::open(&seg_dir.join(&name), s.id).and_then(|seg| {
                seg.verify_indexes()?;
                Ok(seg)
            }) {
                Ok(seg) if seg.meta.rows == s.rows => {
                    r.segments += 1;
                    r.segment_events += s.rows;
                }
                Ok(seg) => r.problems.push(format!(
                    "{name}: holds {} events, the manifest says {}",
                    seg.meta.rows, s.rows
                )),
                Err(e) => r.problems.push(e.to_string()),
            }
            named.insert(name);
        }
        for s in &m.summaries {
            let name = SummaryMeta::file_name(s.id);
            match Summary::open(&seg_dir.join(&name), s.level, s.first_day)
                .and_then(|x| x.verify_indexes())
            {
                Ok(()) => r.summaries += 1,
                Err(e) => r.problems.push(e.to_string()),
            }
            named.insert(name);
        }
    } else if r.problems.is_empty() {
        r.problems.push(format!(
            "no {} in {}: a node refuses to start here while it holds segment or log files",
            manifest::FILE,
            dir.display()
        ));
    }
    r.unnamed = names_in(&seg_dir)?
        .into_iter()
        .filter(|n| !named.contains(n) && n != manifest::COPY)
        .collect();
    r.orphans = names_in(&dir.join(ORPHANS_DIR))?;
    let wal_start = manifest.as_ref().map_or(1, |m| m.wal_start);
    let wdir = wal_dir(dir);
    r.log_files = wal::list_files(&wdir)?
        .into_iter()
        .filter(|&n| n >= wal_start)
        .count();
    match wal::scan(&wdir, wal_start, |rec| {
        r.log_records += 1;
        r.log_events += rec.events.len() as u64;
    }) {
        Ok((_, None)) => {}
        Ok((_, Some((path, offset, bytes)))) => r.problems.push(format!(
            "{}: torn tail of {bytes} bytes at byte {offset} (a crash during an unacknowledged write; a node truncates it when it opens the dir)",
            path.display()
        )),
        Err(e) => r.problems.push(e.to_string()),
    }
    r.stored_events = r.segment_events + r.log_events;
    if r.problems.is_empty() {
        r.bytes_by_part = crate::breakdown::storage_breakdown(dir)?.bytes;
    }
    Ok(r)
}

/// The manifest's copy, in the segments directory (see `rebuild_manifest`).
pub const MANIFEST_COPY: &str = manifest::COPY;

/// What `rebuild_manifest` did.
#[derive(Debug, Default, Serialize)]
pub struct Rebuilt {
    /// Restored from the manifest's copy (`manifest::COPY`), exactly; else
    /// rebuilt from the files.
    pub from_copy: bool,
    pub segments: usize,
    pub segment_events: u64,
    pub wal_start: u64,
    /// Summaries moved to `orphans/`: which segments each held is recorded
    /// only in the lost manifest. The node builds them again.
    pub summaries_set_aside: Vec<String>,
}

/// Writes a MANIFEST for a data dir that lost its own. From the manifest's
/// copy when it is whole (every file it names is there and verifies, and so
/// is every log file from its first): exact, summaries and Kafka positions
/// included. Else from the files: every segment file (each is verified and
/// describes itself), the log from its first file, and no summaries
/// (rebuilt by the node). Refuses if a MANIFEST exists or a segment file
/// fails its checks; changes nothing then.
///
/// From the files, it is exact when the node that last used the dir opened
/// it after its last crash (opening removes what a crash left of a merge or
/// a flush); after a crash with no restart since, events of a merge or
/// flush it interrupted can be counted twice, and Kafka positions stored in
/// the lost manifest are not recovered (the consumer resumes from the
/// group's committed offsets).
pub fn rebuild_manifest(dir: &Path) -> Result<Rebuilt> {
    let _lock = lock_dir(dir)?;
    if Manifest::load(dir)?.is_some() {
        return Err(Error::Unavailable(format!(
            "{} has a {}; nothing to rebuild",
            dir.display(),
            manifest::FILE
        )));
    }
    if let Some(copy) = whole_copy(dir)? {
        copy.store_durable(dir)?;
        return Ok(Rebuilt {
            from_copy: true,
            segments: copy.segments.len(),
            segment_events: copy.segments.iter().map(|s| s.rows).sum(),
            wal_start: copy.wal_start,
            summaries_set_aside: Vec::new(),
        });
    }
    let seg_dir = segments_dir(dir);
    let mut out = Rebuilt::default();
    let mut segments = Vec::new();
    let mut summaries: Vec<PathBuf> = Vec::new();
    let mut max_id = 0u64;
    for name in names_in(&seg_dir)? {
        let path = seg_dir.join(&name);
        let id = name
            .split_once('.')
            .and_then(|(stem, _)| stem.parse::<u64>().ok());
        match (id, name.rsplit_once('.').map(|(_, ext)| ext)) {
            (Some(id), Some("seg")) => {
                let seg = Segment::open(&path, id)?;
                max_id = max_id.max(id);
                out.segment_events += seg.meta.rows;
                segments.push(seg.meta.clone());
            }
            (Some(id), Some("sum")) => {
                max_id = max_id.max(id);
                summaries.push(path);
            }
            _ => {} // not the node's: moved to orphans/ when it opens the dir
        }
    }
    segments.sort_by_key(|m| m.id);
    let logs = wal::list_files(&wal_dir(dir))?;
    let wal_start = logs.first().copied().unwrap_or(1);
    wal::scan(&wal_dir(dir), wal_start, |_| {})?;
    let orphans = dir.join(ORPHANS_DIR);
    if !summaries.is_empty() {
        fs::create_dir_all(&orphans).map_err(Error::io("create dir", &orphans))?;
    }
    for path in &summaries {
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let target = orphans.join(&name);
        fs::rename(path, &target).map_err(Error::io("rename", path))?;
        out.summaries_set_aside
            .push(name.to_string_lossy().into_owned());
    }
    if !summaries.is_empty() {
        sync_dir(&seg_dir)?;
        sync_dir(&orphans)?;
    }
    out.segments = segments.len();
    out.wal_start = wal_start;
    Manifest {
        version: 1,
        next_segment_id: max_id + 1,
        wal_start,
        segments,
        summaries: Vec::new(),
        source_offsets: Vec::new(),
    }
    .store_durable(dir)?;
    Ok(out)
}

/// The manifest's copy, if there is one and the dir holds every file it
/// names, each verified, and every log file from its first.
fn whole_copy(dir: &Path) -> Result<Option<Manifest>> {
    let Ok(Some(copy)) = Manifest::load_copy(dir) else {
        return Ok(None);
    };
    let seg_dir = segments_dir(dir);
    let segments_ok = copy.segments.iter().all(|s| {
        Segment::open(&seg_dir.join(SegmentMeta::file_name(s.id)), s.id)
            .is_ok_and(|seg| seg.meta.rows == s.rows)
    });
    let summaries_ok = copy.summaries.iter().all(|s| {
        Summary::open(
            &seg_dir.join(SummaryMeta::file_name(s.id)),
            s.level,
            s.first_day,
        )
        .is_ok()
    });
    let logs = wal::list_files(&wal_dir(dir))?;
    // The log must run unbroken from the copy's first file: the events
    // after the copy's segments are all there.
    let logs_ok = logs.is_empty()
        || logs
            .iter()
            .position(|&n| n == copy.wal_start)
            .is_some_and(|i| logs[i..].windows(2).all(|w| w[1] == w[0] + 1));
    Ok((segments_ok && summaries_ok && logs_ok).then_some(copy))
}

/// File names in `dir`, sorted; none if it does not exist.
fn names_in(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read dir", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("read dir", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}
