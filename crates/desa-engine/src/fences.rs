//! Heap-resident fence keys over a file's sorted device table, shared by
//! segments and summaries: a device lookup reads one short run of the mapped
//! table instead of ~log2(series) scattered pages.

/// Series between two fence keys.
const FENCE_STRIDE: usize = 64;

/// One type's fence keys: series numbers and device names, the names packed
/// into one string (two allocations per type, not one per key).
#[derive(Default)]
struct TypeFences {
    series: Vec<u32>,
    ends: Vec<u32>,
    names: String,
}

impl TypeFences {
    fn name(&self, k: usize) -> &str {
        let start = if k == 0 { 0 } else { self.ends[k - 1] as usize };
        &self.names[start..self.ends[k] as usize]
    }
}

/// Per type, every [`FENCE_STRIDE`]-th series and its device.
pub(crate) struct DeviceFences(Vec<TypeFences>);

impl DeviceFences {
    /// `type_series[t]..type_series[t + 1]` are the series of type `t`,
    /// sorted by device; `device(s)` names series `s`.
    pub fn build<'a>(type_series: &[u32], device: impl Fn(usize) -> &'a str) -> DeviceFences {
        DeviceFences(
            type_series
                .windows(2)
                .map(|r| {
                    let mut f = TypeFences::default();
                    for s in (r[0]..r[1]).step_by(FENCE_STRIDE) {
                        f.series.push(s);
                        f.names.push_str(device(s as usize));
                        f.ends.push(f.names.len() as u32);
                    }
                    f.series.shrink_to_fit();
                    f.ends.shrink_to_fit();
                    f.names.shrink_to_fit();
                    f
                })
                .collect(),
        )
    }

    /// The series of `device` within type `t`, if it has one.
    pub fn find<'a>(
        &self,
        t: usize,
        type_series: &[u32],
        name: &str,
        device: impl Fn(usize) -> &'a str,
    ) -> Option<usize> {
        let f = &self.0[t];
        let k = find_last_le(f.series.len(), name, |k| f.name(k));
        let k = k?; // None: before the type's first device
        let (lo, hi) = (
            f.series[k] as usize,
            f.series.get(k + 1).copied().unwrap_or(type_series[t + 1]) as usize,
        );
        find_in(lo, hi, name, device)
    }
}

/// The last of `n` sorted keys that is <= `name`.
fn find_last_le<'a>(n: usize, name: &str, at: impl Fn(usize) -> &'a str) -> Option<usize> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if at(mid) <= name {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1)
}

/// Binary search for `name` among the sorted entries `lo..hi`.
fn find_in<'a>(lo: usize, hi: usize, name: &str, at: impl Fn(usize) -> &'a str) -> Option<usize> {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid).cmp(name) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}

/// Binary search of a sorted string table of `n` entries.
pub(crate) fn find_name<'a>(n: usize, name: &str, at: impl Fn(usize) -> &'a str) -> Option<usize> {
    find_in(0, n, name, at)
}
