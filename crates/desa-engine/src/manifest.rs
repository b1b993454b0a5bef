//! The manifest: which segments are live and which write-ahead log files still
//! hold events that are not in a segment.
//!
//! `MANIFEST` is JSON, replaced atomically (`durable::replace_file_durable`:
//! `MANIFEST.tmp` written and fsynced, renamed, directory fsynced). A crash
//! leaves either the old or the new manifest, never a mix.
//!
//! Every change first stores the same JSON as [`COPY`] beside the segments
//! (`segments/MANIFEST.copy`), the same way. A data dir that lost its
//! `MANIFEST` (moved, deleted, a backup restored without it) is rebuilt
//! from the copy exactly (`fsck::rebuild_manifest`): the copy is the
//! manifest, or, after a crash between the two writes, the next one, whose
//! files were all written and synced before it and whose deletions had not
//! begun.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::replace_file_durable;
use crate::error::{Error, Result};
use crate::segment::SegmentMeta;
use crate::summary::SummaryMeta;
use crate::wal::SourceOffset;

pub const FILE: &str = "MANIFEST";

/// The manifest's copy, in the segments directory.
pub const COPY: &str = "MANIFEST.copy";

/// Where a data dir keeps its segments, summaries and the manifest's copy.
pub(crate) fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

/// Where a data dir keeps its write-ahead log.
pub(crate) fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub next_segment_id: u64,
    /// Log files numbered below this are wholly in segments.
    pub wal_start: u64,
    pub segments: Vec<SegmentMeta>,
    /// Summaries of whole-day blocks, with the segments each one holds.
    #[serde(default)]
    pub summaries: Vec<SummaryMeta>,
    /// Source positions covered by the segments and the log from `wal_start`.
    #[serde(default)]
    pub source_offsets: Vec<SourceOffset>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        Self::load_from(&dir.join(FILE))
    }

    /// The manifest's copy in the segments directory, if there is one.
    pub fn load_copy(dir: &Path) -> Result<Option<Manifest>> {
        Self::load_from(&segments_dir(dir).join(COPY))
    }

    fn load_from(path: &Path) -> Result<Option<Manifest>> {
        let path = path.to_owned();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::corrupt(
                    &path,
                    e.column() as u64,
                    format!("manifest is not valid: {e}"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Replaces the manifest atomically and durably, its copy first.
    pub fn store_durable(&self, dir: &Path) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Unavailable(e.to_string()))?;
        replace_file_durable(&segments_dir(dir), COPY, &bytes)?;
        replace_file_durable(dir, FILE, &bytes)
    }
}
