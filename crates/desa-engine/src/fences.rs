//! Heap-resident fence keys over a file's sorted device table, shared by
//! segments and summaries: a device lookup reads one short run of the mapped
//! table instead of ~log2(series) scattered pages.

/// Series between two fence keys.
const FENCE_STRIDE: usize = 64;

/// Per type, every [`FENCE_STRIDE`]-th series and its device.
pub(crate) struct DeviceFences(Vec<Vec<(u32, Box<str>)>>);

impl DeviceFences {
    /// `type_series[t]..type_series[t + 1]` are the series of type `t`,
    /// sorted by device; `device(s)` names series `s`.
    pub fn build<'a>(type_series: &[u32], device: impl Fn(usize) -> &'a str) -> DeviceFences {
        DeviceFences(
            type_series
                .windows(2)
                .map(|r| {
                    (r[0]..r[1])
                        .step_by(FENCE_STRIDE)
                        .map(|s| (s, Box::from(device(s as usize))))
                        .collect()
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
        let fences = &self.0[t];
        let k = fences.partition_point(|(_, d)| d.as_ref() <= name);
        if k == 0 {
            return None; // before the type's first device
        }
        let (mut lo, mut hi) = (
            fences[k - 1].0 as usize,
            fences.get(k).map_or(type_series[t + 1], |f| f.0) as usize,
        );
        while lo < hi {
            let mid = (lo + hi) / 2;
            match device(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }
}

/// Binary search of a sorted string table of `n` entries.
pub(crate) fn find_name<'a>(n: usize, name: &str, at: impl Fn(usize) -> &'a str) -> Option<usize> {
    let (mut lo, mut hi) = (0, n);
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
