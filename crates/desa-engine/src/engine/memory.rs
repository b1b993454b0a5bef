//! Resident memory: measured from /proc and kept under the budget by
//! unmapping the least recently queried files.

use std::fs;
use std::time::Duration;

use super::{mapped_files, snapshot, Inner};
use crate::sections::SectionFile;

/// How often resident memory is checked against the budget. Queries map
/// segment pages in quickly; this bounds how far they can overshoot.
pub(super) const MEMORY_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Returns freed glibc heap memory to the operating system (glibc keeps it
/// otherwise): the engine's own allocations when it runs under the system
/// allocator, as in its tests. The `desa` binary allocates with mimalloc,
/// which returns freed memory by itself.
pub(super) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident memory of this process, from /proc (0 where unavailable).
pub fn resident_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Drops mapped segment and summary pages from this process when it nears
/// its budget; they stay in the kernel's page cache and are mapped again on
/// access. The least recently queried files go first, a few at a time, until
/// resident memory is below half the budget, so hot pages stay mapped.
pub(super) fn enforce_memory_budget(inner: &Inner) {
    let budget = inner.cfg.memory_budget_bytes;
    if resident_bytes() <= budget / 10 * 7 {
        return;
    }
    let (segs, sums) = snapshot(&inner.state.read());
    // Use times are read once: queries change them meanwhile, and a sort
    // whose keys move under it may panic.
    let mut mapped: Vec<(u64, &SectionFile)> = mapped_files(&segs, &sums)
        .map(|m| (m.last_used(), m))
        .collect();
    mapped.sort_by_key(|m| m.0);
    for (i, (_, file)) in mapped.iter().enumerate() {
        file.release_memory();
        if i % 4 == 3 && resident_bytes() <= budget / 2 {
            break;
        }
    }
}
