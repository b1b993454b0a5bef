//! The three queries as bounded lookups (see `plan`): every statement reads
//! aggregate rows of at most the whole days, whole hours and 1° cells of the
//! request, or raw events of less than two hours; the sums are added here in
//! double-double, so answers are exact like the embedded engine's.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use desa_model::{DeviceCount, DoubleDouble, GeoBox, TimeWindow};
use postgres::Client;

use crate::error::Result;
use crate::plan::{box_cells, window_plan, Buckets, WindowPlan};
use postgres::types::ToSql;

const AVG_SQL: &str = "
SELECT n, sum_hi, sum_lo FROM desa_series
 WHERE type = $1 AND device_id = $2 AND res = $3 AND bucket >= $4 AND bucket < $5
UNION ALL
SELECT n, sum_hi, sum_lo FROM desa_series
 WHERE type = $1 AND device_id = $2 AND res = $6 AND bucket >= $7 AND bucket < $8
UNION ALL
SELECT n, sum_hi, sum_lo FROM desa_series
 WHERE type = $1 AND device_id = $2 AND res = $9 AND bucket >= $10 AND bucket < $11
UNION ALL
SELECT 1::int8, value, 0::float8 FROM desa_events
 WHERE type = $1 AND device_id = $2
   AND ((ts >= $12 AND ts < $13) OR (ts >= $14 AND ts < $15))";

fn add_rows(rows: &[postgres::Row]) -> (u64, DoubleDouble) {
    let mut n = 0u64;
    let mut sum = DoubleDouble::ZERO;
    for r in rows {
        n += r.get::<_, i64>(0) as u64;
        sum = sum + DoubleDouble::new(r.get(1), r.get(2));
    }
    (n, sum)
}

pub(crate) fn avg(
    c: &mut Client,
    device: &str,
    event_type: &str,
    w: TimeWindow,
) -> Result<(u64, DoubleDouble)> {
    let p = window_plan(w);
    let slots = p.bucket_slots();
    let (r0, r1) = (p.raw_slot(0), p.raw_slot(1));
    let mut params = with_buckets(vec![&event_type, &device], &slots);
    params.extend([&r0.0 as &(dyn ToSql + Sync), &r0.1, &r1.0, &r1.1]);
    let rows = c.query(AVG_SQL, &params)?;
    Ok(add_rows(&rows))
}

pub(crate) fn geo(
    c: &mut Client,
    event_type: &str,
    bbox: &GeoBox,
    w: TimeWindow,
) -> Result<(u64, DoubleDouble)> {
    let p = window_plan(w);
    let mut n = 0u64;
    let mut sum = DoubleDouble::ZERO;
    let mut add = |rows: Vec<postgres::Row>| {
        let (cn, cs) = add_rows(&rows);
        n += cn;
        sum = sum + cs;
    };
    for part in box_cells(bbox) {
        for b in &p.buckets {
            if let Some((la0, la1, lo0, lo1)) = part.inside {
                add(c.query(
                    "SELECT n, sum_hi, sum_lo FROM desa_cells
                      WHERE type = $1 AND res = $2 AND bucket >= $3 AND bucket < $4
                        AND cell_lat BETWEEN $5 AND $6 AND cell_lon BETWEEN $7 AND $8",
                    &[&event_type, &b.res, &b.lo, &b.hi, &la0, &la1, &lo0, &lo1],
                )?);
            }
            if !part.edge.is_empty() {
                add(c.query(
                    "SELECT n, sum_hi, sum_lo FROM desa_places
                      WHERE type = $1 AND res = $2 AND cell = ANY($3) AND bucket >= $4 AND bucket < $5
                        AND lat BETWEEN $6 AND $7 AND lon BETWEEN $8 AND $9",
                    &[
                        &event_type,
                        &b.res,
                        &part.edge,
                        &b.lo,
                        &b.hi,
                        &part.min_lat,
                        &part.max_lat,
                        &part.min_lon,
                        &part.max_lon,
                    ],
                )?);
            }
        }
        for (a, b) in &p.raw {
            add(c.query(
                "SELECT 1::int8, value, 0::float8 FROM desa_events
                  WHERE type = $1 AND ts >= $2 AND ts < $3
                    AND lat BETWEEN $4 AND $5 AND lon BETWEEN $6 AND $7",
                &[
                    &event_type,
                    a,
                    b,
                    &part.min_lat,
                    &part.max_lat,
                    &part.min_lon,
                    &part.max_lon,
                ],
            )?);
        }
    }
    Ok((n, sum))
}

/// One sorted-access list of the threshold algorithm: the devices of one
/// bucket by count descending.
struct List {
    res: i16,
    bucket: i32,
    fetched: usize,
    exhausted: bool,
    /// Count of the last entry read: no unread entry counts more.
    last: u64,
}

/// Top-K by Fagin's threshold algorithm over the buckets of the window
/// (sorted access: `desa_series_by_count`; random access: the primary key),
/// plus the exact counts of the raw edges. Stops once the K-th best exact
/// count exceeds the sum of the lists' last counts read.
pub(crate) fn topk(
    c: &mut Client,
    event_type: &str,
    w: TimeWindow,
    k: usize,
) -> Result<Vec<DeviceCount>> {
    let p = window_plan(w);
    let raw = raw_counts(c, event_type, &p)?;
    let mut lists: Vec<List> = Vec::new();
    for b in &p.buckets {
        // Only buckets that hold events of the type are lists (a window of
        // years over a month of data has a month of lists).
        for r in c.query(
            "SELECT DISTINCT bucket FROM desa_cells
              WHERE type = $1 AND res = $2 AND bucket >= $3 AND bucket < $4 ORDER BY bucket",
            &[&event_type, &b.res, &b.lo, &b.hi],
        )? {
            lists.push(List {
                res: b.res,
                bucket: r.get(0),
                fetched: 0,
                exhausted: false,
                last: u64::MAX,
            });
        }
    }

    let mut exact: HashMap<String, u64> = HashMap::new();
    // Devices seen in sorted access but not counted exactly yet, with the
    // sum of the counts seen and the lists they were seen in.
    let mut partial: HashMap<String, (u64, HashSet<usize>)> = HashMap::new();
    // Devices of the raw edges are candidates from the start.
    for d in raw.keys() {
        partial.entry(d.clone()).or_default();
    }
    // Devices whose upper bound fell below the K-th best exact count; the
    // K-th best only grows, so they never enter.
    let mut ruled_out: HashSet<String> = HashSet::new();
    let mut chunk = (k + 16).max(64) as i64;
    loop {
        let open: Vec<usize> = (0..lists.len()).filter(|&i| !lists[i].exhausted).collect();
        if !open.is_empty() {
            let res: Vec<i16> = open.iter().map(|&i| lists[i].res).collect();
            let buckets: Vec<i32> = open.iter().map(|&i| lists[i].bucket).collect();
            let offsets: Vec<i64> = open.iter().map(|&i| lists[i].fetched as i64).collect();
            let rows = c.query(
                "SELECT l.i, s.device_id, s.n
                   FROM unnest($2::int2[], $3::int4[], $4::int8[]) WITH ORDINALITY AS l(res, bucket, off, i)
                   CROSS JOIN LATERAL (
                        SELECT device_id, n FROM desa_series
                         WHERE type = $1 AND res = l.res AND bucket = l.bucket
                         ORDER BY n DESC, device_id LIMIT $5 OFFSET l.off) s",
                &[&event_type, &res, &buckets, &offsets, &chunk],
            )?;
            let mut got = vec![0usize; open.len()];
            for r in &rows {
                let j = (r.get::<_, i64>(0) - 1) as usize;
                let i = open[j];
                let device: String = r.get(1);
                let n = r.get::<_, i64>(2) as u64;
                got[j] += 1;
                lists[i].last = lists[i].last.min(n);
                if !exact.contains_key(&device) && !ruled_out.contains(&device) {
                    let e = partial.entry(device).or_default();
                    if e.1.insert(i) {
                        e.0 += n;
                    }
                }
            }
            for (j, &i) in open.iter().enumerate() {
                lists[i].fetched += got[j];
                if (got[j] as i64) < chunk {
                    lists[i].exhausted = true;
                    lists[i].last = 0;
                }
            }
        }
        let threshold: u64 = lists.iter().filter(|l| !l.exhausted).map(|l| l.last).sum();

        // Exact counts for candidates whose upper bound can still reach the
        // best K, best bounds first.
        let mut cands: Vec<(u64, String)> = partial
            .iter()
            .map(|(d, (seen, lists_seen))| {
                let unseen: u64 = lists
                    .iter()
                    .enumerate()
                    .filter(|(i, l)| !l.exhausted && !lists_seen.contains(i))
                    .map(|(_, l)| l.last)
                    .sum();
                (seen + unseen + raw.get(d).copied().unwrap_or(0), d.clone())
            })
            .collect();
        cands.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        // The first K settle the K-th best; after that, bounds (sorted) cut
        // the rest short, so few of the candidates are counted exactly.
        let mut at = 0;
        while at < cands.len() {
            let kth = kth_best(&exact, k);
            let size = if kth.is_none() {
                k.saturating_sub(exact.len()).max(1)
            } else {
                64
            };
            let todo: Vec<&String> = cands[at..(at + size).min(cands.len())]
                .iter()
                .take_while(|(upper, _)| kth.is_none_or(|kth| *upper >= kth))
                .map(|(_, d)| d)
                .collect();
            if todo.is_empty() {
                break;
            }
            at += todo.len();
            for (d, n) in exact_counts(c, event_type, &p, &todo)? {
                let edges = raw.get(&d).copied().unwrap_or(0);
                exact.insert(d, n + edges);
            }
            for d in &todo {
                exact
                    .entry((*d).clone())
                    .or_insert_with(|| raw.get(*d).copied().unwrap_or(0));
                partial.remove(*d);
            }
        }
        // Candidates left are below the K-th best: they cannot enter.
        if kth_best(&exact, k).is_some() {
            ruled_out.extend(partial.drain().map(|(d, _)| d));
        }
        let kth = kth_best(&exact, k);
        let all_read = lists.iter().all(|l| l.exhausted);
        if all_read || kth.is_some_and(|kth| kth > threshold) {
            break;
        }
        chunk = (chunk * 2).min(65_536);
    }
    let devices: Vec<DeviceCount> = exact
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(device_id, count)| DeviceCount { device_id, count })
        .collect();
    Ok(desa_model::rank_devices(devices, k))
}

/// The K-th largest exact count, once there are K.
fn kth_best(exact: &HashMap<String, u64>, k: usize) -> Option<u64> {
    if exact.len() < k {
        return None;
    }
    let mut counts: Vec<Reverse<u64>> = exact.values().map(|&n| Reverse(n)).collect();
    let (_, kth, _) = counts.select_nth_unstable(k - 1);
    Some(kth.0)
}

/// `head` followed by the (res, lo, hi) of the plan's three bucket ranges,
/// the `$3` to `$11` of the statements that read them.
fn with_buckets<'a>(
    mut head: Vec<&'a (dyn ToSql + Sync)>,
    slots: &'a [Buckets; 3],
) -> Vec<&'a (dyn ToSql + Sync)> {
    for b in slots {
        head.extend([&b.res as &(dyn ToSql + Sync), &b.lo, &b.hi]);
    }
    head
}

/// Counts in the bucket ranges of the window (random access).
fn exact_counts(
    c: &mut Client,
    event_type: &str,
    p: &WindowPlan,
    devices: &[&String],
) -> Result<Vec<(String, u64)>> {
    let slots = p.bucket_slots();
    let rows = c.query(
        "SELECT device_id, sum(n)::int8 FROM desa_series
          WHERE type = $1 AND device_id = ANY($2)
            AND ((res = $3 AND bucket >= $4 AND bucket < $5)
              OR (res = $6 AND bucket >= $7 AND bucket < $8)
              OR (res = $9 AND bucket >= $10 AND bucket < $11))
          GROUP BY device_id",
        &with_buckets(vec![&event_type, &devices], &slots),
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect())
}

/// Exact per-device counts of the raw edges (less than two hours).
fn raw_counts(c: &mut Client, event_type: &str, p: &WindowPlan) -> Result<HashMap<String, u64>> {
    let (r0, r1) = (p.raw_slot(0), p.raw_slot(1));
    if p.raw.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = c.query(
        "SELECT device_id, count(*)::int8 FROM desa_events
          WHERE type = $1 AND ((ts >= $2 AND ts < $3) OR (ts >= $4 AND ts < $5))
          GROUP BY device_id",
        &[&event_type, &r0.0, &r0.1, &r1.0, &r1.1],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect())
}
