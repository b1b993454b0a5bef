//! A file's device dictionary, shared by segments (format 4) and summaries
//! (format 3): the file's distinct devices, sorted and stored once, and
//! per series the index of its device in them.
//!
//! A device reports several types, and a file holds one series per (type,
//! device): keeping the name with each series stored it once per type, with
//! a 4-byte offset each time. The dictionary stores each name once, and a
//! series holds a packed index (about as many bits as the file has devices
//! in binary), ascending within a type so that a lookup is a binary search.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fences::DeviceFences;
use crate::packed::Packed;
use crate::sections::SectionFile;

/// The dictionary sections of one file, built from its series' devices.
pub(crate) struct Dictionary {
    /// The distinct names, sorted, one after the other.
    pub blob: Vec<u8>,
    /// `devices + 1` offsets into `blob` (a packed column).
    pub ends: Vec<i64>,
    /// Per series, the index of its device.
    pub index: Vec<i64>,
}

impl Dictionary {
    /// The dictionary of `names`, the device of each series in series order.
    pub fn of(names: &[&str]) -> Dictionary {
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut blob = Vec::new();
        let mut ends = Vec::with_capacity(sorted.len() + 1);
        ends.push(0);
        for n in &sorted {
            blob.extend_from_slice(n.as_bytes());
            ends.push(blob.len() as i64);
        }
        let index = names
            .iter()
            .map(|n| sorted.binary_search(n).unwrap_or_else(|at| at) as i64)
            .collect();
        Dictionary { blob, ends, index }
    }

    /// Distinct devices.
    pub fn len(&self) -> usize {
        self.ends.len() - 1
    }

    /// The names front-coded ([`FrontCoded`]): the blob, and the offset of
    /// each block in it (`blocks + 1` of them, for a packed column).
    pub fn front_coded(&self) -> (Vec<u8>, Vec<i64>) {
        let mut blob = Vec::new();
        let mut starts = Vec::with_capacity(self.len().div_ceil(BLOCK_NAMES) + 1);
        let mut last: &[u8] = &[];
        for d in 0..self.len() {
            let name = &self.blob[self.ends[d] as usize..self.ends[d + 1] as usize];
            let shared = if d % BLOCK_NAMES == 0 {
                starts.push(blob.len() as i64);
                0
            } else {
                shared_prefix(last, name)
            };
            if d % BLOCK_NAMES != 0 {
                push_varint(&mut blob, shared);
            }
            push_varint(&mut blob, name.len() - shared);
            blob.extend_from_slice(&name[shared..]);
            last = name;
        }
        starts.push(blob.len() as i64);
        (blob, starts)
    }
}

/// A dictionary's names decoded whole ([`FrontCoded::decode`]).
pub(crate) struct Decoded {
    text: String,
    ends: Vec<usize>,
}

impl Decoded {
    /// Name `d`; empty past the end.
    pub fn get(&self, d: usize) -> &str {
        let start = d
            .checked_sub(1)
            .map_or(0, |p| self.ends.get(p).copied().unwrap_or(0));
        let end = self.ends.get(d).copied().unwrap_or(start);
        self.text.get(start..end).unwrap_or("")
    }
}

/// Checks, when a file is opened, the block starts of its front-coded
/// names (sections `blob` and `starts`, `names` of them): what a read
/// needs to stay in bounds. The names themselves are read and checked
/// ([`FrontCoded::check`]) by compaction and `desa fsck`, as the other
/// per-series indexes are, so that opening a file does not decode every
/// name in it; a read of a malformed block finds no name, never another
/// file's bytes.
pub(crate) fn check_name_blocks(
    file: &SectionFile,
    path: &Path,
    starts: usize,
    names: usize,
) -> Result<()> {
    let blocks = FrontCoded::blocks(names);
    match Packed::new(file.bytes(starts), blocks + 1, false) {
        Some(_) => Ok(()),
        None => {
            let at = file.sections[starts].0 as u64;
            Err(Error::corrupt(
                path,
                at,
                "name block offsets are malformed".to_owned(),
            ))
        }
    }
}

/// [`FrontCoded::check`] as an error naming the file.
pub(crate) fn verify_names(names: FrontCoded<'_>, path: &Path, at: u64) -> Result<()> {
    match names.check() {
        Some(reason) => Err(Error::corrupt(path, at, reason.to_owned())),
        None => Ok(()),
    }
}

/// Names per front-coded block: the first is stored whole, so that a lookup
/// binary-searches the blocks' first names and decodes at most one block.
pub(crate) const BLOCK_NAMES: usize = 16;

/// The bytes `b` shares with `a` at its start, cut back to a character
/// boundary of both (so that every stored suffix is UTF-8 on its own).
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    // A UTF-8 continuation byte is 0b10xx_xxxx: back up to a lead byte.
    while n > 0 && b.get(n).is_some_and(|&c| c & 0xC0 == 0x80) {
        n -= 1;
    }
    n
}

fn push_varint(out: &mut Vec<u8>, mut x: usize) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// The varint at `bytes[*at..]`, moving `at` past it; `None` past the end
/// or beyond 32 bits.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut x = 0usize;
    for shift in (0..32).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        x |= usize::from(b & 0x7F) << shift;
        if b < 0x80 {
            return Some(x);
        }
    }
    None
}

/// A front-coded dictionary of sorted names (summaries from format 5).
///
/// Device names share long prefixes ("dev-0001234", a vendor's serial
/// numbers), so each name but the first of a block of [`BLOCK_NAMES`] is
/// stored as the length it shares with the name before, the length of the
/// rest, and the rest: at 10M events of 100k devices, a third of the bytes
/// of the names stored whole. A name is then rebuilt, not borrowed.
#[derive(Clone, Copy)]
pub(crate) struct FrontCoded<'a> {
    blob: &'a [u8],
    starts: Packed<'a>,
    names: usize,
}

impl<'a> FrontCoded<'a> {
    /// Over `blob` and its `starts` ([`Dictionary::front_coded`]), which
    /// [`check`](Self::check) has accepted.
    pub fn new(blob: &'a [u8], starts: Packed<'a>, names: usize) -> Self {
        FrontCoded {
            blob,
            starts,
            names,
        }
    }

    /// Over a file's sections: the blob and the packed block starts, which
    /// [`check_name_blocks`] has accepted.
    pub fn over(blob: &'a [u8], starts: &'a [u8], names: usize) -> Self {
        let starts = Packed::unchecked(starts, Self::blocks(names) + 1);
        Self::new(blob, starts, names)
    }

    pub fn blocks(names: usize) -> usize {
        names.div_ceil(BLOCK_NAMES)
    }

    /// Why the dictionary cannot be read, if it cannot: every block must
    /// lie in the blob and hold its names exactly, each name UTF-8 and
    /// after the one before (byte order, which is `str` order). Reads every
    /// byte once.
    pub fn check(&self) -> Option<&'static str> {
        let mut read_to = 0usize;
        let mut last: Option<Vec<u8>> = None;
        for b in 0..Self::blocks(self.names) {
            let (Some(start), Some(end)) = (self.start(b), self.start(b + 1)) else {
                return Some("name blocks out of bounds");
            };
            if start != read_to || end < start || end > self.blob.len() {
                return Some("name blocks out of order or out of bounds");
            }
            let mut ascending = true;
            let n = BLOCK_NAMES.min(self.names - b * BLOCK_NAMES);
            let read = self.walk(b, n, |_, name| {
                ascending &=
                    std::str::from_utf8(name).is_ok() && last.as_deref().is_none_or(|l| l < name);
                let l = last.get_or_insert_with(Vec::new);
                l.clear();
                l.extend_from_slice(name);
                true
            });
            if read != Some(end - start) || !ascending {
                return Some("a name block is malformed or out of order");
            }
            read_to = end;
        }
        (read_to != self.blob.len()).then_some("bytes after the last name block")
    }

    fn start(&self, b: usize) -> Option<usize> {
        usize::try_from(self.starts.int(b)).ok()
    }

    /// Decodes the first `n` names of block `b`, calling `f(i, name)` for
    /// each until it returns false; the bytes read, or `None` if the block
    /// is malformed. Names are bytes here: [`check`](Self::check) has
    /// found each one UTF-8.
    fn walk(&self, b: usize, n: usize, f: impl FnMut(usize, &[u8]) -> bool) -> Option<usize> {
        self.walk_in(b, n, &mut Vec::with_capacity(64), f)
    }

    /// [`walk`](Self::walk) with the caller's buffer, which holds the last
    /// name decoded when it returns.
    fn walk_in(
        &self,
        b: usize,
        n: usize,
        name: &mut Vec<u8>,
        mut f: impl FnMut(usize, &[u8]) -> bool,
    ) -> Option<usize> {
        let start = self.start(b)?;
        let bytes = self.blob.get(start..)?;
        let mut at = 0;
        name.clear();
        for i in 0..n {
            let shared = if i == 0 {
                0
            } else {
                read_varint(bytes, &mut at)?
            };
            let len = read_varint(bytes, &mut at)?;
            let rest = bytes.get(at..at.checked_add(len)?)?;
            at += len;
            if shared > name.len() {
                return None;
            }
            name.truncate(shared);
            name.extend_from_slice(rest);
            if !f(i, name) {
                break;
            }
        }
        Some(at)
    }

    /// Name `d` (`d < names`).
    pub fn name(&self, d: usize) -> String {
        let mut name = Vec::with_capacity(64);
        let (b, i) = (d / BLOCK_NAMES, d % BLOCK_NAMES);
        match self.walk_in(b, i + 1, &mut name, |_, _| true) {
            // Checked when the file was opened: never empty but for damage.
            Some(_) => String::from_utf8(name).unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Every name, decoded once: for a pass that reads them all (a build,
    /// a top-K that adds a whole list up).
    pub fn decode(&self) -> Decoded {
        let mut text = Vec::new();
        let mut ends = Vec::with_capacity(self.names);
        for b in 0..Self::blocks(self.names) {
            let n = BLOCK_NAMES.min(self.names - b * BLOCK_NAMES);
            self.walk(b, n, |_, name| {
                text.extend_from_slice(name);
                ends.push(text.len());
                true
            });
        }
        // Checked when the file was opened: never empty but for damage.
        let text = String::from_utf8(text).unwrap_or_default();
        Decoded { text, ends }
    }

    /// The first name of block `b`, stored whole.
    fn first(&self, b: usize) -> &'a [u8] {
        let Some(bytes) = self.start(b).and_then(|s| self.blob.get(s..)) else {
            return &[];
        };
        let mut at = 0;
        read_varint(bytes, &mut at)
            .and_then(|len| bytes.get(at..at.checked_add(len)?))
            .unwrap_or(&[])
    }

    /// The index of `device`, if the dictionary holds it: `fences` narrow
    /// it to [`FENCE_BLOCKS`] blocks, a binary search of their first names
    /// to one, which is decoded.
    pub fn find(&self, fences: &BlockFences, device: &str) -> Option<usize> {
        let key = device.as_bytes();
        let k = fences.last_at_most(key)?;
        let blocks = Self::blocks(self.names);
        let (mut lo, mut hi) = (k * FENCE_BLOCKS, ((k + 1) * FENCE_BLOCKS).min(blocks));
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.first(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let b = lo.checked_sub(1)?;
        let n = BLOCK_NAMES.min(self.names - b * BLOCK_NAMES);
        self.find_in_block(b, n, key).map(|i| b * BLOCK_NAMES + i)
    }

    /// The position of `key` among the `n` names of block `b`, without
    /// rebuilding them: `m` is the length of the prefix the name before
    /// shares with `key`, and that name sorts before `key`. A name that
    /// keeps more than `m` bytes of it sorts before `key` too; any other is
    /// `key[..shared]` and its stored rest, compared from there.
    fn find_in_block(&self, b: usize, n: usize, key: &[u8]) -> Option<usize> {
        let bytes = self.blob.get(self.start(b)?..)?;
        let mut at = 0;
        let mut m = 0;
        for i in 0..n {
            let shared = if i == 0 {
                0
            } else {
                read_varint(bytes, &mut at)?
            };
            let len = read_varint(bytes, &mut at)?;
            let rest = bytes.get(at..at.checked_add(len)?)?;
            at += len;
            if i > 0 && shared > m {
                continue;
            }
            let tail = key.get(shared..)?;
            let common = rest.iter().zip(tail).take_while(|(x, y)| x == y).count();
            let before = match (rest.get(common), tail.get(common)) {
                (None, None) => return Some(i),
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(x), Some(y)) => x < y,
            };
            if !before {
                return None;
            }
            m = shared + common;
        }
        None
    }

    /// The fences of [`find`](Self::find): the first name of every
    /// [`FENCE_BLOCKS`]th block, read when the file is opened.
    pub fn fences(&self) -> BlockFences {
        let mut f = BlockFences::default();
        for b in (0..Self::blocks(self.names)).step_by(FENCE_BLOCKS) {
            f.names.extend_from_slice(self.first(b));
            f.ends.push(f.names.len() as u32);
        }
        f.names.shrink_to_fit();
        f.ends.shrink_to_fit();
        f
    }
}

/// Blocks between two [`BlockFences`] keys: a lookup reads one short run of
/// the mapped names (about 600 bytes of 11-byte names) after the fences,
/// not a dozen scattered pages.
pub(crate) const FENCE_BLOCKS: usize = 8;

/// Heap-resident fence keys over a front-coded dictionary.
#[derive(Default)]
pub(crate) struct BlockFences {
    names: Vec<u8>,
    ends: Vec<u32>,
}

impl BlockFences {
    fn key(&self, k: usize) -> &[u8] {
        let start = k.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        &self.names[start..self.ends[k] as usize]
    }

    /// The last key at most `name`; `None` if every key is greater.
    fn last_at_most(&self, name: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= name {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

/// Fence keys over a dictionary of `devices` names, `name(d)` the `d`th.
pub(crate) fn fences<'a>(devices: usize, name: impl Fn(usize) -> &'a str) -> DeviceFences {
    DeviceFences::build(&[0, devices as u32], name)
}

/// The index of `device` in the dictionary, if the file holds it.
pub(crate) fn find_device<'a>(
    fences: &DeviceFences,
    devices: usize,
    device: &str,
    name: impl Fn(usize) -> &'a str,
) -> Option<usize> {
    fences.find(0, &[0, devices as u32], device, name)
}

/// The series among `series` (one type's) whose device is `d`: the device
/// indexes ascend within a type.
pub(crate) fn series_of(
    index: &Packed<'_>,
    series: std::ops::Range<usize>,
    d: usize,
) -> Option<usize> {
    let at = index.lower_bound(series.start, series.end, d as i64);
    (at < series.end && index.int(at) == d as i64).then_some(at)
}

/// Whether each type's device indexes ascend strictly and stay below
/// `devices`: what [`series_of`] and the name lookups rely on, checked once
/// when a file is opened.
pub(crate) fn index_is_valid(index: &Packed<'_>, type_series: &[u32], devices: usize) -> bool {
    type_series.windows(2).all(|r| {
        let mut last = -1i64;
        (r[0] as usize..r[1] as usize).all(|s| {
            let d = index.int(s);
            let ok = d > last && (d as u64) < devices as u64;
            last = d;
            ok
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::Packer;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn front_coded(names: &[&str]) -> (Vec<u8>, Vec<u8>, usize) {
        let dict = Dictionary::of(names);
        let (blob, starts) = dict.front_coded();
        (blob, Packer::ints(&starts), dict.len())
    }

    #[test]
    fn front_coded_names_are_rebuilt_and_found() {
        let mut rng = StdRng::seed_from_u64(7);
        // Numbered names, names that share a multi-byte character's first
        // bytes but not the character, names that are prefixes of others.
        let mut pool: Vec<String> = (0..200).map(|i| format!("dev-{:07}", i * 37)).collect();
        pool.extend(
            [
                "é",
                "ê",
                "éa",
                "d",
                "dev",
                "dev-",
                "\u{1F600}x",
                "\u{1F601}",
            ]
            .map(String::from),
        );
        // Short names over two letters: many are prefixes of others.
        for _ in 0..300 {
            let len = rng.gen_range(1..7);
            pool.push(
                (0..len)
                    .map(|_| if rng.gen() { 'a' } else { 'b' })
                    .collect(),
            );
        }
        pool.sort_unstable();
        pool.dedup();
        for n in [0usize, 1, 15, 16, 17, 33, pool.len()] {
            let mut names: Vec<&str> = pool.iter().map(String::as_str).collect();
            names.shuffle(&mut rng);
            names.truncate(n);
            let (blob, starts, len) = front_coded(&names);
            let starts = Packed::new(&starts, FrontCoded::blocks(len) + 1, false).unwrap();
            let fc = FrontCoded::new(&blob, starts, len);
            assert_eq!(fc.check(), None, "{n} names");
            let mut sorted = names.clone();
            sorted.sort_unstable();
            let decoded = fc.decode();
            let seen: Vec<&str> = (0..len).map(|d| decoded.get(d)).collect();
            assert_eq!(seen, sorted);
            let fences = fc.fences();
            for (d, name) in sorted.iter().enumerate() {
                assert_eq!(fc.name(d), *name);
                assert_eq!(decoded.get(d), *name);
                assert_eq!(fc.find(&fences, name), Some(d), "{name}");
            }
            let absent = [
                "",
                "c",
                "dev-0000001",
                "dev-9",
                "\u{10FFFF}",
                "é\u{301}",
                "abababa",
            ];
            for absent in absent.into_iter().filter(|a| !names.contains(a)) {
                assert_eq!(fc.find(&fences, absent), None, "{absent}");
            }
            // Random probes, present or not, against a binary search.
            for _ in 0..500 {
                let len = rng.gen_range(0..8);
                let probe: String = (0..len)
                    .map(|_| ['a', 'b', 'c'][rng.gen_range(0..3)])
                    .collect();
                let want = sorted.binary_search(&probe.as_str()).ok();
                assert_eq!(fc.find(&fences, &probe), want, "{probe}");
            }
        }
        let names: Vec<&str> = pool.iter().map(String::as_str).collect();
        let whole: usize = names.iter().map(|n| n.len()).sum();
        assert!(front_coded(&names).0.len() * 2 < whole);
    }

    /// Lookups in 100k numbered names, whole (with the fences of
    /// [`fences`]) and front-coded: `cargo test --release -p desa-engine
    /// lookups_whole_and_front_coded -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn lookups_whole_and_front_coded() {
        let pool: Vec<String> = (0..100_000).map(|i| format!("dev-{:07}", i * 7)).collect();
        let names: Vec<&str> = pool.iter().map(String::as_str).collect();
        let dict = Dictionary::of(&names);
        let name = |d: usize| &pool[d][..];
        let whole = fences(names.len(), name);
        let (blob, starts, len) = front_coded(&names);
        let starts = Packed::new(&starts, FrontCoded::blocks(len) + 1, false).unwrap();
        let fc = FrontCoded::new(&blob, starts, len);
        let block_fences = fc.fences();
        let probes: Vec<&str> = (0..1_000_000).map(|i| name((i * 7_919) % len)).collect();
        let t = std::time::Instant::now();
        let a: usize = probes
            .iter()
            .map(|p| find_device(&whole, len, p, name).unwrap())
            .sum();
        let whole_ns = t.elapsed().as_nanos() / probes.len() as u128;
        let t = std::time::Instant::now();
        let b: usize = probes
            .iter()
            .map(|p| fc.find(&block_fences, p).unwrap())
            .sum();
        let coded_ns = t.elapsed().as_nanos() / probes.len() as u128;
        let t = std::time::Instant::now();
        let c: usize = (0..probes.len())
            .map(|i| fc.name((i * 7_919) % len).len())
            .sum();
        let rebuild_ns = t.elapsed().as_nanos() / probes.len() as u128;
        assert_eq!(a, b);
        assert!(c > 0);
        println!(
            "names {} bytes whole, {} front-coded; lookup {whole_ns} ns whole, \
             {coded_ns} ns front-coded; a name rebuilt {rebuild_ns} ns",
            dict.blob.len(),
            blob.len()
        );
    }

    #[test]
    fn a_malformed_front_coded_dictionary_is_refused() {
        let pool: Vec<String> = (0..40).map(|i| format!("dev-{i:03}")).collect();
        let names: Vec<&str> = pool.iter().map(String::as_str).collect();
        let (blob, starts, len) = front_coded(&names);
        let blocks = FrontCoded::blocks(len);
        let check = |blob: &[u8], starts: &[i64]| {
            let bytes = Packer::ints(starts);
            let starts = Packed::new(&bytes, blocks + 1, false).unwrap();
            FrontCoded::new(blob, starts, len).check()
        };
        let good: Vec<i64> = (0..=blocks)
            .map(|b| Packed::new(&starts, blocks + 1, false).unwrap().int(b))
            .collect();
        assert_eq!(check(&blob, &good), None);
        assert!(check(&blob[..blob.len() - 1], &good).is_some(), "truncated");
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert!(check(&blob, &swapped).is_some(), "blocks out of order");
        // The second name of the first block shares more than the first has.
        let mut bad = blob.clone();
        bad[1 + 7] = 9;
        assert!(check(&bad, &good).is_some(), "a prefix too long");
        // Its last byte lowered: "dev-001" becomes "dev-00/", before "dev-000".
        let mut bad = blob.clone();
        bad[1 + 7 + 2] = b'/';
        assert!(check(&bad, &good).is_some(), "out of order");
        let mut bad = blob.clone();
        bad[1 + 7 + 2] = 0xFF;
        assert!(check(&bad, &good).is_some(), "not UTF-8");
    }

    #[test]
    fn each_name_is_stored_once_and_found_by_its_series() {
        // Two types: "a" holds d1, d3; "b" holds d1, d2, d3.
        let names = ["d1", "d3", "d1", "d2", "d3"];
        let dict = Dictionary::of(&names);
        assert_eq!(dict.blob, b"d1d2d3");
        assert_eq!(dict.ends, [0, 2, 4, 6]);
        assert_eq!(dict.index, [0, 2, 0, 1, 2]);
        let bytes = Packer::ints(&dict.index);
        let index = Packed::new(&bytes, names.len(), false).unwrap();
        let type_series = [0u32, 2, 5];
        assert!(index_is_valid(&index, &type_series, dict.len()));
        assert!(!index_is_valid(&index, &type_series, 2));
        assert!(!index_is_valid(&index, &[0, 5], dict.len()));
        assert_eq!(series_of(&index, 0..2, 2), Some(1));
        assert_eq!(series_of(&index, 0..2, 1), None);
        assert_eq!(series_of(&index, 2..5, 1), Some(3));
        let name = |d: usize| ["d1", "d2", "d3"][d];
        let f = fences(3, name);
        assert_eq!(find_device(&f, 3, "d2", name), Some(1));
        assert_eq!(find_device(&f, 3, "d0", name), None);
        assert_eq!(find_device(&f, 3, "d4", name), None);
    }
}
