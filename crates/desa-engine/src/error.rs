//! Errors of the storage engine.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; nothing was acknowledged for the operation at hand.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write could not be made durable, and the log was rolled back to its
    /// last durable length: the caller may retry later (for instance after
    /// disk space was freed).
    #[error("cannot persist events now ({0}); nothing of this request was stored")]
    Unavailable(String),
    /// An fsync (or a rollback after a failed write) failed. The engine refuses
    /// all further writes: after a failed fsync the kernel may have dropped
    /// dirty pages, so what is on disk can no longer be known.
    #[error("storage is poisoned after a failed sync ({0}); writes are refused until restart")]
    Poisoned(String),
    /// Stored data failed a checksum or a structural check; it is not served.
    #[error("corrupt data in {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write holds a length its log record cannot represent (validation
    /// upstream keeps events far below every limit); nothing of it is stored.
    #[error("write refused: {0}")]
    Unrepresentable(String),
    /// The engine is shutting down.
    #[error("the storage engine is shut down")]
    Closed,
    /// The data directory holds stored events but no manifest to say which.
    #[error("data directory {dir} has no MANIFEST but holds {seg_files} segment file(s) and {log_files} log file(s): it was moved or deleted. Nothing was changed. Put MANIFEST back (from where it was moved, or a backup of this data dir), or rebuild it from the files with `desa fsck --data-dir {dir} --rebuild-manifest`", dir = dir.display())]
    ManifestMissing {
        dir: PathBuf,
        seg_files: usize,
        log_files: usize,
    },
    /// Another process has the data directory open.
    #[error("data directory {dir} is in use by another process{holder}; two nodes must not share a data directory")]
    Locked { dir: PathBuf, holder: String },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
