//! The write-ahead log: every acknowledged batch is here, fsynced, until the
//! head that holds it has been flushed to a segment.
//!
//! # Files
//! `wal/{n:012}.wal`, numbered from 1. Appends go to the newest file only.
//! A new file is started when the head is frozen for flushing, so that once the
//! frozen head is in segments, every file before the new one can be deleted
//! (the manifest's `wal_start` says which files still count).
//!
//! # Record framing (little-endian)
//! ```text
//! magic  u32   0xDE5A_10C5
//! len    u32   payload length in bytes
//! crc    u32   crc32c of len (4 bytes LE) followed by the payload
//! payload      see `encode_record`
//! ```
//!
//! # Recovery rules
//! Records are read in order. In the newest file, the first record that is
//! short or fails its checksum ends the log *if no valid record follows it*:
//! that is a torn write from a crash, and the file is truncated there. If a
//! valid record does follow, or the bad record is in an older file, the log
//! is corrupt in the middle and opening fails with [`Error::Corrupt`] rather
//! than silently dropping acknowledged events.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use desa_model::Event;

use crate::durable::sync_dir;
use crate::error::{Error, Result};

const MAGIC: u32 = 0xDE5A_10C5;
const HEADER_BYTES: usize = 12;
/// A record larger than this is treated as corrupt framing.
const MAX_RECORD_BYTES: usize = 1 << 30;

/// One acknowledged write: the events of one request and, when the request
/// carried an `Idempotency-Key`, the key and the response it got; for events
/// from a log-structured source (Kafka), the source positions they reach.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    pub idempotency_key: Option<String>,
    pub response: String,
    pub created_secs: i64,
    pub events: Vec<Event>,
    pub source_offsets: Vec<SourceOffset>,
}

pub use desa_store::SourceOffset;

/// Payload layout: `created_secs i64 | key_len u16 (0xFFFF = none) | key |
/// response_len u32 | response | n u32 | n events | m u16 | m offsets`,
/// where an event is `dev_len u8 | dev | type_len u8 | type | ts i64 |
/// value f64 | lat f64 | lon f64 | meta_len u32 (0xFFFF_FFFF = none) | meta`
/// and an offset `source_len u8 | source | partition i32 | next_offset i64`.
pub fn encode_record(rec: &WalRecord, out: &mut Vec<u8>) -> Result<()> {
    let parts = RecordParts {
        idempotency_key: rec.idempotency_key.as_deref(),
        response: &rec.response,
        created_secs: rec.created_secs,
        events: &rec.events,
        source_offsets: &rec.source_offsets,
    };
    encode_parts(&parts, out)
}

/// A record's fields, borrowed, so a write need not copy its events.
pub struct RecordParts<'a> {
    pub idempotency_key: Option<&'a str>,
    pub response: &'a str,
    pub created_secs: i64,
    pub events: &'a [Event],
    pub source_offsets: &'a [SourceOffset],
}

/// [`encode_record`] from borrowed parts. Every length is checked against
/// its field's width (and the markers of absent values): a write the format
/// cannot hold is refused whole, `out` left as it was, never cut short.
pub fn encode_parts(rec: &RecordParts<'_>, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let encoded = encode_payload(rec, out);
    if encoded.is_err() {
        out.truncate(start);
    }
    encoded
}

/// Length `n` of `what` as a `T`, if it fits below `T`'s largest value
/// (which marks an absent value where the format has one).
fn width<T: TryFrom<usize> + PartialEq + Copy>(n: usize, max: T, what: &str) -> Result<T> {
    match T::try_from(n) {
        Ok(v) if v != max => Ok(v),
        _ => Err(Error::Unrepresentable(format!(
            "{what} of {n} bytes or items does not fit the log's length field"
        ))),
    }
}

fn encode_payload(rec: &RecordParts<'_>, out: &mut Vec<u8>) -> Result<()> {
    let (key, response, created_secs, events) = (
        rec.idempotency_key,
        rec.response,
        rec.created_secs,
        rec.events,
    );
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]); // len and crc, filled below
    out.extend_from_slice(&created_secs.to_le_bytes());
    match key {
        Some(k) => {
            out.extend_from_slice(&width(k.len(), u16::MAX, "idempotency key")?.to_le_bytes());
            out.extend_from_slice(k.as_bytes());
        }
        None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
    }
    out.extend_from_slice(&width(response.len(), u32::MAX, "stored response")?.to_le_bytes());
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(&width(events.len(), u32::MAX, "events")?.to_le_bytes());
    for e in events {
        out.push(width(e.device_id.len(), u8::MAX, "device_id")?);
        out.extend_from_slice(e.device_id.as_bytes());
        out.push(width(e.event_type.len(), u8::MAX, "type")?);
        out.extend_from_slice(e.event_type.as_bytes());
        out.extend_from_slice(&e.ts_secs.to_le_bytes());
        out.extend_from_slice(&e.value.to_le_bytes());
        out.extend_from_slice(&e.latitude.to_le_bytes());
        out.extend_from_slice(&e.longitude.to_le_bytes());
        match &e.metadata {
            Some(m) => {
                out.extend_from_slice(&width(m.len(), u32::MAX, "metadata")?.to_le_bytes());
                out.extend_from_slice(m.as_bytes());
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out.extend_from_slice(
        &width(rec.source_offsets.len(), u16::MAX, "source offsets")?.to_le_bytes(),
    );
    for o in rec.source_offsets {
        out.push(width(o.source.len(), u8::MAX, "source name")?);
        out.extend_from_slice(o.source.as_bytes());
        out.extend_from_slice(&o.partition.to_le_bytes());
        out.extend_from_slice(&o.next_offset.to_le_bytes());
    }
    let len = width(out.len() - start - HEADER_BYTES, u32::MAX, "record")?;
    if len as usize > MAX_RECORD_BYTES {
        return Err(Error::Unrepresentable(format!(
            "a record of {len} bytes is over the log's limit of {MAX_RECORD_BYTES}"
        )));
    }
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &out[start + HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&len_bytes);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn f64(&mut self) -> Option<f64> {
        self.u64().map(f64::from_bits)
    }
    fn str(&mut self, n: usize) -> Option<String> {
        self.take(n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    }
}

fn decode_payload(payload: &[u8]) -> Option<WalRecord> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    let created_secs = c.u64()? as i64;
    let key_len = c.u16()?;
    let idempotency_key = if key_len == u16::MAX {
        None
    } else {
        Some(c.str(key_len as usize)?)
    };
    let resp_len = c.u32()? as usize;
    let response = c.str(resp_len)?;
    let n = c.u32()? as usize;
    let mut events = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let dev_len = c.u8()? as usize;
        let device_id = c.str(dev_len)?;
        let type_len = c.u8()? as usize;
        let event_type = c.str(type_len)?;
        let ts_secs = c.u64()? as i64;
        let value = c.f64()?;
        let latitude = c.f64()?;
        let longitude = c.f64()?;
        let meta_len = c.u32()?;
        let metadata = if meta_len == u32::MAX {
            None
        } else {
            Some(c.str(meta_len as usize)?.into_boxed_str())
        };
        events.push(Event {
            device_id,
            ts_secs,
            event_type,
            value,
            latitude,
            longitude,
            metadata,
        });
    }
    let m = c.u16()? as usize;
    let mut source_offsets = Vec::with_capacity(m);
    for _ in 0..m {
        let len = c.u8()? as usize;
        let source = c.str(len)?;
        let partition = c.u32()? as i32;
        let next_offset = c.u64()? as i64;
        source_offsets.push(SourceOffset {
            source,
            partition,
            next_offset,
        });
    }
    (c.pos == payload.len()).then_some(WalRecord {
        idempotency_key,
        response,
        created_secs,
        events,
        source_offsets,
    })
}

/// A record found at `offset`, and where the next one starts.
fn read_record_at(buf: &[u8], offset: usize) -> Option<(WalRecord, usize)> {
    let header = buf.get(offset..offset + HEADER_BYTES)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != MAGIC {
        return None;
    }
    let len = word(4) as usize;
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = buf.get(offset + HEADER_BYTES..offset + HEADER_BYTES + len)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[4..8]), payload);
    if crc != word(8) {
        return None;
    }
    let rec = decode_payload(payload)?;
    Some((rec, offset + HEADER_BYTES + len))
}

pub(crate) fn file_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.wal"))
}

/// The numbers of the log files in `dir`, ascending.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("read dir", dir))? {
        let entry = entry.map_err(Error::io("read dir", dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads every record of the files numbered `>= from`, in order, truncating a
/// torn tail of the newest file. Returns the newest file number seen (0 if none).
pub fn replay(dir: &Path, from: u64, apply: impl FnMut(WalRecord)) -> Result<u64> {
    let (newest, torn) = scan(dir, from, apply)?;
    if let Some((path, offset, dropped_bytes)) = torn {
        tracing::warn!(path = %path.display(), offset, dropped_bytes,
            "truncating torn tail of the write-ahead log");
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        f.set_len(offset).map_err(Error::io("truncate", &path))?;
        f.sync_all().map_err(Error::io("fsync", &path))?;
    }
    Ok(newest)
}

/// A torn tail: the newest file, where its last valid record ends, and the
/// bytes after it.
pub type TornTail = (PathBuf, u64, usize);

/// [`replay`] without changing any file: a torn tail of the newest file is
/// returned instead of truncated. Returns the newest file number seen.
pub fn scan(
    dir: &Path,
    from: u64,
    mut apply: impl FnMut(WalRecord),
) -> Result<(u64, Option<TornTail>)> {
    let files: Vec<u64> = list_files(dir)?
        .into_iter()
        .filter(|&n| n >= from)
        .collect();
    let newest = files.last().copied().unwrap_or(0);
    for &n in &files {
        let path = file_path(dir, n);
        let mut buf = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(Error::io("read", &path))?;
        let mut pos = 0;
        while pos < buf.len() {
            match read_record_at(&buf, pos) {
                Some((rec, next)) => {
                    apply(rec);
                    pos = next;
                }
                None => {
                    let later_valid =
                        (pos + 1..buf.len()).any(|p| read_record_at(&buf, p).is_some());
                    if n != newest || later_valid {
                        return Err(Error::corrupt(
                            &path,
                            pos as u64,
                            "write-ahead log record fails its checksum or framing, and acknowledged records follow it",
                        ));
                    }
                    return Ok((newest, Some((path, pos as u64, buf.len() - pos))));
                }
            }
        }
    }
    Ok((newest, None))
}

/// The file appends go to.
pub struct WalWriter {
    dir: PathBuf,
    file: File,
    number: u64,
    durable_len: u64,
}

impl WalWriter {
    /// Creates log file `number` and makes its directory entry durable.
    pub fn create(dir: &Path, number: u64) -> Result<Self> {
        let path = file_path(dir, number);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        sync_dir(dir)?;
        Ok(WalWriter {
            dir: dir.to_owned(),
            file,
            number,
            durable_len: 0,
        })
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// Appends encoded records and fsyncs them. On a failed write the file is
    /// cut back to its last durable length and [`Error::Unavailable`] is
    /// returned; on a failed fsync, [`Error::Poisoned`].
    pub fn append_durable(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all(bytes) {
            return match self.file.set_len(self.durable_len) {
                Ok(()) => Err(Error::Unavailable(e.to_string())),
                Err(e2) => Err(Error::Poisoned(format!(
                    "write failed ({e}) and rollback failed ({e2})"
                ))),
            };
        }
        if let Err(e) = self.file.sync_data() {
            return Err(Error::Poisoned(format!(
                "fsync of the write-ahead log failed: {e}"
            )));
        }
        self.durable_len += bytes.len() as u64;
        Ok(())
    }

    /// Starts the next file; later appends go there.
    pub fn rotate(&mut self) -> Result<u64> {
        let next = WalWriter::create(&self.dir, self.number + 1)?;
        *self = next;
        Ok(self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64) -> WalRecord {
        WalRecord {
            idempotency_key: (i % 2 == 0).then(|| format!("key-{i}")),
            response: format!("{{\"accepted\":{i}}}"),
            created_secs: 1000 + i,
            events: vec![Event {
                device_id: format!("dev-{i}"),
                ts_secs: i,
                event_type: "temperature".into(),
                value: i as f64 * 0.5,
                latitude: 1.0,
                longitude: -2.0,
                metadata: (i % 3 == 0).then(|| Box::from("{\"a\":1}")),
            }],
            source_offsets: (0..i % 3)
                .map(|p| SourceOffset {
                    source: "kafka:events".into(),
                    partition: p as i32,
                    next_offset: i * 10,
                })
                .collect(),
        }
    }

    fn write(dir: &Path, n: i64) -> u64 {
        let mut w = WalWriter::create(dir, 1).expect("create");
        let mut len = 0;
        for i in 0..n {
            let mut buf = Vec::new();
            encode_record(&rec(i), &mut buf).unwrap();
            len += buf.len() as u64;
            w.append_durable(&buf).expect("append");
        }
        len
    }

    fn read_all(dir: &Path) -> Result<Vec<WalRecord>> {
        let mut out = Vec::new();
        replay(dir, 1, |r| out.push(r))?;
        Ok(out)
    }

    #[test]
    fn lengths_that_do_not_fit_their_field_are_refused_not_cut() {
        let mut long_device = rec(1);
        long_device.events[0].device_id = "d".repeat(256);
        let mut long_key = rec(2);
        long_key.idempotency_key = Some("k".repeat(usize::from(u16::MAX)));
        let mut long_source = rec(3);
        long_source.source_offsets = vec![SourceOffset {
            source: "s".repeat(300),
            partition: 0,
            next_offset: 1,
        }];
        let mut out = Vec::new();
        encode_record(&rec(0), &mut out).expect("fits");
        let before = out.clone();
        for bad in [long_device, long_key, long_source] {
            let err = encode_record(&bad, &mut out).expect_err("does not fit");
            assert!(matches!(err, Error::Unrepresentable(_)), "{err}");
            assert_eq!(out, before, "a refused record leaves nothing behind");
        }
        let mut fits = rec(4);
        fits.events[0].device_id = "d".repeat(254);
        encode_record(&fits, &mut out).expect("254 bytes fit a u8 length");
        assert_eq!(read_record_at(&out, before.len()).map(|r| r.0), Some(fits));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), 10);
        let got = read_all(dir.path()).expect("replay");
        assert_eq!(got, (0..10).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn every_torn_tail_is_truncated_to_the_last_whole_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let len = write(dir.path(), 5);
        let path = file_path(dir.path(), 1);
        let full = fs::read(&path).expect("read");
        for cut in 0..len as usize {
            fs::write(&path, &full[..cut]).expect("write");
            let got = read_all(dir.path()).expect("torn tail is not corruption");
            // every record that is wholly before the cut survives, no other
            let mut whole = 0;
            let mut pos = 0;
            while let Some((_, next)) = read_record_at(&full[..cut], pos) {
                whole += 1;
                pos = next;
            }
            assert_eq!(got.len(), whole);
            assert_eq!(fs::metadata(&path).expect("meta").len() as usize, pos);
        }
    }

    #[test]
    fn corruption_followed_by_valid_records_is_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), 5);
        let path = file_path(dir.path(), 1);
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_BYTES + 3] ^= 0x40; // inside the first record's payload
        fs::write(&path, &bytes).expect("write");
        match read_all(dir.path()) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, 0),
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
