//! A file's device dictionary, shared by segments (format 4) and summaries
//! (format 3): the file's distinct devices, sorted and stored once, and
//! per series the index of its device in them.
//!
//! A device reports several types, and a file holds one series per (type,
//! device): keeping the name with each series stored it once per type, with
//! a 4-byte offset each time. The dictionary stores each name once, and a
//! series holds a packed index (about as many bits as the file has devices
//! in binary), ascending within a type so that a lookup is a binary search.

use crate::fences::DeviceFences;
use crate::packed::Packed;

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
