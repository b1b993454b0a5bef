//! The scrub: a node opens its files without reading them whole when it
//! starts (`Segment::open_unverified`), so that a restart costs the same
//! whatever the data; queries and merges verify a file's checksum before
//! they first read it, and this thread verifies every file not verified
//! yet, at idle priority, so that a damaged file is reported on `/healthz`
//! without waiting for a query to need it. Every
//! `EngineConfig::scrub_every` it reads every file again, for damage since
//! (bit rot, a stray write). A file that fails is never served from then on:
//! every query that needs it answers an error naming it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::maintain::idle_priority;
use super::{mapped_files, snapshot, Inner};
use crate::error::Error;

/// How often the scrub looks for files not verified yet.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Name under which a damaged file is reported in the engine's failing
/// tasks (and so on `/healthz`).
const CHECKSUM: &str = "checksum";

/// Records a file that failed its checksum, for `/healthz`; it stays
/// reported until the node restarts without it.
pub(super) fn report_damaged(inner: &Inner, e: &Error) {
    let mut failing = inner.failing.lock();
    if !failing.contains_key(CHECKSUM) {
        tracing::error!(error = %e, "a stored file failed its checksum");
        failing.insert(CHECKSUM, e.to_string());
    }
    drop(failing);
    // Answers computed before the damage was seen are not served again.
    inner.state.write().epochs.touch_all();
}

pub(super) fn scrub_loop(inner: &Inner) {
    idle_priority();
    let mut last_pass = Instant::now();
    while !inner.shutdown.load(Ordering::SeqCst) {
        let (segs, sums) = snapshot(&inner.state.read());
        let again = last_pass.elapsed() >= inner.cfg.scrub_every;
        if again {
            last_pass = Instant::now();
        }
        // Files not verified yet; on a pass, every file again.
        let checks = mapped_files(&segs, &sums).filter_map(|f| match again {
            true => Some(f.reverify()),
            false => (!f.verified()).then(|| f.verify()),
        });
        for result in checks {
            if inner.shutdown.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = result {
                report_damaged(inner, &e);
            }
        }
        // In short steps, so that a shutdown does not wait out the pause.
        let until = Instant::now() + LOOK_EVERY.min(inner.cfg.scrub_every);
        while Instant::now() < until && !inner.shutdown.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
