//! Log segments: the stored form of the sync log.
//!
//! A segment is a run of entries of ONE replica (an origin device's incarnation)
//! with consecutive `origin_seq`s, stored as one row of `sync.db` (`segments`):
//! the replica id (`origin`), its device and incarnation (`device`, NULL for
//! incarnation 0 whose replica id is the device), the first and last
//! `origin_seq`, the library sequence of its first entry once a leader sequenced
//! it (its entries then have consecutive library sequences), and the entries
//! themselves in one blob. A batch of 1,000 local changes is one row, not 1,000:
//! the log costs one insert per transaction instead of one per change (B1 in
//! PERFORMANCE.md). Entries are still individually addressable by
//! `(origin, origin_seq)` and by library sequence.
//!
//! ## Blob format
//!
//! The concatenation of the segment's entries, in `origin_seq` order, each:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | HLC time, u64 little-endian |
//! | 1 | length `m` of the model name (1..=255) |
//! | m | model name, UTF-8 |
//! | 16 | record UUID |
//! | 4 | length `p` of the payload, u32 little-endian (≤ `MAX_PAYLOAD_BYTES`) |
//! | p | payload: the operation as [`Op::encode`] writes it (postcard) |
//!
//! Because a blob is a plain concatenation, appending two runs is appending their
//! bytes, and dropping a prefix of a segment is taking a suffix of its blob. The
//! origin, incarnation and sequence numbers live in the row, not the blob. Decoding is bounded
//! and checked (a blob that does not hold exactly the row's number of entries is
//! an error), since `sync.db` is a file anyone with the data dir can edit.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sync::entry::{replica_id, LogEntry, Op, MAX_PAYLOAD_BYTES};

/// A run of encoded entries of one replica, ready to be stored.
pub(crate) struct Run {
    /// The device that wrote the entries.
    pub origin: Uuid,
    pub incarnation: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub max_hlc: u64,
    pub blob: Vec<u8>,
}

impl Run {
    /// The replica the run's positions belong to.
    pub fn replica(&self) -> Uuid {
        replica_id(self.origin, self.incarnation)
    }
}

/// Append one entry to a segment blob.
pub(crate) fn encode_entry(
    buf: &mut Vec<u8>,
    hlc: u64,
    model: &str,
    record: &Uuid,
    op: &Op,
) -> Result<()> {
    let start = buf.len();
    put_header(buf, hlc, model, record)?;
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let out = std::mem::take(buf);
    let mut out = match postcard::to_extend(op, out) {
        Ok(out) => out,
        // Encoding plain data into a Vec does not fail; the bytes are gone
        // with the Vec if it did, and the transaction fails with this error.
        Err(e) => return Err(Error::Other(format!("encoding a log entry: {e}"))),
    };
    let len = out.len() - at - 4;
    if len > MAX_PAYLOAD_BYTES {
        out.truncate(start);
        *buf = out;
        return Err(Error::Invalid(format!(
            "a change of {len} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )));
    }
    out[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    *buf = out;
    Ok(())
}

/// Append one entry whose payload is already encoded.
pub(crate) fn encode_raw(
    buf: &mut Vec<u8>,
    hlc: u64,
    model: &str,
    record: &Uuid,
    payload: &[u8],
) -> Result<()> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::Malformed("log entry payload out of bounds".into()));
    }
    put_header(buf, hlc, model, record)?;
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// The fields before the payload length: HLC, model name, record.
fn put_header(buf: &mut Vec<u8>, hlc: u64, model: &str, record: &Uuid) -> Result<()> {
    let name = model.as_bytes();
    if name.is_empty() || name.len() > 255 {
        return Err(Error::Malformed(format!(
            "model name of {} bytes cannot be logged",
            name.len()
        )));
    }
    buf.extend_from_slice(&hlc.to_le_bytes());
    buf.push(name.len() as u8);
    buf.extend_from_slice(name);
    buf.extend_from_slice(record.as_bytes());
    Ok(())
}

/// One entry of a blob, not yet decoded past its header.
pub(crate) struct RawEntry<'a> {
    pub hlc: u64,
    pub model: &'a str,
    pub record: Uuid,
    pub payload: &'a [u8],
    /// Offset of this entry in the blob.
    pub offset: usize,
}

/// Walks the entries of a blob; yields an error (once) on malformed bytes.
pub(crate) struct RawEntries<'a> {
    blob: &'a [u8],
    at: usize,
    failed: bool,
}

pub(crate) fn raw_entries(blob: &[u8]) -> RawEntries<'_> {
    RawEntries {
        blob,
        at: 0,
        failed: false,
    }
}

fn corrupt() -> Error {
    Error::Malformed("corrupt log segment in sync.db".into())
}

impl<'a> RawEntries<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or_else(corrupt)?;
        let s = self.blob.get(self.at..end).ok_or_else(corrupt)?;
        self.at = end;
        Ok(s)
    }

    fn parse(&mut self) -> Result<RawEntry<'a>> {
        let offset = self.at;
        let hlc = u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| corrupt())?);
        let m = self.take(1)?[0] as usize;
        let model = std::str::from_utf8(self.take(m)?).map_err(|_| corrupt())?;
        let record = Uuid::from_slice(self.take(16)?).map_err(|_| corrupt())?;
        let p = u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| corrupt())?) as usize;
        if p > MAX_PAYLOAD_BYTES {
            return Err(corrupt());
        }
        let payload = self.take(p)?;
        Ok(RawEntry {
            hlc,
            model,
            record,
            payload,
            offset,
        })
    }
}

impl<'a> Iterator for RawEntries<'a> {
    type Item = Result<RawEntry<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.blob.len() {
            return None;
        }
        let r = self.parse();
        self.failed = r.is_err();
        Some(r)
    }
}

/// A stored segment as read from `sync.db`.
pub(crate) struct Segment {
    pub id: i64,
    /// The device that wrote the entries (the row's `device`, or its `origin`
    /// for incarnation 0).
    pub origin: Uuid,
    pub incarnation: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub lib_seq: Option<u64>,
    pub epoch: Option<u64>,
    pub blob: Vec<u8>,
}

pub(crate) const SEGMENT_COLUMNS: &str =
    "id, origin, first_seq, last_seq, lib_seq, epoch, entries, device, incarnation";

/// A segment from a row selecting [`SEGMENT_COLUMNS`]. A row claiming fewer
/// than one entry (`first_seq > last_seq`) is corrupt: an error, not a segment.
pub(crate) fn segment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Segment> {
    let replica: Uuid = r.get(1)?;
    let seg = Segment {
        id: r.get(0)?,
        origin: r.get::<_, Option<Uuid>>(7)?.unwrap_or(replica),
        incarnation: r.get::<_, i64>(8)? as u64,
        first_seq: r.get::<_, i64>(2)? as u64,
        last_seq: r.get::<_, i64>(3)? as u64,
        lib_seq: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        epoch: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        blob: r.get(6)?,
    };
    if seg.first_seq > seg.last_seq {
        return Err(rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Integer,
            format!("segment {} ends before it starts", seg.id).into(),
        ));
    }
    Ok(seg)
}

impl Segment {
    pub fn len(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }

    /// The entries with `origin_seq` in `from..=to` (clamped to the segment),
    /// decoded. Checks that the blob holds exactly the row's number of entries.
    pub fn entries_between(&self, from: u64, to: u64, out: &mut Vec<LogEntry>) -> Result<()> {
        let mut seq = self.first_seq;
        for raw in raw_entries(&self.blob) {
            let raw = raw?;
            if seq > self.last_seq {
                return Err(corrupt());
            }
            if seq >= from && seq <= to {
                out.push(LogEntry {
                    origin: self.origin,
                    origin_seq: seq,
                    incarnation: self.incarnation,
                    hlc: raw.hlc,
                    lib_seq: self.lib_seq.map(|s| s + (seq - self.first_seq)),
                    epoch: self.epoch,
                    model: raw.model.to_string(),
                    record: raw.record,
                    op: Op::decode(raw.payload)?,
                    seal: None,
                });
            }
            seq += 1;
        }
        if seq != self.last_seq + 1 {
            return Err(corrupt());
        }
        Ok(())
    }

    /// Every entry, decoded.
    pub fn entries(&self, out: &mut Vec<LogEntry>) -> Result<()> {
        self.entries_between(self.first_seq, self.last_seq, out)
    }

    /// Byte offset in the blob where the entry `seq` starts.
    pub fn offset_of(&self, seq: u64) -> Result<usize> {
        let k = seq.checked_sub(self.first_seq).ok_or_else(corrupt)? as usize;
        match raw_entries(&self.blob).nth(k) {
            Some(r) => Ok(r?.offset),
            None => Err(corrupt()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;
    use crate::sync::entry::FieldWrite;

    fn op(n: i64) -> Op {
        Op::Update(vec![FieldWrite {
            field: 1,
            value: Value::Int(n),
            base: 0,
        }])
    }

    #[test]
    fn round_trip_and_suffix() {
        let mut buf = Vec::new();
        for i in 0..5u64 {
            encode_entry(
                &mut buf,
                100 + i,
                "tag",
                &Uuid::from_u128(i as u128),
                &op(i as i64),
            )
            .unwrap();
        }
        let seg = Segment {
            id: 1,
            origin: Uuid::from_u128(9),
            incarnation: 0,
            first_seq: 11,
            last_seq: 15,
            lib_seq: Some(101),
            epoch: Some(2),
            blob: buf.clone(),
        };
        let mut out = Vec::new();
        seg.entries(&mut out).unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(out[3].origin_seq, 14);
        assert_eq!(out[3].lib_seq, Some(104));
        assert_eq!(out[3].hlc, 103);
        assert_eq!(out[3].op, op(3));
        // A suffix of the blob is the segment without its first entries.
        let at = seg.offset_of(13).unwrap();
        let tail = Segment {
            first_seq: 13,
            lib_seq: Some(103),
            blob: buf[at..].to_vec(),
            ..seg
        };
        let mut out2 = Vec::new();
        tail.entries(&mut out2).unwrap();
        assert_eq!(out2, out[2..].to_vec());
    }

    #[test]
    fn corrupt_blobs_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_entry(&mut buf, 1, "tag", &Uuid::nil(), &op(1)).unwrap();
        encode_entry(&mut buf, 2, "tag", &Uuid::nil(), &op(2)).unwrap();
        for cut in 0..buf.len() {
            let seg = Segment {
                id: 1,
                origin: Uuid::nil(),
                incarnation: 0,
                first_seq: 1,
                last_seq: 2,
                lib_seq: None,
                epoch: None,
                blob: buf[..cut].to_vec(),
            };
            assert!(seg.entries(&mut Vec::new()).is_err(), "cut at {cut}");
        }
        // More entries than the row claims.
        let seg = Segment {
            id: 1,
            origin: Uuid::nil(),
            incarnation: 0,
            first_seq: 1,
            last_seq: 1,
            lib_seq: None,
            epoch: None,
            blob: buf.clone(),
        };
        assert!(seg.entries(&mut Vec::new()).is_err());
    }
}
