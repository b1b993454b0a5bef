//! The durable-file helpers every writer of the data dir shares: atomic
//! replacement of small files, directory syncs, and the data dir's lock.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Replaces `dir/name` with `bytes` atomically and durably: a temporary file
/// is written and fsynced, renamed over the old one, and the directory
/// fsynced. A crash leaves the old or the new contents, never a mix.
pub(crate) fn replace_file_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all(bytes).map_err(Error::io("write", &tmp))?;
    f.sync_all()
        .map_err(|e| Error::Poisoned(format!("fsync {}: {e}", tmp.display())))?;
    fs::rename(&tmp, dir.join(name)).map_err(Error::io("rename", &tmp))?;
    // Past the rename, which of the two files a crash leaves is up to the
    // directory's sync: if it fails, neither can be assumed.
    sync_dir(dir).map_err(|e| Error::Poisoned(e.to_string()))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync dir", dir))
}

/// Takes an exclusive `flock` on `DIR/LOCK` (released by the kernel when the
/// process exits, kill -9 included) and writes this process's id into it.
/// Held for as long as the returned file is open.
pub fn lock_dir(dir: &Path) -> Result<fs::File> {
    use std::io::{Read, Seek};
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

/// Removes the files an attempt wrote before it failed with `error`. Each
/// is accounted for: the attempt created it under a fresh id, and no
/// manifest names it, unless the failure was a sync that poisoned the
/// engine: then the manifest on disk may be the new one, which names them,
/// so they are kept (a next start moves any that are not named to orphans/).
pub(crate) fn remove_written(paths: &[PathBuf], error: &Error) {
    if matches!(error, Error::Poisoned(_)) {
        return;
    }
    for p in paths {
        if let Err(e) = fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %p.display(), error = %e, "cannot remove the file of a failed write; it is moved to orphans at the next start");
            }
        }
    }
}
