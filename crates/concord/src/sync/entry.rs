//! The log entry: one synced change, identified by its position
//! `(replica, origin_seq)`, the replica being the origin device's incarnation
//! that wrote it ([`replica_id`]).
//!
//! The payload (the operation and its fields) is encoded with postcard; only the
//! fields a change touched travel, plus the record's key and owner fields so that
//! any entry can be checked and cascaded on its own. Decoding is bounded: peers
//! are untrusted.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::model::{model_by_name, FieldKind, ModelInfo, Value};

/// Largest encoded payload accepted from anyone.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest text value in a synced field (paths included).
pub const MAX_TEXT_BYTES: usize = 4096;

/// One synced change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The device that wrote the change: its stamp, ownership and membership
    /// checks use this, whatever incarnation wrote it.
    pub origin: Uuid,
    /// Position of the entry in its replica's sequence (from 1, gapless).
    pub origin_seq: u64,
    /// Which run of the origin device wrote it (0: a log written before
    /// incarnations). Each library open starts a new one, so a device restored
    /// from a backup never numbers a change at a position it gave before.
    pub incarnation: u64,
    /// Packed HLC time; the stamp's device is `origin`.
    pub hlc: u64,
    /// Library-wide sequence, set once a leader has sequenced the entry.
    pub lib_seq: Option<u64>,
    pub epoch: Option<u64>,
    pub model: String,
    pub record: Uuid,
    pub op: Op,
    /// On the last entry of a chunk: the origin's signature over the chunk
    /// (`crate::sync::seal`). Not part of what it signs.
    pub seal: Option<Seal>,
}

impl LogEntry {
    /// The entry's HLC stamp, which orders it against concurrent writes.
    pub fn stamp(&self) -> Hlc {
        Hlc::new(self.hlc, self.origin)
    }
    /// The replica whose sequence numbers the entry: the key of version
    /// vectors, `origins` and `segments` (see [`replica_id`]).
    pub fn replica(&self) -> Uuid {
        replica_id(self.origin, self.incarnation)
    }
    /// `(replica, origin_seq)`: the entry's identity on every device.
    pub fn id(&self) -> (Uuid, u64) {
        (self.replica(), self.origin_seq)
    }
    /// The bytes of this entry a seal covers, appended to `out`: everything the
    /// origin wrote, not what others add on the way (`lib_seq`, `epoch`, the
    /// seal itself). Laid out by [`signed_bytes_of`], which a field added to
    /// the entry must join so that seals cover it.
    pub fn signed_bytes(&self, out: &mut Vec<u8>) {
        let (origin, seq, hlc) = (self.origin, self.origin_seq, self.hlc);
        let at = (origin, self.incarnation, seq);
        signed_bytes_of(at, hlc, &self.model, &self.record, out, |buf| {
            // Encoding plain data into a Vec cannot fail.
            postcard::to_extend(&self.op, std::mem::take(buf)).unwrap_or_default()
        });
    }
}

/// The replica id of `device`'s incarnation `incarnation`: the device id
/// itself for incarnation 0 (logs written before incarnations keep their
/// positions), otherwise hashes: the first half of the device alone (so a
/// device recognises its own replicas in a peer's version vector, see
/// [`is_replica_of`]), the second of both. No device can name positions of
/// another's replica.
pub fn replica_id(device: Uuid, incarnation: u64) -> Uuid {
    if incarnation == 0 {
        return device;
    }
    // Entries come in runs of one replica (a segment, a received chunk, a
    // transaction): remember the last answer of this thread rather than hash
    // twice per entry.
    thread_local! {
        static LAST: std::cell::Cell<Option<(Uuid, u64, Uuid)>> = const { std::cell::Cell::new(None) };
    }
    if let Some((d, i, r)) = LAST.with(|l| l.get()) {
        if d == device && i == incarnation {
            return r;
        }
    }
    let replica = hash_replica_id(device, incarnation);
    LAST.with(|l| l.set(Some((device, incarnation, replica))));
    replica
}

fn hash_replica_id(device: Uuid, incarnation: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    let tag = blake3::Hasher::new()
        .update(b"concord-replica-device\0")
        .update(device.as_bytes())
        .finalize();
    bytes[..8].copy_from_slice(&tag.as_bytes()[..8]);
    let own = blake3::Hasher::new()
        .update(b"concord-replica\0")
        .update(device.as_bytes())
        .update(&incarnation.to_le_bytes())
        .finalize();
    bytes[8..].copy_from_slice(&own.as_bytes()[..8]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Whether `replica` is one of `device`'s replicas (any incarnation).
pub fn is_replica_of(replica: Uuid, device: Uuid) -> bool {
    replica == device || replica.as_bytes()[..8] == hash_replica_id(device, 1).as_bytes()[..8]
}

/// THE layout of an entry's signed bytes: origin, incarnation, `origin_seq`
/// (`at`: the position and the device that signs it), HLC, model
/// name, record, then the payload (the encoded [`Op`]) that `payload` appends
/// to the buffer it is given and returns; each fixed-size or length-prefixed.
/// Entries decoded from a peer and raw entries of a log segment (sealed where
/// they enter the log, without decoding them) go through it alike.
pub(crate) fn signed_bytes_of(
    (origin, incarnation, origin_seq): (Uuid, u64, u64),
    hlc: u64,
    model: &str,
    record: &Uuid,
    out: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> Vec<u8>,
) {
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&origin_seq.to_le_bytes());
    out.extend_from_slice(&hlc.to_le_bytes());
    out.extend_from_slice(&(model.len() as u64).to_le_bytes());
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(record.as_bytes());
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    *out = payload(out);
    let len = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

/// The signature closing a chunk of one replica's entries (`crate::sync::seal`),
/// carried by the chunk's last entry; signed with its origin device's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// `origin_seq` of the chunk's first entry (the last is the carrier's).
    pub first: u64,
    /// The ed25519 signature, as two halves (serde's arrays stop at 32).
    pub sig: [[u8; 32]; 2],
}

/// One field written by a change. `base` is the clock time the author saw on that
/// field when writing (0: none), which tells a sequential overwrite from a
/// concurrent one when recording conflicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldWrite {
    pub field: u16,
    pub value: Value,
    pub base: u64,
}

impl FieldWrite {
    /// One write per field, in field order, of a record written whole (an
    /// insert): `values` as `Syncable::to_values` lists them, no base.
    pub fn all(values: Vec<Value>) -> Vec<FieldWrite> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| FieldWrite {
                field: i as u16,
                value,
                base: 0,
            })
            .collect()
    }
}

/// What a change does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a record (for memberships: add the member). All synced fields.
    Insert(Vec<FieldWrite>),
    /// Change some fields (key and owner fields always included).
    Update(Vec<FieldWrite>),
    /// Delete a record for good (memberships: remove the member). Carries the key
    /// and owner fields.
    Delete(Vec<FieldWrite>),
    /// One entry standing for many device-owned rows written by `commit_bulk`.
    Bulk(BulkOperation),
}

/// Kind codes stored in `sync.db`.
pub mod kind {
    pub const INSERT: i64 = 0;
    pub const UPDATE: i64 = 1;
    pub const DELETE: i64 = 2;
    pub const BULK: i64 = 3;
}

impl Op {
    /// The kind code stored for this operation (see [`kind`]).
    pub fn kind(&self) -> i64 {
        match self {
            Op::Insert(_) => kind::INSERT,
            Op::Update(_) => kind::UPDATE,
            Op::Delete(_) => kind::DELETE,
            Op::Bulk(_) => kind::BULK,
        }
    }
    /// The field writes the operation carries (none for a bulk operation).
    pub fn writes(&self) -> &[FieldWrite] {
        match self {
            Op::Insert(w) | Op::Update(w) | Op::Delete(w) => w,
            Op::Bulk(_) => &[],
        }
    }
    /// The payload bytes stored in the log and sent to peers.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }
    /// Decode a payload from the log or a peer, bounded: peers are untrusted.
    pub fn decode(bytes: &[u8]) -> Result<Op> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::Malformed(format!(
                "payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
                bytes.len()
            )));
        }
        postcard::from_bytes(bytes)
            .map_err(|e| Error::Malformed(format!("undecodable payload: {e}")))
    }
}

/// A bulk write announced with one entry (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkOperation {
    /// A location was indexed: its rows stay on the owner and are pulled on demand.
    InitialIndex {
        location: Uuid,
        path: String,
        volume_fingerprint: String,
        count: u64,
    },
    /// A location was rescanned with more changes than a batch carries.
    Rescan {
        location: Uuid,
        path: String,
        volume_fingerprint: String,
        count: u64,
    },
}

impl BulkOperation {
    /// The location whose rows the operation wrote (on the origin device).
    pub fn location(&self) -> Uuid {
        match self {
            Self::InitialIndex { location, .. } | Self::Rescan { location, .. } => *location,
        }
    }

    /// The location's root path on the origin device.
    pub fn path(&self) -> &str {
        match self {
            Self::InitialIndex { path, .. } | Self::Rescan { path, .. } => path,
        }
    }

    /// Fingerprint of the volume the location lies on, so that another device can
    /// find the same volume mounted elsewhere.
    pub fn volume_fingerprint(&self) -> &str {
        match self {
            Self::InitialIndex {
                volume_fingerprint, ..
            }
            | Self::Rescan {
                volume_fingerprint, ..
            } => volume_fingerprint,
        }
    }

    /// How many rows the operation wrote.
    pub fn count(&self) -> u64 {
        match self {
            Self::InitialIndex { count, .. } | Self::Rescan { count, .. } => *count,
        }
    }

    /// The same operation announcing `count` rows, for the writer that learns the
    /// real number only after writing them.
    pub fn with_count(self, count: u64) -> Self {
        match self {
            Self::InitialIndex {
                location,
                path,
                volume_fingerprint,
                ..
            } => Self::InitialIndex {
                location,
                path,
                volume_fingerprint,
                count,
            },
            Self::Rescan {
                location,
                path,
                volume_fingerprint,
                ..
            } => Self::Rescan {
                location,
                path,
                volume_fingerprint,
                count,
            },
        }
    }

    /// Stable lowercase name of the variant (`initial_index`, `rescan`), for
    /// status output and logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::InitialIndex { .. } => "initial_index",
            Self::Rescan { .. } => "rescan",
        }
    }
}

/// Check an entry against its model before it touches anything: known model,
/// field ids in range, value kinds as declared, bounded text, key fields present.
pub fn validate(entry: &LogEntry) -> Result<&'static ModelInfo> {
    if entry.model == crate::sync::BULK_MODEL {
        return match entry.op {
            Op::Bulk(ref bulk) => {
                if bulk.path().len() > MAX_TEXT_BYTES
                    || bulk.volume_fingerprint().len() > MAX_TEXT_BYTES
                {
                    return Err(Error::Malformed("bulk operation text too long".into()));
                }
                Ok(&BULK_INFO)
            }
            _ => Err(Error::Malformed(
                "bulk model with a non-bulk operation".into(),
            )),
        };
    }
    let model = model_by_name(&entry.model)
        .ok_or_else(|| Error::Malformed(format!("unknown model {:?}", truncate(&entry.model))))?;
    if matches!(entry.op, Op::Bulk(_)) {
        return Err(Error::Malformed("bulk operation on a record model".into()));
    }
    let writes = entry.op.writes();
    let mut seen = 0u64;
    for w in writes {
        let f = model.fields.get(w.field as usize).ok_or_else(|| {
            Error::Malformed(format!(
                "field id {} out of range for {}",
                w.field, model.name
            ))
        })?;
        let bit = 1u64 << (w.field.min(63));
        if seen & bit != 0 {
            return Err(Error::Malformed(format!("field {} written twice", f.name)));
        }
        seen |= bit;
        let ok = match (&w.value, f.kind) {
            (Value::Null, _) => f.nullable,
            (Value::Int(_), FieldKind::Int | FieldKind::Bool) => true,
            (Value::Text(s), FieldKind::Text) => s.len() <= MAX_TEXT_BYTES,
            (Value::Uuid(_), FieldKind::Uuid) => true,
            _ => false,
        };
        if !ok {
            return Err(Error::Malformed(format!(
                "bad value for {}.{}",
                model.name, f.name
            )));
        }
    }
    for k in model.key_indices() {
        if seen & (1u64 << k) == 0 {
            return Err(Error::Malformed(format!(
                "{} entry lacks key field {}",
                model.name, model.fields[k].name
            )));
        }
    }
    if let Op::Insert(_) = entry.op {
        for (i, f) in model.fields.iter().enumerate() {
            if !f.nullable && seen & (1u64 << i) == 0 {
                return Err(Error::Malformed(format!(
                    "insert lacks field {}.{}",
                    model.name, f.name
                )));
            }
        }
    }
    Ok(model)
}

/// Placeholder description for bulk entries, which touch no table of their own.
pub static BULK_INFO: ModelInfo = ModelInfo {
    name: crate::sync::BULK_MODEL,
    table: "bulk_operations",
    ownership: crate::model::Ownership::DeviceOwned,
    kind: crate::model::ModelKind::Record,
    fields: &[],
    local_fields: &[],
    depends_on: &[],
};

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
