//! Query execution over the head(s) and the segments that overlap a window.
//!
//! Costs, with `S` the segments overlapping the window (segments are per UTC
//! day; compaction keeps O(log n) of them per day, and one per day, up to
//! `max_segment_rows`, once the watermark has left the day behind):
//! - **avg**: per segment, a binary search for the series and two on its
//!   timestamps, then a prefix-sum difference: `O(S log n)`, whatever the
//!   number of events of that device in the window.
//! - **geo**: per segment, a k-d tree descent that takes whole nodes inside
//!   the box without reading them: only nodes cut by the box's edges or the
//!   window's ends are opened.
//! - **top-K**: Fagin's threshold algorithm. Each segment offers its devices
//!   by all-time count descending (sorted access) and a device's exact count in
//!   the window by binary search (random access); for a segment only partly in
//!   the window the all-time count is an upper bound, which keeps the stopping
//!   rule sound. A segment the window cuts to at most half of the type's rows
//!   (where that bound would overstate the window's counts twofold or more,
//!   and never fall below the K-th count of a short window) is counted
//!   instead: its rows in the window, found in its time order by two binary
//!   searches, are counted per series, `O(rows in the window + series)`, and
//!   it becomes a list of exact counts. The search stops once the K-th best
//!   exact count exceeds the sum of the bounds at the cursors; under skew the
//!   bounds fall fast.
//!   Under flat activity they do not, and every device read costs a binary
//!   search in each list: once those random accesses, weighted by what one
//!   costs against adding up one entry, outweigh the entries of all lists
//!   together, the lists are instead added up entry by entry into one count
//!   per device (`O(E)` for `E` entries), which is then cheaper than going
//!   on. Either way the answer is exact.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use desa_model::{DeviceCount, DoubleDouble, GeoBox, TimeWindow};

use crate::head::{ByCount, Head};
use crate::names::{Decoded, BLOCK_NAMES};
use crate::packed::IdList;
use crate::segment::Segment;
use crate::summary::{self, GeoPart, LiveSummary, Summary};

/// The files that answer one window: summaries of whole-day blocks inside
/// it, and every segment overlapping it that those summaries do not hold.
pub(crate) struct Plan<'a> {
    pub summaries: Vec<&'a Summary>,
    /// For each summary the plan [uses with its segments](Use::WithSegments),
    /// the segments it covers; for the others none.
    pub held: Vec<Vec<&'a Segment>>,
    pub segments: Vec<&'a Segment>,
}

impl Plan<'_> {
    /// Verifies the checksum of every file the plan reads (once per file).
    pub fn verify(&self) -> crate::error::Result<()> {
        self.summaries.iter().try_for_each(|s| s.verify())?;
        self.held.iter().flatten().try_for_each(|s| s.verify())?;
        self.segments.iter().try_for_each(|s| s.verify())
    }
}

/// How a plan uses a summary of its window's cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Not at all: the segments it covers answer instead.
    Not,
    /// Alone.
    Alone,
    /// With the segments it covers at hand (`Plan::held`): a geo query over
    /// device extents reads the devices the box's edge cuts from them.
    WithSegments,
}

/// How a plan uses each summary for the query at hand.
pub(crate) type Answers<'f> = &'f dyn Fn(&Summary) -> Use;

/// Every summary answers avg and top-K alone.
pub(crate) fn all(_: &Summary) -> Use {
    Use::Alone
}

/// How a geo query of `event_type` uses a summary.
pub(crate) fn geo_use(event_type: &str) -> impl Fn(&Summary) -> Use + '_ {
    move |s| match s.geo_part(event_type) {
        GeoPart::Points => Use::Alone,
        GeoPart::Extents => Use::WithSegments,
        GeoPart::Segments => Use::Not,
    }
}

/// The plan of a window: the summaries of a dyadic cover of its whole days
/// that `answers` uses, and the segments of the rest (the days a refused
/// summary would have held among them).
pub(crate) fn plan<'a>(
    segments: &'a [Arc<Segment>],
    summaries: &'a [Arc<LiveSummary>],
    w: TimeWindow,
    answers: Answers,
) -> Plan<'a> {
    let (first, end) = summary::whole_days(w.start, w.end);
    let mut chosen: Vec<(&LiveSummary, Use)> = Vec::new();
    if end - first >= 1 << summary::MIN_LEVEL && !summaries.is_empty() {
        let by_block: HashMap<(u32, i64), &LiveSummary> = summaries
            .iter()
            .map(|s| ((s.meta.level, s.meta.first_day), s.as_ref()))
            .collect();
        let blocks = by_block.keys().map(|&(l, d)| (d, l)).collect();
        for block in summary::cover(first, end, &blocks) {
            if let Some(&s) = by_block.get(&block) {
                let how = answers(&s.file);
                if how != Use::Not {
                    chosen.push((s, how));
                }
            }
        }
    }
    // `cover` returns blocks in day order; find a segment's by binary search.
    let holder = |s: &Segment| {
        let day = s.meta.single_day()?;
        let i = chosen.partition_point(|(c, _)| c.meta.days().1 <= day);
        let (c, _) = chosen.get(i)?;
        (c.meta.days().0 <= day && c.meta.covers(s.meta.id)).then_some(i)
    };
    let mut held: Vec<Vec<&Segment>> = vec![Vec::new(); chosen.len()];
    let mut rest = Vec::new();
    for s in segments
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.overlaps(w))
    {
        match holder(s) {
            Some(i) if chosen[i].1 == Use::WithSegments => held[i].push(s),
            Some(_) => continue,
            None => rest.push(s),
        }
        s.touch();
    }
    Plan {
        segments: rest,
        held,
        summaries: chosen
            .iter()
            .map(|(c, _)| c.file.as_ref())
            .inspect(|s| s.touch())
            .collect(),
    }
}

pub(crate) fn avg(
    plan: &Plan,
    device: &str,
    event_type: &str,
    w: TimeWindow,
) -> (u64, DoubleDouble) {
    let mut count = 0;
    let mut sum = DoubleDouble::ZERO;
    for s in &plan.summaries {
        let (c, x) = s.avg(device, event_type);
        count += c;
        sum = sum + x;
    }
    for s in &plan.segments {
        let (c, x) = s.avg(device, event_type, w);
        count += c;
        sum = sum + x;
    }
    (count, sum)
}

/// Devices cut by a query box's edge that a summary's geo answer reads one
/// by one from its segments; with more, it walks the segments' trees for
/// the whole box instead (a walk for one device costs a descent to its
/// extent, one for the box the whole edge).
pub(crate) const MAX_CUT: usize = 8;

pub(crate) fn geo(
    plan: &Plan,
    event_type: &str,
    bbox: &GeoBox,
    w: TimeWindow,
) -> (u64, DoubleDouble) {
    let mut acc = (0, DoubleDouble::ZERO);
    let mut add = |(c, x): (u64, DoubleDouble)| {
        acc.0 += c;
        acc.1 = acc.1 + x;
    };
    for (s, held) in plan.summaries.iter().zip(&plan.held) {
        match s.geo_part(event_type) {
            GeoPart::Points => add(s.geo(event_type, bbox)),
            GeoPart::Extents | GeoPart::Segments => {
                add(geo_by_extents(s, held, event_type, bbox, w))
            }
        }
    }
    for s in &plan.segments {
        add(s.geo(event_type, bbox, w));
    }
    acc
}

/// The geo answer of a summary that keeps the type's device extents, with
/// the segments it covers: the devices inside the box from the summary,
/// those its edge cuts from the segments (or, past [`MAX_CUT`] of them, the
/// whole box from the segments).
fn geo_by_extents(
    s: &Summary,
    held: &[&Segment],
    event_type: &str,
    bbox: &GeoBox,
    w: TimeWindow,
) -> (u64, DoubleDouble) {
    let mut cut = Vec::new();
    let (mut count, mut sum) = s.geo_extents(event_type, bbox, &mut cut);
    if s.geo_part(event_type) != GeoPart::Extents || cut.len() > MAX_CUT {
        (count, sum) = (0, DoubleDouble::ZERO);
        for seg in held {
            let (c, x) = seg.geo(event_type, bbox, w);
            count += c;
            sum = sum + x;
        }
        return (count, sum);
    }
    for c in &cut {
        for seg in held {
            let (n, x) = seg.geo_of_device(event_type, &c.device, c.within, w);
            count += n;
            sum = sum + x;
        }
    }
    (count, sum)
}

/// One input of the threshold algorithm.
enum List<'a> {
    /// Exact counts already known (the in-memory heads).
    Exact {
        sorted: Vec<(&'a str, u64)>,
        counts: &'a HashMap<String, u64>,
    },
    /// A head whose rows all lie in the window: its series of one type, by
    /// count descending, kept in that order as rows arrive.
    Head {
        head: &'a Head,
        t: u32,
        order: &'a ByCount,
    },
    /// A summary's series of one type, by count in its block descending.
    Summary {
        sum: &'a Summary,
        t: usize,
        order: IdList<'a>,
    },
    /// A segment's series of one type, by all-time count descending.
    Segment {
        seg: &'a Segment,
        t: usize,
        order: IdList<'a>,
        within: bool,
        w: TimeWindow,
    },
    /// A segment the window cuts, its rows in the window counted per series
    /// of one type: `counts[s - first]` for series `s`, and the series with a
    /// count by count descending (`order`, offsets from `first`).
    Counted {
        seg: &'a Segment,
        t: usize,
        first: usize,
        counts: Vec<u32>,
        order: Vec<u32>,
    },
}

impl<'a> List<'a> {
    /// The list of a segment the window cuts: counted from its rows in the
    /// window when they are at most half of the type's rows in it, else
    /// read by all-time count (also for a file without the time order).
    fn of_segment(seg: &'a Segment, t: usize, w: TimeWindow) -> List<'a> {
        let within = seg.within(w);
        let cut = (!within).then(|| seg.rows_in_window(t, w)).flatten();
        match cut {
            Some(rows) if rows.len() * 2 <= seg.type_rows(t).len() => {
                let series = seg.type_series(t);
                let mut counts = vec![0u32; series.len()];
                for s in rows.map(|i| seg.series_at(i)) {
                    if let Some(c) = counts.get_mut((s as usize).wrapping_sub(series.start)) {
                        *c += 1;
                    }
                }
                List::Counted {
                    seg,
                    t,
                    first: series.start,
                    order: by_count_descending(&counts),
                    counts,
                }
            }
            _ => List::Segment {
                seg,
                t,
                order: seg.topk_order(t),
                within,
                w,
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            List::Exact { sorted, .. } => sorted.len(),
            List::Head { order, .. } => order.devices.len(),
            List::Summary { order, .. } | List::Segment { order, .. } => order.len(),
            List::Counted { order, .. } => order.len(),
        }
    }

    /// Upper bound of the count of the entry at `pos` and of every later one.
    fn bound(&self, pos: usize) -> u64 {
        match self {
            List::Exact { sorted, .. } => sorted.get(pos).map_or(0, |e| e.1),
            List::Head { order, .. } => order.counts.get(pos).map_or(0, |&c| u64::from(c)),
            List::Summary { sum, order, .. } => {
                order.get(pos).map_or(0, |s| sum.series_count(s as usize))
            }
            List::Segment { seg, order, .. } => {
                order.get(pos).map_or(0, |s| seg.series_len(s as usize))
            }
            List::Counted { counts, order, .. } => {
                order.get(pos).map_or(0, |&i| u64::from(counts[i as usize]))
            }
        }
    }

    /// The device of the entry at `pos` (rebuilt for a file that
    /// front-codes its names).
    fn device(&self, pos: usize) -> Cow<'_, str> {
        match self {
            List::Exact { sorted, .. } => Cow::Borrowed(sorted[pos].0),
            List::Head { head, order, .. } => {
                Cow::Borrowed(head.rows.devices.name(order.devices[pos]))
            }
            List::Summary { sum, order, .. } => sum.series_device(order.at(pos) as usize),
            List::Segment { seg, order, .. } => seg.series_device(order.at(pos) as usize),
            List::Counted {
                seg, first, order, ..
            } => seg.series_device(first + order[pos] as usize),
        }
    }

    /// [`device`](Self::device), borrowed from `names` where they are the
    /// list's file's names decoded whole ([`List::decoded_names`]).
    fn device_in<'b>(&'b self, pos: usize, names: Option<&'b Decoded>) -> Cow<'b, str> {
        let Some(names) = names else {
            return self.device(pos);
        };
        let d = match self {
            List::Summary { sum, order, .. } => sum.series_device_index(order.at(pos) as usize),
            List::Segment { seg, order, .. } => seg.series_device_index(order.at(pos) as usize),
            List::Counted {
                seg, first, order, ..
            } => seg.series_device_index(first + order[pos] as usize),
            _ => return self.device(pos),
        };
        Cow::Borrowed(names.get(d))
    }

    /// The names of a list's file, decoded whole where it front-codes them
    /// and the list is long enough to read most of them: a name rebuilt
    /// alone decodes about half a block of names.
    fn decoded_names(&self) -> Option<Decoded> {
        let worth = |devices: usize| self.len() * (BLOCK_NAMES / 2) >= devices;
        match self {
            List::Summary { sum, .. } if worth(sum.device_count()) => sum.decoded_devices(),
            List::Segment { seg, .. } | List::Counted { seg, .. } if worth(seg.device_count()) => {
                seg.decoded_devices()
            }
            _ => None,
        }
    }

    /// Exact count in the window of the entry at `pos` (sequential access).
    fn exact_at(&self, pos: usize) -> u64 {
        match self {
            List::Exact { sorted, .. } => sorted[pos].1,
            List::Head { order, .. } => u64::from(order.counts[pos]),
            List::Summary { sum, order, .. } => sum.series_count(order.at(pos) as usize),
            List::Segment {
                seg,
                order,
                within,
                w,
                ..
            } => {
                let s = order.at(pos) as usize;
                if *within {
                    seg.series_len(s)
                } else {
                    seg.series_count(s, *w)
                }
            }
            List::Counted { counts, order, .. } => u64::from(counts[order[pos] as usize]),
        }
    }

    /// Exact count of `device` in the window (random access).
    fn exact(&self, device: &str) -> u64 {
        match self {
            List::Exact { counts, .. } => counts.get(device).copied().unwrap_or(0),
            List::Head { head, t, .. } => head.series_rows(*t, device),
            List::Summary { sum, t, .. } => sum
                .find_series(*t, device)
                .map_or(0, |s| sum.series_count(s)),
            List::Segment {
                seg, t, within, w, ..
            } => match seg.find_series(*t, device) {
                None => 0,
                Some(s) if *within => seg.series_len(s),
                Some(s) => seg.series_count(s, *w),
            },
            List::Counted {
                seg,
                t,
                first,
                counts,
                ..
            } => seg
                .find_series(*t, device)
                .and_then(|s| counts.get(s.checked_sub(*first)?))
                .map_or(0, |&c| u64::from(c)),
        }
    }

    fn is_counted(&self) -> bool {
        matches!(self, List::Counted { .. })
    }
}

/// The indices of the non-zero `counts`, by count descending and index
/// ascending: a counting sort, `O(n + largest count)`.
fn by_count_descending(counts: &[u32]) -> Vec<u32> {
    let largest = counts.iter().copied().max().unwrap_or(0) as usize;
    // First, how many entries have each count; then where each count's
    // entries start, the largest count first.
    let mut at = vec![0usize; largest + 1];
    for &c in counts {
        at[c as usize] += 1;
    }
    let mut next = 0;
    for c in (1..=largest).rev() {
        let n = at[c];
        at[c] = next;
        next += n;
    }
    let mut order = vec![0u32; next];
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 {
            order[at[c as usize]] = i as u32;
            at[c as usize] += 1;
        }
    }
    order
}

/// How a top-K answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopkRun {
    pub path: TopkPath,
    /// Segments the window cut that were counted from their rows in it.
    pub counted_segments: usize,
}

/// Which algorithm gave a top-K answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopkPath {
    /// The threshold algorithm stopped early.
    Threshold,
    /// Every list was added up (its bound did not fall: flat activity).
    Merged,
}

/// Top-K over the heads the window holds whole (read in count order), the
/// exact counts of the heads it cuts, and the files; ordered by count
/// descending, then device ascending.
pub(crate) fn topk<'a>(
    whole_heads: &[&'a Head],
    head_counts: &'a HashMap<String, u64>,
    plan: &Plan<'a>,
    event_type: &str,
    w: TimeWindow,
    k: usize,
) -> (Vec<DeviceCount>, TopkRun) {
    let mut lists: Vec<List> = Vec::new();
    if !head_counts.is_empty() {
        let mut sorted: Vec<(&str, u64)> =
            head_counts.iter().map(|(d, c)| (d.as_str(), *c)).collect();
        sorted.sort_unstable_by_key(|e| Reverse(e.1));
        lists.push(List::Exact {
            sorted,
            counts: head_counts,
        });
    }
    for &head in whole_heads {
        if let Some(t) = head.type_id(event_type) {
            lists.push(List::Head {
                head,
                t,
                order: head.by_count(t),
            });
        }
    }
    for &sum in &plan.summaries {
        if let Some(t) = sum.find_type(event_type) {
            lists.push(List::Summary {
                sum,
                t,
                order: sum.topk_order(t),
            });
        }
    }
    for &seg in &plan.segments {
        if let Some(t) = seg.find_type(event_type) {
            lists.push(List::of_segment(seg, t, w));
        }
    }

    let counted_segments = lists.iter().filter(|l| l.is_counted()).count();
    let (devices, path) = rank(&lists, k);
    (
        devices,
        TopkRun {
            path,
            counted_segments,
        },
    )
}

/// The K devices with the most entries over `lists`, by the threshold
/// algorithm while it pays, else by adding every list up.
fn rank(lists: &[List<'_>], k: usize) -> (Vec<DeviceCount>, TopkPath) {
    match by_threshold(lists, k) {
        Some(best) => (best.into_sorted(), TopkPath::Threshold),
        None => (by_merging(lists, k), TopkPath::Merged),
    }
}

/// The best K so far: a min-heap by (count, device descending), whose top
/// is the K-th best.
struct Best<'a> {
    k: usize,
    heap: BinaryHeap<Reverse<(u64, Reverse<Cow<'a, str>>)>>,
}

impl<'a> Best<'a> {
    fn new(k: usize) -> Self {
        Best {
            k,
            heap: BinaryHeap::new(),
        }
    }

    /// The K-th best count, once K devices are known.
    fn kth(&self) -> Option<u64> {
        (self.heap.len() == self.k)
            .then(|| self.heap.peek().map(|Reverse((c, _))| *c))
            .flatten()
    }

    fn offer(&mut self, device: Cow<'a, str>, count: u64) {
        if count == 0 {
            return;
        }
        let entry = Reverse((count, Reverse(device)));
        if self.heap.len() < self.k {
            self.heap.push(entry);
        } else if self.heap.peek().is_some_and(|worst| entry < *worst) {
            self.heap.pop();
            self.heap.push(entry);
        }
    }

    /// Count descending, then device ascending.
    fn into_sorted(self) -> Vec<DeviceCount> {
        let out: Vec<DeviceCount> = self
            .heap
            .into_iter()
            .map(|Reverse((count, Reverse(d)))| DeviceCount {
                device_id: d.into_owned(),
                count,
            })
            .collect();
        desa_model::rank_devices(out, self.k)
    }
}

/// What one random access (a device looked up by name in one list) costs,
/// in list entries added up by [`by_merging`]: at 10M events on the slower
/// host (a timer around `rank` under `desa bench --in-process`, not kept),
/// a random access took 0.4–1.3 µs and adding up an entry 0.15–0.23 µs.
const RANDOM_ACCESS_ENTRIES: usize = 4;

/// Fagin's threshold algorithm over `lists`; `None` once its random
/// accesses, at [`RANDOM_ACCESS_ENTRIES`] each, outweigh the entries of all
/// lists, when adding the lists up ([`by_merging`]) costs less than going
/// on.
fn by_threshold<'b>(lists: &'b [List<'_>], k: usize) -> Option<Best<'b>> {
    let entries: usize = lists.iter().map(List::len).sum();
    let mut random_accesses = 0usize;
    let mut cursor = vec![0usize; lists.len()];
    // The bound under each cursor (0 past a list's end) and their sum; a
    // step moves one cursor, so only its bound is read again.
    let mut bound: Vec<u64> = lists.iter().map(|l| l.bound(0)).collect();
    let mut threshold: u64 = bound.iter().sum();
    let mut seen: HashSet<Cow<str>, _> =
        HashSet::with_hasher(foldhash::fast::RandomState::default());
    let mut best = Best::new(k);
    loop {
        // An unseen device counts at most `threshold`; ties on count are
        // broken by device id, so an equal count could still enter.
        if best.kth().is_some_and(|c| c > threshold) {
            return Some(best);
        }
        // The list with the largest bound (the first of equals) reads on.
        let next = (0..lists.len())
            .filter(|&i| cursor[i] < lists[i].len())
            .max_by_key(|&i| (bound[i], Reverse(i)));
        let Some(i) = next else {
            return Some(best);
        };
        let pos = cursor[i];
        let device = lists[i].device(pos);
        cursor[i] += 1;
        let b = lists[i].bound(cursor[i]);
        threshold = threshold - bound[i] + b;
        bound[i] = b;
        if seen.contains(&*device) {
            continue;
        }
        seen.insert(device.clone());
        random_accesses += lists.len();
        if random_accesses * RANDOM_ACCESS_ENTRIES > entries {
            return None;
        }
        // Its count in list `i` is at hand; the others are looked up.
        let count = lists
            .iter()
            .enumerate()
            .map(|(j, l)| {
                if j == i {
                    l.exact_at(pos)
                } else {
                    l.exact(&device)
                }
            })
            .sum();
        best.offer(device, count);
    }
}

/// Every entry of every list added into one count per device: the cost is
/// one hash update per entry, whatever the counts look like.
fn by_merging(lists: &[List<'_>], k: usize) -> Vec<DeviceCount> {
    let hasher = foldhash::fast::RandomState::default();
    let longest = lists.iter().map(List::len).max().unwrap_or(0);
    // Front-coded names decoded once per long list, not once per entry.
    let names: Vec<Option<Decoded>> = lists.iter().map(List::decoded_names).collect();
    let mut totals: HashMap<Cow<str>, u64, _> = HashMap::with_capacity_and_hasher(longest, hasher);
    for (list, names) in lists.iter().zip(&names) {
        for pos in 0..list.len() {
            let c = list.exact_at(pos);
            if c > 0 {
                let device = list.device_in(pos, names.as_ref());
                match totals.get_mut(&*device) {
                    Some(total) => *total += c,
                    None => {
                        totals.insert(device, c);
                    }
                }
            }
        }
    }
    let mut best = Best::new(k);
    for (device, count) in totals {
        best.offer(device, count);
    }
    best.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Lists of exact counts, as the heads a window cuts give them.
    fn lists(maps: &[HashMap<String, u64>]) -> Vec<List<'_>> {
        maps.iter()
            .map(|counts| {
                let mut sorted: Vec<(&str, u64)> =
                    counts.iter().map(|(d, c)| (d.as_str(), *c)).collect();
                sorted.sort_unstable_by_key(|e| Reverse(e.1));
                List::Exact { sorted, counts }
            })
            .collect()
    }

    fn brute_force(maps: &[HashMap<String, u64>], k: usize) -> Vec<DeviceCount> {
        let mut totals: HashMap<&str, u64> = HashMap::new();
        for (d, c) in maps.iter().flatten() {
            *totals.entry(d).or_default() += c;
        }
        let all: Vec<DeviceCount> = totals
            .into_iter()
            .map(|(d, count)| DeviceCount {
                device_id: d.to_owned(),
                count,
            })
            .collect();
        desa_model::rank_devices(all, k)
    }

    /// 20 lists over 2,000 devices: skewed counts (device `d` about
    /// 10,000 / (d + 1), plus noise) let the threshold algorithm stop; flat
    /// ones (1 or 2 for a random half of the devices, many ties) do not,
    /// and the lists are added up. Every answer is the brute-force one.
    #[test]
    fn skewed_lists_stop_early_and_flat_lists_are_added_up() {
        let mut rng = StdRng::seed_from_u64(5);
        for (skewed, path) in [(true, TopkPath::Threshold), (false, TopkPath::Merged)] {
            let maps: Vec<HashMap<String, u64>> = (0..20)
                .map(|_| {
                    (0..2_000u64)
                        .filter_map(|d| {
                            let c = if skewed {
                                10_000 / (d + 1) + rng.gen_range(0..3)
                            } else if rng.gen_bool(0.5) {
                                rng.gen_range(1..=2)
                            } else {
                                0
                            };
                            (c > 0).then(|| (format!("d{d}"), c))
                        })
                        .collect()
                })
                .collect();
            for k in [1, 10, 100, 5_000] {
                let (got, took) = rank(&lists(&maps), k);
                // K beyond the devices: no early stop whatever the counts.
                if k <= 100 {
                    assert_eq!(took, path, "skewed={skewed} k={k}");
                }
                assert_eq!(got, brute_force(&maps, k), "skewed={skewed} k={k}");
            }
        }
    }

    #[test]
    fn counting_sort_orders_by_count_then_index() {
        let mut rng = StdRng::seed_from_u64(3);
        let counts: Vec<u32> = (0..5_000)
            .map(|_| {
                if rng.gen_bool(0.3) {
                    0
                } else {
                    rng.gen_range(1..40)
                }
            })
            .collect();
        let mut want: Vec<u32> = (0..counts.len() as u32)
            .filter(|&i| counts[i as usize] > 0)
            .collect();
        want.sort_by_key(|&i| (Reverse(counts[i as usize]), i));
        assert_eq!(by_count_descending(&counts), want);
        assert!(by_count_descending(&[0, 0]).is_empty());
        assert!(by_count_descending(&[]).is_empty());
    }

    /// One UTC day of skewed activity of two types in one segment, written
    /// in the current format and again as version 1 (no time order). A
    /// window cutting it to at most half of a type's rows is counted from
    /// its rows in the current format and read by all-time count in version
    /// 1; every answer matches brute force.
    #[test]
    fn a_cut_segment_is_counted_from_its_rows_in_the_window() {
        use crate::head::{NewRow, Rows};
        use crate::segment::write_segment;

        const DAY: i64 = 86_400;
        let day = 20_454;
        let mut rng = StdRng::seed_from_u64(9);
        let mut rows = Rows::default();
        let mut events: Vec<(&str, String, i64)> = Vec::new();
        for _ in 0..30_000 {
            let d = if rng.gen_bool(0.5) {
                rng.gen_range(0..3_000)
            } else {
                (1_000.0 / rng.gen_range(1.0..1_000.0)) as u64
            };
            let ty = ["humidity", "temperature"][rng.gen_range(0..2)];
            let ts = day * DAY + rng.gen_range(0..DAY);
            events.push((ty, format!("d{d}"), ts));
        }
        for (ty, device, ts) in &events {
            rows.push(NewRow {
                event_type: ty,
                device,
                ts: *ts,
                value: 1.0,
                lat: 0.0,
                lon: 0.0,
                meta: None,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let (v2, v1) = (dir.path().join("2.seg"), dir.path().join("1.seg"));
        let all: Vec<u32> = (0..rows.len() as u32).collect();
        write_segment(&rows, &all, day, 2, &v2).unwrap();
        let v2 = Segment::open(&v2, 2).unwrap();
        v2.write_as_v1(&v1);
        let v1 = Segment::open(&v1, 1).unwrap();

        let no_counts = HashMap::new();
        let mut counted = [0, 0];
        for _ in 0..300 {
            let start = day * DAY + rng.gen_range(-3_600..DAY);
            let len = [1, 60, 3_600, 4 * 3_600, 16 * 3_600, 2 * DAY][rng.gen_range(0..6)];
            let w = TimeWindow::new(start, start + len).unwrap();
            let ty = ["humidity", "temperature", "pressure"][rng.gen_range(0..3)];
            let k = [1, 10, 100][rng.gen_range(0..3)];
            let mut totals: HashMap<&str, u64> = HashMap::new();
            for (_, d, _) in events.iter().filter(|e| e.0 == ty && w.contains(e.2)) {
                *totals.entry(d.as_str()).or_default() += 1;
            }
            let want = desa_model::rank_devices(
                totals
                    .into_iter()
                    .map(|(d, count)| DeviceCount {
                        device_id: d.to_owned(),
                        count,
                    })
                    .collect(),
                k,
            );
            for (i, seg) in [&v2, &v1].into_iter().enumerate() {
                let plan = Plan {
                    summaries: Vec::new(),
                    held: Vec::new(),
                    segments: vec![seg],
                };
                let (got, run) = topk(&[], &no_counts, &plan, ty, w, k);
                assert_eq!(got, want, "format {} {ty} {w:?} k={k}", 2 - i);
                counted[i] += run.counted_segments;
            }
        }
        assert!(counted[0] > 0, "no window was counted from the time order");
        assert_eq!(counted[1], 0, "a version 1 file has no time order");
    }
}
