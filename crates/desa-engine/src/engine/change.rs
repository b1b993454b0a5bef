//! The one way the file lists change: copy-on-write. A flush, a merge, a
//! summary or retention builds the new manifest on a copy, stores it
//! durably, and only then installs it; a failed step leaves the manifest
//! in memory and on disk as it was, and removes the files that attempt
//! wrote (unless a sync failed: see `durable::remove_written`).

use std::path::{Path, PathBuf};

use crate::durable::remove_written;
use crate::error::Result;
use crate::manifest::Manifest;

/// Applies `build` to a copy of `manifest`, stores the copy in `dir` and
/// installs it. `build` changes the copy and records in its second argument
/// every file it writes. Ids taken from the copy are kept taken even when
/// the change fails: a retry never writes over a file a failed attempt had
/// to keep.
pub(super) fn change_manifest<T>(
    manifest: &mut Manifest,
    dir: &Path,
    build: impl FnOnce(&mut Manifest, &mut Vec<PathBuf>) -> Result<T>,
) -> Result<T> {
    let mut next = manifest.clone();
    let mut written = Vec::new();
    let stored = build(&mut next, &mut written).and_then(|out| {
        next.store_durable(dir)?;
        Ok(out)
    });
    match stored {
        Ok(out) => {
            *manifest = next;
            Ok(out)
        }
        Err(e) => {
            manifest.next_segment_id = next.next_segment_id;
            remove_written(&written, &e);
            Err(e)
        }
    }
}
