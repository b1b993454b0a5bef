//! The container shared by segment and summary files: typed sections, a
//! footer, and one checksum over the whole file.
//!
//! ```text
//! header   MAGIC (8 bytes) + 8 zero bytes
//! sections byte ranges, each starting 8-byte aligned
//! footer   N x (offset u64, len u64)      one entry per section, in order
//!          W x u64                         the format's own words (counts, ...)
//!          crc32c u32 of every byte before it, version u32, FOOTER MAGIC (8)
//! ```
//! A file is written whole and fsynced before anything names it; a reader
//! checks each section's bounds when it opens the file, and verifies the
//! checksum before serving a byte: at once ([`Verify::Now`]), or, for the
//! files a node opens when it starts, before the first query or merge that
//! reads the file and by a background scrub ([`Verify::Later`]), so that a
//! restart does not read every byte of the data.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::packed::Packed;

const HEADER_BYTES: u64 = 16;

/// The magic numbers and shape of one file format.
pub(crate) struct Format {
    pub header: &'static [u8; 8],
    pub footer: &'static [u8; 8],
    pub version: u32,
    pub sections: usize,
    pub words: usize,
}

impl Format {
    fn footer_bytes(&self) -> u64 {
        (self.sections * 16 + self.words * 8 + 4 + 4 + 8) as u64
    }
}

/// Streams sections to a new file, padding each to 8 bytes and folding every
/// byte into the checksum.
pub(crate) struct SectionWriter {
    format: &'static Format,
    out: BufWriter<File>,
    pos: u64,
    crc: u32,
    table: Vec<(u64, u64)>,
    open_at: Option<u64>,
}

impl SectionWriter {
    pub fn create(format: &'static Format, path: &Path) -> Result<SectionWriter> {
        let file = File::create(path).map_err(Error::io("create", path))?;
        let mut w = SectionWriter {
            format,
            out: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
            crc: 0,
            table: Vec::new(),
            open_at: None,
        };
        w.raw(format.header)
            .and_then(|()| w.raw(&[0u8; 8]))
            .map_err(Error::io("write", path))?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes one whole section.
    pub fn section(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.begin()?;
        self.append(bytes)?;
        self.end();
        Ok(())
    }

    /// Starts a section written in parts with [`append`](Self::append).
    pub fn begin(&mut self) -> std::io::Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        self.raw(&[0u8; 8][..pad as usize])?;
        self.open_at = Some(self.pos);
        Ok(())
    }

    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.raw(bytes)
    }

    pub fn end(&mut self) {
        if let Some(at) = self.open_at.take() {
            self.table.push((at, self.pos - at));
        }
    }

    /// Writes the footer and fsyncs the file; returns its length in bytes.
    pub fn finish(self, words: &[u64]) -> std::io::Result<u64> {
        self.finish_with(words, true)
    }

    /// Writes the footer without an fsync: for a copy of data that is
    /// durable elsewhere (cluster mode's local copies of blocks).
    pub fn finish_unsynced(self, words: &[u64]) -> std::io::Result<u64> {
        self.finish_with(words, false)
    }

    fn finish_with(mut self, words: &[u64], sync: bool) -> std::io::Result<u64> {
        debug_assert_eq!(self.table.len(), self.format.sections);
        debug_assert_eq!(words.len(), self.format.words);
        let mut footer = Vec::with_capacity(self.format.footer_bytes() as usize);
        for (off, len) in &self.table {
            footer.extend_from_slice(&off.to_le_bytes());
            footer.extend_from_slice(&len.to_le_bytes());
        }
        for w in words {
            footer.extend_from_slice(&w.to_le_bytes());
        }
        self.raw(&footer)?;
        let crc = self.crc;
        self.raw(&crc.to_le_bytes())?;
        self.raw(&self.format.version.to_le_bytes())?;
        self.raw(self.format.footer)?;
        self.out.flush()?;
        if sync {
            self.out.get_ref().sync_all()?;
        }
        Ok(self.pos)
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// When [`SectionFile::open`] verifies the file's checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Before `open` returns.
    Now,
    /// On the first [`SectionFile::verify`].
    Later,
}

/// [`SectionFile::checksum`]'s states.
const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

/// A logical clock for [`SectionFile::touch`]: only the order of uses matters.
static USE_CLOCK: AtomicU64 = AtomicU64::new(1);

/// A verified, read-only mapping of a section file.
pub(crate) struct SectionFile {
    pub map: Mmap,
    pub sections: Vec<(usize, usize)>,
    pub words: Vec<u64>,
    /// The format version the file was written in.
    pub version: u32,
    /// When a query last read this file, on [`USE_CLOCK`]'s scale.
    last_used: AtomicU64,
    /// The (blob, offsets) string tables [`check_strings`](Self::check_strings)
    /// has verified.
    strings: Vec<(usize, usize)>,
    /// The (blob, offsets, count) tables
    /// [`check_packed_strings`](Self::check_packed_strings) has verified.
    packed_strings: Vec<(usize, usize, usize)>,
    /// Whether the checksum has been verified: `UNCHECKED`, `GOOD`, `BAD`.
    checksum: std::sync::atomic::AtomicU8,
    /// The file, named in the errors of [`verify`](Self::verify).
    path: std::path::PathBuf,
}

impl SectionFile {
    /// Maps the file and verifies magic numbers, version and, with
    /// [`Verify::Now`], the checksum. `formats` are the versions of one kind
    /// of file this build reads (same magic numbers); the file's version
    /// word picks its shape.
    pub fn open(formats: &[&Format], path: &Path, verify: Verify) -> Result<SectionFile> {
        let file = File::open(path).map_err(Error::io("open", path))?;
        // SAFETY: these files are never modified after they are written; they
        // are only deleted, which keeps an existing mapping valid.
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io("mmap", path))?;
        let len = map.len() as u64;
        let bad = |offset: u64, reason: &str| Error::corrupt(path, offset, reason.to_owned());
        let Some(first) = formats.first() else {
            return Err(bad(0, "no format to read it with"));
        };
        if len < HEADER_BYTES + 16 || &map[..8] != first.header {
            return Err(bad(0, "bad header or file too short"));
        }
        if &map[map.len() - 8..] != first.footer {
            return Err(bad(len - 8, "bad footer magic (file truncated?)"));
        }
        let at = map.len() - 12;
        let version = u32::from_le_bytes([map[at], map[at + 1], map[at + 2], map[at + 3]]);
        let Some(format) = formats.iter().find(|f| f.version == version) else {
            return Err(bad(len - 12, &format!("unsupported version {version}")));
        };
        if len < HEADER_BYTES + format.footer_bytes() {
            return Err(bad(0, "file too short for its footer"));
        }
        let footer_at = (len - format.footer_bytes()) as usize;
        let f = &map[footer_at..];
        let sections: Vec<(usize, usize)> = (0..format.sections)
            .map(|i| (le_u64(f, i * 16) as usize, le_u64(f, i * 16 + 8) as usize))
            .collect();
        for (i, &(off, slen)) in sections.iter().enumerate() {
            let in_bounds = off.checked_add(slen).is_some_and(|e| e <= footer_at)
                && off >= HEADER_BYTES as usize;
            if !in_bounds || off % 8 != 0 {
                return Err(bad(off as u64, &format!("section {i} is out of bounds")));
            }
        }
        let base = format.sections * 16;
        let words = (0..format.words).map(|i| le_u64(f, base + i * 8)).collect();
        let file = SectionFile {
            map,
            sections,
            words,
            version,
            last_used: AtomicU64::new(0),
            strings: Vec::new(),
            packed_strings: Vec::new(),
            checksum: std::sync::atomic::AtomicU8::new(UNCHECKED),
            path: path.to_owned(),
        };
        if verify == Verify::Now {
            file.verify()?;
        }
        Ok(file)
    }

    /// Verifies the checksum over every byte of the file, once: later calls
    /// return the first one's answer without reading the file again.
    pub fn verify(&self) -> Result<()> {
        match self.checksum.load(Ordering::Acquire) {
            GOOD => Ok(()),
            BAD => Err(self.mismatch()),
            _ => self.reverify(),
        }
    }

    fn mismatch(&self) -> Error {
        Error::corrupt(&self.path, 0, "checksum mismatch".to_owned())
    }

    /// Reads every byte of the file again and verifies the checksum (the
    /// scrub's later passes, for damage since the file was first read); a
    /// file found damaged stays so.
    pub fn reverify(&self) -> Result<()> {
        // Verified a window at a time, each dropped from this process once
        // read, so that verifying a large file does not swell resident
        // memory.
        const WINDOW: usize = 16 << 20;
        let map = &self.map;
        let covered = map.len() - 16;
        let mut crc = 0;
        for start in (0..covered).step_by(WINDOW) {
            let len = WINDOW.min(covered - start);
            crc = crc32c::crc32c_append(crc, &map[start..start + len]);
            // SAFETY: read-only shared file mapping: MADV_DONTNEED only drops
            // clean pages, which are read again on access.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
        let stored = u32::from_le_bytes([
            map[covered],
            map[covered + 1],
            map[covered + 2],
            map[covered + 3],
        ]);
        if crc == stored {
            // A file found damaged stays damaged.
            let _ = self.checksum.compare_exchange(
                UNCHECKED,
                GOOD,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            match self.checksum.load(Ordering::Acquire) {
                BAD => Err(self.mismatch()),
                _ => Ok(()),
            }
        } else {
            self.checksum.store(BAD, Ordering::Release);
            Err(self.mismatch())
        }
    }

    /// Whether [`verify`](Self::verify) has run (whatever it found).
    pub fn verified(&self) -> bool {
        self.checksum.load(Ordering::Acquire) != UNCHECKED
    }

    /// Verifies once that the offsets section `offsets` (u32, ascending) cuts
    /// the section `blob` into UTF-8 strings, so that
    /// [`str_at`](Self::str_at) hands them out without checking each time
    /// (a check per name read was a quarter of the query mix's CPU time).
    pub fn check_strings(&mut self, path: &Path, blob: usize, offsets: usize) -> Result<()> {
        let at = self.sections[blob].0 as u64;
        let bad = |reason: &str| Error::corrupt(path, at, reason.to_owned());
        let text = std::str::from_utf8(self.bytes(blob)).map_err(|_| bad("a name is not UTF-8"))?;
        let ends: &[u32] = bytemuck::cast_slice(self.bytes(offsets));
        let mut last = 0;
        for &end in ends {
            let end = end as usize;
            if end < last || !text.is_char_boundary(end) {
                return Err(bad("name offsets out of order or out of bounds"));
            }
            last = end;
        }
        self.strings.push((blob, offsets));
        Ok(())
    }

    /// String `i` of a table verified by [`check_strings`](Self::check_strings).
    pub fn str_at(&self, blob: usize, offsets: usize, i: usize) -> &str {
        assert!(
            self.strings.contains(&(blob, offsets)),
            "string table ({blob}, {offsets}) read before it was checked"
        );
        let ends: &[u32] = bytemuck::cast_slice(self.bytes(offsets));
        let bytes = &self.bytes(blob)[ends[i] as usize..ends[i + 1] as usize];
        // SAFETY: `check_strings` found the whole blob UTF-8 and every offset
        // on a character boundary, and a mapped file never changes, so the
        // bytes between two offsets are UTF-8.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// [`check_strings`](Self::check_strings) for a table of `count` strings
    /// whose offsets are a packed column (`count + 1` values).
    pub fn check_packed_strings(
        &mut self,
        path: &Path,
        blob: usize,
        offsets: usize,
        count: usize,
    ) -> Result<()> {
        let at = self.sections[blob].0 as u64;
        let bad = |reason: &str| Error::corrupt(path, at, reason.to_owned());
        let text = std::str::from_utf8(self.bytes(blob)).map_err(|_| bad("a name is not UTF-8"))?;
        let ends = Packed::new(self.bytes(offsets), count + 1, false)
            .ok_or_else(|| bad("name offsets are malformed"))?;
        let mut last = 0;
        for i in 0..=count {
            let end = usize::try_from(ends.int(i)).unwrap_or(usize::MAX);
            if end < last || !text.is_char_boundary(end) {
                return Err(bad("name offsets out of order or out of bounds"));
            }
            last = end;
        }
        self.packed_strings.push((blob, offsets, count));
        Ok(())
    }

    /// String `i` of a table verified by
    /// [`check_packed_strings`](Self::check_packed_strings).
    pub fn packed_str_at(&self, blob: usize, offsets: usize, count: usize, i: usize) -> &str {
        assert!(
            self.packed_strings.contains(&(blob, offsets, count)),
            "string table ({blob}, {offsets}) read before it was checked"
        );
        let ends = Packed::unchecked(self.bytes(offsets), count + 1);
        let bytes = &self.bytes(blob)[ends.int(i) as usize..ends.int(i + 1) as usize];
        // SAFETY: as for `str_at`: `check_packed_strings` found the blob
        // UTF-8 and every offset ascending and on a character boundary.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Checks that each section holds `count` items of `width` bytes
    /// (`None`: any length).
    pub fn check_sizes(&self, path: &Path, expect: &[(usize, Option<usize>)]) -> Result<()> {
        for (i, ((off, len), (width, count))) in self.sections.iter().zip(expect).enumerate() {
            if count.is_some_and(|c| c.checked_mul(*width) != Some(*len)) {
                return Err(Error::corrupt(
                    path,
                    *off as u64,
                    format!("section {i} is mis-sized"),
                ));
            }
        }
        Ok(())
    }

    pub fn bytes(&self, s: usize) -> &[u8] {
        let (off, len) = self.sections[s];
        &self.map[off..off + len]
    }

    /// Records that a query is reading this file.
    pub fn touch(&self) {
        self.last_used
            .store(USE_CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// When a query last read this file (larger is more recent).
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Drops the mapping's resident pages from this process; they are read
    /// again from the file (usually the page cache) on the next access. The
    /// memory governor and the readers of whole files call it.
    pub fn release_memory(&self) {
        // SAFETY: read-only shared file mapping: MADV_DONTNEED only drops
        // clean pages, which are read again on access.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }
}

/// True when `offsets` starts at 0, never decreases and ends at `end`: an
/// offsets section every index into which stays inside its target.
pub(crate) fn ascending_to(offsets: &[u32], end: usize) -> bool {
    offsets.first() == Some(&0)
        && offsets.windows(2).all(|w| w[0] <= w[1])
        && offsets.last().is_some_and(|&e| e as usize == end)
}
