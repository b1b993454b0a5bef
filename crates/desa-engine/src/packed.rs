//! Packed columns: integers or floats in blocks of [`BLOCK`] values, each
//! block stored as offsets from its smallest value in the fewest bits that
//! hold them, so that any value is read in O(1) without decoding its block
//! (binary searches and k-d leaves read single values).
//!
//! Floats are stored exactly, bit for bit: a block whose values are all
//! decimals of at most [`MAX_DECIMALS`] digits after the point (most sensor
//! readings and GPS fixes) holds them as integers scaled by a power of ten;
//! one whose values are all small multiples of one power of two (the low
//! halves of double-double sums) as integers scaled by that power; any other
//! block holds their IEEE-754 bits as integers.
//!
//! ```text
//! section  Dir x blocks          one per block of BLOCK values
//!          data bytes            each block's values, `bits` each, LSB first
//!          PAD zero bytes        so that a value is read with one 16-byte load
//! ```

use bytemuck::{Pod, Zeroable};

/// Values per block.
pub const BLOCK: usize = 128;

/// Decimal digits a float block may be scaled by.
pub const MAX_DECIMALS: u8 = 15;

/// `Dir::decimals` of a float block stored as raw bits.
const RAW_BITS: u8 = u8::MAX;

/// `Dir::decimals` of a float block scaled by `2^k` is `BINARY + k`.
const BINARY: u8 = 128;

/// `Dir::decimals` of a float block stored as decimals of `d` digits, each
/// with the few units in the last place it lies from the decimal, is
/// `NEAR + d`: sums of decimals (a series' total in a summary), which the
/// roundings of the addition leave an ulp or two away from the decimal.
const NEAR: u8 = 64;

/// `Dir::decimals` of an integer block stored along a line: value `k` of
/// the block is `min + k * entries + offset` (`entries` is then the slope,
/// not a dictionary): ascending columns whose values step evenly, such as
/// the offsets of names of one length or timestamps in time order.
const LINEAR: u8 = 32;

/// Bits of the distance in ulps kept with each value of a `NEAR` block.
const NEAR_BITS: u32 = 3;

/// The largest `k` of a block scaled by `2^k`.
const MAX_BINARY: u8 = 126;

/// Zero bytes after the data.
const PAD: usize = 16;

const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Where one block's values are and how to read them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq)]
pub struct Dir {
    /// Byte offset of the block's values in the data.
    pub offset: u32,
    /// Bits per value, 0 to 64.
    pub bits: u8,
    /// For floats: the power of ten the values are scaled by, `BINARY`
    /// plus the power of two, or `RAW_BITS`; 0 for integer columns.
    pub decimals: u8,
    /// Dictionary entries (0: none): the block stores this many distinct
    /// offsets, then each value as an index into them.
    pub entries: u16,
    /// The block's smallest (scaled) value.
    pub min: i64,
}

impl Dir {
    /// Bits per index into the dictionary.
    #[inline]
    fn index_bits(&self) -> u8 {
        match self.entries {
            _ if self.decimals == LINEAR => 0,
            0 => 0,
            n => width(u64::from(n) - 1),
        }
    }
}

/// Encodes one block of integers, appending its values to `data`.
/// Bits that hold every number up to `x`.
fn width(x: u64) -> u8 {
    (64 - x.leading_zeros()) as u8
}

/// Appends numbers of a given width to bytes, least significant bit first.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u128,
    filled: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter {
            out,
            acc: 0,
            filled: 0,
        }
    }

    fn push(&mut self, v: u64, bits: u8) {
        self.acc |= u128::from(v) << self.filled;
        self.filled += u32::from(bits);
        while self.filled >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.filled -= 8;
        }
    }

    /// Writes the last, partly filled byte.
    fn finish(self) {
        if self.filled > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Encodes one block of integers, appending its values to `data`: offsets
/// from the block's smallest value, or, when the block repeats a few values
/// (the coordinates of fixed sensors in a k-d leaf), those values once and
/// an index into them per value.
fn pack_block(values: &[i64], decimals: u8, data: &mut Vec<u8>) -> Dir {
    let min = values.iter().copied().min().unwrap_or(0);
    let offsets = || values.iter().map(move |&v| v.wrapping_sub(min) as u64);
    let bits = width(offsets().max().unwrap_or(0));
    let mut dir = Dir {
        offset: data.len() as u32,
        bits,
        decimals,
        entries: 0,
        min,
    };
    let mut distinct: Vec<u64> = offsets().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let index_bits = width(distinct.len() as u64 - 1);
    let n = values.len();
    let mut w = BitWriter::new(data);
    if distinct.len() * usize::from(bits) + n * usize::from(index_bits) < n * usize::from(bits) {
        // The entries `bits` wide, then the indices `index_bits` wide.
        dir.entries = distinct.len() as u16;
        for &e in &distinct {
            w.push(e, bits);
        }
        for o in offsets() {
            w.push(distinct.binary_search(&o).unwrap_or(0) as u64, index_bits);
        }
    } else {
        for o in offsets() {
            w.push(o, bits);
        }
    }
    w.finish();
    dir
}

/// A block of integers along a line: `min + k * slope + offset`.
struct Line {
    min: i64,
    slope: u16,
    bits: u8,
}

impl Line {
    fn write(&self, values: &[i64], data: &mut Vec<u8>) -> Dir {
        let dir = Dir {
            offset: data.len() as u32,
            bits: self.bits,
            decimals: LINEAR,
            entries: self.slope,
            min: self.min,
        };
        let mut w = BitWriter::new(data);
        for (k, &v) in values.iter().enumerate() {
            w.push(self.offset(k, v), self.bits);
        }
        w.finish();
        dir
    }

    fn offset(&self, k: usize, v: i64) -> u64 {
        v.wrapping_sub(self.min)
            .wrapping_sub(k as i64 * i64::from(self.slope)) as u64
    }
}

/// The line through an ascending block, if its offsets take fewer bits
/// than `flat_bits` (the block stored as offsets from its smallest value).
fn pack_linear(values: &[i64], flat_bits: u8) -> Option<Line> {
    let (first, last) = (*values.first()?, *values.last()?);
    if values.len() < 2 || values.windows(2).any(|w| w[0] > w[1]) {
        return None;
    }
    let slope = u16::try_from(last.checked_sub(first)? / (values.len() as i64 - 1)).ok()?;
    let residual = |k: usize, v: i64| {
        v.checked_sub(first)?
            .checked_sub((k as i64).checked_mul(i64::from(slope))?)
    };
    let mut low = 0;
    for (k, &v) in values.iter().enumerate() {
        low = low.min(residual(k, v)?);
    }
    let mut line = Line {
        min: first.checked_add(low)?,
        slope,
        bits: 0,
    };
    let high = values
        .iter()
        .enumerate()
        .map(|(k, &v)| line.offset(k, v))
        .max()?;
    line.bits = width(high);
    (line.bits < flat_bits).then_some(line)
}

/// The scaled integer of `v` at `decimals`, if it reads back bit for bit.
fn scaled(v: f64, decimals: u8) -> Option<i64> {
    let x = if decimals >= BINARY {
        v * pow2(i32::from(decimals - BINARY))
    } else {
        (v * POW10[decimals as usize]).round()
    };
    // Integers of up to 2^53 are exact in an f64, so the division is the
    // correctly rounded quotient, and the check below is the whole proof.
    if x.is_nan() || x.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    let i = x as i64;
    (unscale(i, decimals).to_bits() == v.to_bits()).then_some(i)
}

#[inline]
fn unscale(i: i64, decimals: u8) -> f64 {
    if decimals >= BINARY {
        i as f64 * pow2(-i32::from(decimals - BINARY))
    } else {
        i as f64 / POW10[decimals as usize]
    }
}

/// The integer a `NEAR + decimals` block stores for `v`: its nearest
/// decimal scaled, shifted left by [`NEAR_BITS`], plus its distance in ulps
/// from that decimal, if it reads back bit for bit.
fn near_scaled(v: f64, decimals: u8) -> Option<i64> {
    let x = (v * POW10[decimals as usize]).round();
    if x.is_nan() || x.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    let base = unscale(x as i64, decimals);
    let ulps = (v.to_bits() as i64).wrapping_sub(base.to_bits() as i64);
    let half = 1i64 << (NEAR_BITS - 1);
    if !(-half..half).contains(&ulps) {
        return None;
    }
    let i = (x as i64)
        .checked_mul(1 << NEAR_BITS)?
        .checked_add(ulps + half)?;
    (unscale_near(i, decimals).to_bits() == v.to_bits()).then_some(i)
}

/// The value of `i` in a `NEAR + decimals` block (see [`near_scaled`]).
#[inline]
fn unscale_near(i: i64, decimals: u8) -> f64 {
    let half = 1i64 << (NEAR_BITS - 1);
    let ulps = (i & ((1 << NEAR_BITS) - 1)) - half;
    let base = unscale(i >> NEAR_BITS, decimals);
    f64::from_bits((base.to_bits() as i64).wrapping_add(ulps) as u64)
}

/// A float of a block stored with `decimals`.
#[inline]
fn float_of(x: i64, decimals: u8) -> f64 {
    match decimals {
        RAW_BITS => f64::from_bits(x as u64),
        d if (NEAR..=NEAR + MAX_DECIMALS).contains(&d) => unscale_near(x, d - NEAR),
        d => unscale(x, d),
    }
}

/// `2^e` for `e` in -1022..=1023.
#[inline]
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// The smallest `k` such that every value times `2^k` is an integer, if
/// one of at most [`MAX_BINARY`] makes them all integers of at most 53 bits.
fn binary_scale(values: &[f64]) -> Option<u8> {
    let mut k = 0i32;
    for &v in values {
        if v == 0.0 && v.is_sign_positive() {
            continue;
        }
        let bits = v.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i32;
        if exp == 0 || exp == 0x7ff {
            return None; // -0.0, subnormals, infinities and NaNs
        }
        let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
        // v = mantissa * 2^(exp - 1075); its lowest set bit is worth
        // 2^(exp - 1075 + trailing zeros).
        let lowest = exp - 1075 + mantissa.trailing_zeros() as i32;
        k = k.max(-lowest);
    }
    (k <= i32::from(MAX_BINARY)).then(|| BINARY + k as u8)
}

/// How a block of floats is stored, the first of: decimals, multiples of a
/// power of two, decimals a few ulps off, raw bits. Leaves the integers
/// stored in `ints`.
fn float_mode(block: &[f64], ints: &mut Vec<i64>) -> u8 {
    let mut all = |f: &dyn Fn(f64) -> Option<i64>| {
        ints.clear();
        block.iter().all(|&v| f(v).map(|i| ints.push(i)).is_some())
    };
    if let Some(d) = (0..=MAX_DECIMALS).find(|&d| all(&|v| scaled(v, d))) {
        return d;
    }
    if let Some(scale) = binary_scale(block).filter(|&k| all(&|v| scaled(v, k))) {
        return scale;
    }
    if let Some(d) = (0..=MAX_DECIMALS).find(|&d| all(&|v| near_scaled(v, d))) {
        return NEAR + d;
    }
    all(&|v| Some(v.to_bits() as i64));
    RAW_BITS
}

/// Builds packed columns.
pub struct Packer;

impl Packer {
    /// The section bytes of an integer column.
    pub fn ints(values: &[i64]) -> Vec<u8> {
        let mut dirs = Vec::with_capacity(values.len().div_ceil(BLOCK));
        let mut data = Vec::new();
        for block in values.chunks(BLOCK) {
            let (min, max) = block
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let flat_bits = width(max.wrapping_sub(min) as u64);
            dirs.push(match pack_linear(block, flat_bits) {
                Some(line) => line.write(block, &mut data),
                None => pack_block(block, 0, &mut data),
            });
        }
        join(&dirs, data)
    }

    /// The section bytes of a float column, exact bit for bit.
    pub fn floats(values: &[f64]) -> Vec<u8> {
        let mut dirs = Vec::with_capacity(values.len().div_ceil(BLOCK));
        let mut data = Vec::new();
        let mut ints = Vec::with_capacity(BLOCK);
        for block in values.chunks(BLOCK) {
            let decimals = float_mode(block, &mut ints);
            dirs.push(pack_block(&ints, decimals, &mut data));
        }
        join(&dirs, data)
    }
}

fn join(dirs: &[Dir], mut data: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(dirs.len() * 16 + data.len() + PAD);
    out.extend_from_slice(bytemuck::cast_slice(dirs));
    out.append(&mut data);
    out.extend_from_slice(&[0; PAD]);
    out
}

/// A packed column read in place.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    dirs: &'a [Dir],
    data: &'a [u8],
}

impl<'a> Packed<'a> {
    /// Reads the section `bytes` of a column of `len` values, checking that
    /// every block lies inside it; `None` if it does not.
    pub fn new(bytes: &'a [u8], len: usize, floats: bool) -> Option<Packed<'a>> {
        let blocks = len.div_ceil(BLOCK);
        let dir_bytes = blocks.checked_mul(std::mem::size_of::<Dir>())?;
        if bytes.len() < dir_bytes + PAD || bytes.as_ptr().align_offset(8) != 0 {
            return None;
        }
        let (dirs, data) = bytes.split_at(dir_bytes);
        let dirs: &[Dir] = bytemuck::try_cast_slice(dirs).ok()?;
        let usable = data.len() - PAD;
        for (b, d) in dirs.iter().enumerate() {
            let n = BLOCK.min(len - b * BLOCK);
            // A line's `entries` is its slope: its values are `bits` each.
            let entries = if d.decimals == LINEAR {
                0
            } else {
                usize::from(d.entries)
            };
            let stored = entries * usize::from(d.bits) + n * usize::from(d.index_bits());
            let end = d.offset as usize + stored.div_ceil(8);
            let decimals_ok = if floats {
                d.decimals <= MAX_DECIMALS
                    || (NEAR..=NEAR + MAX_DECIMALS).contains(&d.decimals)
                    || (BINARY..=BINARY + MAX_BINARY).contains(&d.decimals)
                    || d.decimals == RAW_BITS
            } else {
                d.decimals == 0 || d.decimals == LINEAR
            };
            if d.bits > 64 || entries > n || end > usable || !decimals_ok {
                return None;
            }
        }
        Some(Packed { dirs, data })
    }

    /// Reads a section [`new`](Self::new) has accepted, without checking
    /// it again (a malformed one can only panic on a bounds check).
    #[inline]
    pub fn unchecked(bytes: &'a [u8], len: usize) -> Packed<'a> {
        let dir_bytes = len.div_ceil(BLOCK) * std::mem::size_of::<Dir>();
        let (dirs, data) = bytes.split_at(dir_bytes.min(bytes.len()));
        Packed {
            dirs: bytemuck::cast_slice(dirs),
            data,
        }
    }

    /// The `bits`-wide number at bit `bit` of the block at byte `offset`.
    #[inline]
    fn bits_at(&self, offset: u32, bit: usize, bits: u8) -> u64 {
        let at = offset as usize + bit / 8;
        let mut word = [0u8; 16];
        word.copy_from_slice(&self.data[at..at + 16]);
        let word = u128::from_le_bytes(word);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        ((word >> (bit % 8)) as u64) & mask
    }

    #[inline]
    fn raw(&self, i: usize) -> (i64, u8) {
        let d = &self.dirs[i / BLOCK];
        let k = i % BLOCK;
        if d.decimals == LINEAR {
            let off = self.bits_at(d.offset, k * usize::from(d.bits), d.bits);
            let on_line = d.min.wrapping_add(k as i64 * i64::from(d.entries));
            return (on_line.wrapping_add(off as i64), 0);
        }
        let off = if d.entries == 0 {
            self.bits_at(d.offset, k * usize::from(d.bits), d.bits)
        } else {
            let entries = usize::from(d.entries);
            let index_at = entries * usize::from(d.bits) + k * usize::from(d.index_bits());
            // A corrupt index reads another entry, never past the block.
            let index =
                (self.bits_at(d.offset, index_at, d.index_bits()) as usize).min(entries - 1);
            self.bits_at(d.offset, index * usize::from(d.bits), d.bits)
        };
        (d.min.wrapping_add(off as i64), d.decimals)
    }

    /// Value `i` of an integer column.
    #[inline]
    pub fn int(&self, i: usize) -> i64 {
        self.raw(i).0
    }

    /// Value `i` of a float column.
    #[inline]
    pub fn float(&self, i: usize) -> f64 {
        let (x, decimals) = self.raw(i);
        float_of(x, decimals)
    }

    /// Values `start..start + out.len()` of a float column, into `out`:
    /// what [`float`](Self::float) gives one by one, with each block's
    /// directory read once.
    pub fn floats_into(&self, start: usize, out: &mut [f64]) {
        let mut i = start;
        let mut at = 0;
        while at < out.len() {
            let d = self.dirs[i / BLOCK];
            let n = (BLOCK - i % BLOCK).min(out.len() - at);
            let run = &mut out[at..at + n];
            if d.entries != 0 {
                for (j, x) in run.iter_mut().enumerate() {
                    *x = self.float(i + j);
                }
            } else {
                let first = (i % BLOCK) * usize::from(d.bits);
                for (j, x) in run.iter_mut().enumerate() {
                    let off = self.bits_at(d.offset, first + j * usize::from(d.bits), d.bits);
                    *x = float_of(d.min.wrapping_add(off as i64), d.decimals);
                }
            }
            i += n;
            at += n;
        }
    }

    /// The first index in `lo..hi` whose integer is not below `x`, for a
    /// column ascending over that range.
    pub fn lower_bound(&self, lo: usize, hi: usize, x: i64) -> usize {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.int(mid) < x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// A run of ids (series numbers): a slice of u32 in older formats, a range
/// of a packed column in current ones.
#[derive(Clone, Copy)]
pub enum IdList<'a> {
    Fixed(&'a [u32]),
    Packed {
        column: Packed<'a>,
        start: usize,
        len: usize,
    },
}

impl IdList<'_> {
    pub fn len(&self) -> usize {
        match self {
            IdList::Fixed(ids) => ids.len(),
            IdList::Packed { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Id `pos`, if `pos < len`.
    #[inline]
    pub fn get(&self, pos: usize) -> Option<u32> {
        match self {
            IdList::Fixed(ids) => ids.get(pos).copied(),
            IdList::Packed { column, start, len } => {
                (pos < *len).then(|| column.int(start + pos) as u32)
            }
        }
    }

    /// Id `pos`, which must be below `len`.
    #[inline]
    pub fn at(&self, pos: usize) -> u32 {
        match self {
            IdList::Fixed(ids) => ids[pos],
            IdList::Packed { column, start, len } => {
                debug_assert!(pos < *len);
                column.int(start + pos) as u32
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).filter_map(|pos| self.get(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats_round_trip(values: &[f64]) {
        let bytes = Packer::floats(values);
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
        let p = Packed::new(
            &bytemuck::cast_slice(&aligned)[..bytes.len()],
            values.len(),
            true,
        )
        .unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(p.float(i).to_bits(), v.to_bits(), "value {i} of {values:?}");
        }
    }

    #[test]
    fn decimals_pack_small_and_oddities_round_trip() {
        let readings: Vec<f64> = (0..1000)
            .map(|i| 20.0 + f64::from(i % 97) * 0.125)
            .collect();
        floats_round_trip(&readings);
        assert!(Packer::floats(&readings).len() < readings.len() * 2);
        floats_round_trip(&[-0.0, 0.0, 1e300, -1e-300, f64::MIN_POSITIVE, 0.1, 48.856613]);
        floats_round_trip(&[f64::MAX, f64::MIN, 5e-324, 123456789.12345679]);
        // The low halves of double-double sums: multiples of 2^-60 or so.
        let lows: Vec<f64> = (0..300).map(|i| f64::from(i - 150) * pow2(-60)).collect();
        floats_round_trip(&lows);
        assert!(Packer::floats(&lows).len() < lows.len() * 2);
        floats_round_trip(&[]);
    }

    #[test]
    fn repeated_values_are_stored_once_per_block() {
        // Fixed sensors' coordinates: full-precision doubles, a few a block.
        let homes = [
            48.85661312345679,
            48.8612345678,
            -33.868819999,
            2.3522219876,
        ];
        let values: Vec<f64> = (0..1000).map(|i| homes[(i * 7 + i / 13) % 4]).collect();
        floats_round_trip(&values);
        assert!(Packer::floats(&values).len() < values.len());
        let ints: Vec<i64> = (0..1000).map(|i| [5, 1 << 40, -7][i % 3]).collect();
        let bytes = Packer::ints(&ints);
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
        let p = Packed::new(&bytemuck::cast_slice(&aligned)[..bytes.len()], 1000, false).unwrap();
        assert!((0..1000).all(|i| p.int(i) == ints[i]));
    }

    #[test]
    fn runs_decode_as_single_values_do() {
        let values: Vec<f64> = (0..1000)
            .map(|i| match i % 300 {
                0..100 => i as f64 * 0.001,
                100..200 => [1.5, -2.25, 1e300][i % 3],
                _ => f64::from_bits(0x4045_6789_abcd_ef01 ^ (i as u64 * 7919)),
            })
            .collect();
        let bytes = Packer::floats(&values);
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
        let p = Packed::new(&bytemuck::cast_slice(&aligned)[..bytes.len()], 1000, true).unwrap();
        for (start, len) in [(0, 1000), (5, 64), (120, 200), (999, 1), (300, 0)] {
            let mut out = vec![0.0; len];
            p.floats_into(start, &mut out);
            let want: Vec<u64> = values[start..start + len]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let got: Vec<u64> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{start}..+{len}");
        }
    }

    /// Ascending columns that step evenly (the offsets of names of one
    /// length, timestamps in time order) are stored along a line, in a few
    /// bits; any integers still read back exactly.
    #[test]
    fn lines_pack_ascending_columns_in_few_bits() {
        use rand::{Rng, SeedableRng};
        let read = |values: &[i64]| {
            let bytes = Packer::ints(values);
            let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()]
                .copy_from_slice(&bytes);
            let p = Packed::new(
                &bytemuck::cast_slice(&aligned)[..bytes.len()],
                values.len(),
                false,
            )
            .unwrap();
            for (i, &v) in values.iter().enumerate() {
                assert_eq!(p.int(i), v, "value {i}");
            }
            bytes.len()
        };
        let offsets: Vec<i64> = (0..10_000).map(|i| i * 11).collect();
        assert!(read(&offsets) < 10_000 / 4, "{} bytes", read(&offsets));
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut t = 1_767_225_600i64;
        let times: Vec<i64> = (0..10_000)
            .map(|_| {
                t += rng.gen_range(0..5);
                t
            })
            .collect();
        // Offsets from the block minimum take 9 bits here; from the line, 7.
        assert!(read(&times) < 10_000, "{} bytes", read(&times));
        for round in 0..200 {
            let n = rng.gen_range(1..400);
            let mut v: Vec<i64> = (0..n)
                .map(|_| match round % 3 {
                    0 => rng.gen(),
                    1 => rng.gen_range(-1_000_000..1_000_000),
                    _ => rng.gen_range(0..70_000) * rng.gen_range(0..3),
                })
                .collect();
            if round % 2 == 0 {
                v.sort_unstable();
            }
            read(&v);
        }
        read(&[i64::MIN, i64::MIN + 1, i64::MAX - 1, i64::MAX]);
        // A line whose lowest point would fall below i64::MIN.
        let low = i64::MIN + 1;
        read(&[low, low, low, low + 3 * 65_535]);
    }

    #[test]
    fn ints_of_any_range() {
        let values = [i64::MIN, i64::MAX, 0, -1, 1, 86_400];
        let bytes = Packer::ints(&values);
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(&bytes);
        let p = Packed::new(&bytemuck::cast_slice(&aligned)[..bytes.len()], 6, false).unwrap();
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(p.int(i), v);
        }
    }

    #[test]
    fn blocks_outside_the_section_are_refused() {
        let bytes = Packer::ints(&[1, 2, 3, 1 << 40]);
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        let b = bytemuck::cast_slice_mut::<u64, u8>(&mut aligned);
        b[..bytes.len()].copy_from_slice(&bytes);
        assert!(Packed::new(&b[..bytes.len()], 4, false).is_some());
        assert!(Packed::new(&b[..bytes.len()], 400, false).is_none());
        b[4] = 65; // bits
        assert!(Packed::new(&b[..bytes.len()], 4, false).is_none());
    }

    #[test]
    fn sums_of_decimals_pack_near_their_decimals() {
        use desa_model::DoubleDouble;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Per series, the double-double total of readings of 3 decimals:
        // the high halves miss the decimal total by an ulp or so.
        let sums: Vec<f64> = (0..2_000)
            .map(|_| {
                let mut acc = DoubleDouble::ZERO;
                for _ in 0..rng.gen_range(1..5_000) {
                    acc = acc.add_f64(unscale(rng.gen_range(-40_000..60_000), 3));
                }
                acc.hi
            })
            .collect();
        floats_round_trip(&sums);
        let packed = Packer::floats(&sums);
        assert!(packed.len() < sums.len() * 6, "{} bytes", packed.len());
        // Values an ulp or more either side of decimals, and of zero.
        let step = |v: f64, ulps: i64| f64::from_bits((v.to_bits() as i64 + ulps) as u64);
        let mut odd: Vec<f64> = Vec::new();
        for ulps in -6..6 {
            odd.extend([step(0.1, ulps), step(-12.345, ulps), step(1e15, ulps)]);
            odd.push(step(0.0, ulps.abs()));
        }
        floats_round_trip(&odd);
    }

    /// Seeded random columns: arbitrary bit patterns (NaNs, infinities,
    /// subnormals) and decimals of 0 to 7 digits, in blocks of every size.
    #[test]
    fn random_floats_round_trip() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..300 {
            let n = rng.gen_range(0..400);
            let values: Vec<f64> = if round % 4 == 3 {
                let few: Vec<f64> = (0..rng.gen_range(1..20))
                    .map(|_| f64::from_bits(rng.gen()))
                    .collect();
                (0..n).map(|_| few[rng.gen_range(0..few.len())]).collect()
            } else if round % 3 == 0 {
                (0..n).map(|_| f64::from_bits(rng.gen())).collect()
            } else if round % 3 == 1 {
                let e = rng.gen_range(-1022..1023);
                (0..n)
                    .map(|_| rng.gen_range(-1_000_000.0..1_000_000.0f64).round() * pow2(e))
                    .collect()
            } else {
                let d = rng.gen_range(0..8);
                (0..n)
                    .map(|_| unscale(rng.gen_range(-10_000_000_000..10_000_000_000), d))
                    .collect()
            };
            floats_round_trip(&values);
        }
    }
}
