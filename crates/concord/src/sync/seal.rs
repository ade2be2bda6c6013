//! Sealed chunks: how every entry is verifiable back to its origin (DESIGN §13).
//!
//! An origin signs its entries in **chunks** of at most [`CHUNK_ENTRIES`]
//! consecutive `origin_seq`s of ONE replica (one incarnation of the device,
//! `crate::sync::entry::replica_id`). The last entry of a chunk carries a
//! [`Seal`]: the chunk's first position and an ed25519 signature, by the origin
//! device's node key, over a domain-separated BLAKE3 hash of the library id,
//! the origin, its incarnation, the range and each entry's
//! [`LogEntry::signed_bytes`] (which cover the incarnation too). One signature covers up to 256
//! entries, so signing costs ~0.1 µs per entry instead of ~20 µs, and
//! verifying ~0.2 µs instead of ~40 µs (PERFORMANCE.md, S1).
//!
//! A receiver verifies a chunk as a whole, against the origin's public key from
//! the library's membership (its `Device` row's `node_id`), before anything of
//! it is logged or applied ([`verify_entries`]); an entry that no verified seal
//! covers is refused. Senders therefore never split a chunk: the log's reads
//! and every page sent end at chunk boundaries ([`page_end`]).
//!
//! Chunks are made where the origin's entries enter its own log
//! ([`crate::sync::log::SyncLog`]): a flush of the outbox (up to 1,024 small
//! commits) or one large transaction; a chunk never spans two of those.

use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use uuid::Uuid;

use crate::error::Result;
use crate::model::Value;
pub use crate::sync::entry::Seal;
use crate::sync::entry::{FieldWrite, LogEntry, Op};

/// Most entries one seal covers. Below every batch limit of the sync protocol
/// (`MAX_INLINE_ENTRIES`, `MAX_BATCH_ENTRIES`), so one chunk always fits a message.
pub const CHUNK_ENTRIES: u64 = 256;

/// Domain separation: these hashes are never confused with another use of the key
/// (Iroh's TLS handshakes sign with the same key, over other bytes).
const DOMAIN: &[u8] = b"concord/seal/1\0";

fn signature(seal: &Seal) -> Signature {
    let mut b = [0u8; 64];
    b[..32].copy_from_slice(&seal.sig[0]);
    b[32..].copy_from_slice(&seal.sig[1]);
    Signature::from_bytes(&b)
}

/// A device's node key (the secret behind its Iroh node id), which seals the
/// entries it originates. Its `Debug` shows only the public half.
#[derive(Clone)]
pub struct NodeKey(SigningKey);

impl NodeKey {
    /// The key from the 32 secret bytes `node.key` holds.
    pub fn from_bytes(secret: &[u8; 32]) -> NodeKey {
        NodeKey(SigningKey::from_bytes(secret))
    }
    /// The public key, as Iroh writes a node id (lowercase hex): what a
    /// `Device` row's `node_id` holds.
    pub fn node_id(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }
    fn seal(&self, hash: &[u8; 32], first: u64) -> Seal {
        let b = self.0.sign(hash).to_bytes();
        let mut sig = [[0u8; 32]; 2];
        sig[0].copy_from_slice(&b[..32]);
        sig[1].copy_from_slice(&b[32..]);
        Seal { first, sig }
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node id in Iroh's string form (64 lowercase or uppercase hex digits) as
/// key bytes; `None` for anything else.
pub fn parse_node_id(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// The hash a seal signs, fed entry by entry. The bytes are gathered and
/// hashed in large pieces: BLAKE3 fed one small entry at a time compresses
/// one 64-byte block after another, while a large input is hashed many
/// 1 KiB chunks at once (SIMD). The hash is the same either way; this made
/// sealing a 1,000-change batch several times cheaper (PERFORMANCE.md, B1).
pub(crate) struct ChunkHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

/// Bytes [`ChunkHasher`] gathers before it hashes them (bounds its memory
/// whatever the entries' sizes).
const HASH_PIECE_BYTES: usize = 64 * 1024;

impl ChunkHasher {
    pub(crate) fn new(
        library: Uuid,
        (origin, incarnation): (Uuid, u64),
        first: u64,
        last: u64,
    ) -> ChunkHasher {
        let mut pending = Vec::with_capacity(8 * 1024);
        pending.extend_from_slice(DOMAIN);
        pending.extend_from_slice(library.as_bytes());
        pending.extend_from_slice(origin.as_bytes());
        pending.extend_from_slice(&incarnation.to_le_bytes());
        pending.extend_from_slice(&first.to_le_bytes());
        pending.extend_from_slice(&last.to_le_bytes());
        ChunkHasher {
            hasher: blake3::Hasher::new(),
            pending,
        }
    }
    /// Add one entry's [`LogEntry::signed_bytes`], in `origin_seq` order.
    pub(crate) fn add(&mut self, signed_bytes: &[u8]) {
        self.pending
            .extend_from_slice(&(signed_bytes.len() as u64).to_le_bytes());
        self.pending.extend_from_slice(signed_bytes);
        if self.pending.len() >= HASH_PIECE_BYTES {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
    }
    fn finish(&mut self) -> [u8; 32] {
        self.hasher.update(&self.pending);
        self.pending.clear();
        *self.hasher.finalize().as_bytes()
    }
}

/// Seals a replica's run of entries, chunk by chunk, as their signed bytes are
/// fed in `origin_seq` order from `first`. Returns `(last_seq, seal)` pairs.
pub(crate) struct RunSealer<'a> {
    key: &'a NodeKey,
    library: Uuid,
    /// The origin device and the incarnation whose replica the run is in.
    origin: (Uuid, u64),
    last: u64,
    chunk: Option<(u64, ChunkHasher)>,
    next: u64,
    pub(crate) seals: Vec<(u64, Seal)>,
}

impl<'a> RunSealer<'a> {
    /// For the run `first..=last` of `origin`'s incarnation (`origin.1`).
    pub(crate) fn new(
        key: &'a NodeKey,
        library: Uuid,
        origin: (Uuid, u64),
        first: u64,
        last: u64,
    ) -> Self {
        RunSealer {
            key,
            library,
            origin,
            last,
            chunk: None,
            next: first,
            seals: Vec::new(),
        }
    }
    /// Feed the next entry's signed bytes.
    pub(crate) fn add(&mut self, signed_bytes: &[u8]) {
        let seq = self.next;
        self.next += 1;
        let (first, hasher) = self.chunk.get_or_insert_with(|| {
            let end = (seq + CHUNK_ENTRIES - 1).min(self.last);
            (seq, ChunkHasher::new(self.library, self.origin, seq, end))
        });
        hasher.add(signed_bytes);
        let first = *first;
        if seq == (first + CHUNK_ENTRIES - 1).min(self.last) {
            let hash = hasher.finish();
            self.seals.push((seq, self.key.seal(&hash, first)));
            self.chunk = None;
        }
    }
}

/// Why received entries were refused: one reason per chunk or entry.
pub type Refusals = Vec<String>;

/// Where an origin's public key comes from: the library's membership (`Device`
/// rows), read once per origin per batch.
pub(crate) trait KeySource {
    /// The `node_id` of `device`'s row, parsed; `None` when there is no row or
    /// no usable node id.
    fn key_of(&mut self, device: Uuid) -> Result<Option<[u8; 32]>>;
}

/// Verify received entries before anything is logged or applied. Returns, per
/// entry, whether a verified seal covers it, and the refusals. An entry is
/// accepted only inside a whole chunk whose seal verifies against its origin's
/// key: the key in its `Device` row; or, when the library has no key for that
/// device yet, one a verified chunk of this batch writes into its row, or the
/// one the origin's own chunk writes into its own row (a device's first
/// registration certifies itself). Later copies of one `(replica, origin_seq)`
/// are never accepted (the first is).
pub(crate) fn verify_entries(
    library: Uuid,
    entries: &[LogEntry],
    keys: &mut dyn KeySource,
) -> Result<(Vec<bool>, Refusals)> {
    let mut ok = vec![false; entries.len()];
    let mut refusals = Vec::new();
    let mut index: HashMap<(Uuid, u64), usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        index.entry(e.id()).or_insert(i);
    }
    let mut pending = sealed_chunks(entries, &index, &mut refusals);
    let mut known: HashMap<Uuid, Option<[u8; 32]>> = HashMap::new();
    let mut learned: HashMap<Uuid, [u8; 32]> = HashMap::new();
    let mut bytes = Vec::new();
    loop {
        let mut progress = false;
        let mut still = Vec::new();
        for (origin, incarnation, first, last, members) in pending {
            let stored = match known.get(&origin) {
                Some(k) => *k,
                None => {
                    let k = keys.key_of(origin)?;
                    known.insert(origin, k);
                    k
                }
            };
            let key = stored
                .or_else(|| learned.get(&origin).copied())
                .or_else(|| own_registration(entries, &members, origin));
            let Some(key) = key else {
                still.push((origin, incarnation, first, last, members));
                continue;
            };
            progress = true;
            let mut hasher = ChunkHasher::new(library, (origin, incarnation), first, last);
            for &i in &members {
                bytes.clear();
                entries[i].signed_bytes(&mut bytes);
                hasher.add(&bytes);
            }
            let seal = entries[members[members.len() - 1]].seal;
            let good = seal.is_some_and(|s| {
                VerifyingKey::from_bytes(&key)
                    .is_ok_and(|k| k.verify(&hasher.finish(), &signature(&s)).is_ok())
            });
            if !good {
                let replica = crate::sync::entry::replica_id(origin, incarnation);
                refusals.push(format!(
                    "chunk {replica}:{first}..={last} of device {origin} is not signed by its \
                     origin's key (forged or altered)"
                ));
                continue;
            }
            for &i in &members {
                ok[i] = true;
                if let Some((device, k)) = registrations(&entries[i]) {
                    if !known.get(&device).is_some_and(|k| k.is_some()) {
                        learned.entry(device).or_insert(k);
                    }
                }
            }
        }
        pending = still;
        if !progress || pending.is_empty() {
            break;
        }
    }
    for (origin, incarnation, first, last, _) in pending {
        let replica = crate::sync::entry::replica_id(origin, incarnation);
        refusals.push(format!(
            "chunk {replica}:{first}..={last}: no key is known for device {origin}"
        ));
    }
    let mut unsealed = 0usize;
    for (i, e) in entries.iter().enumerate() {
        if !ok[i] && index.get(&e.id()) == Some(&i) && e.seal.is_none() {
            unsealed += 1;
        }
    }
    if unsealed > 0 && refusals.is_empty() {
        refusals.push(format!(
            "{unsealed} entries are covered by no seal (unsigned, or their chunk's seal is missing)"
        ));
    }
    Ok((ok, refusals))
}

/// A sealed chunk of a batch: its origin, incarnation, range and the indices
/// of its entries.
type Chunk = (Uuid, u64, u64, u64, Vec<usize>);

/// The sealed chunks of a batch whose entries are all there (the first copy of
/// each); a seal over an impossible range or a chunk with entries missing is a
/// refusal.
fn sealed_chunks(
    entries: &[LogEntry],
    index: &HashMap<(Uuid, u64), usize>,
    refusals: &mut Refusals,
) -> Vec<Chunk> {
    let mut pending: Vec<Chunk> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(seal) = e.seal else { continue };
        if index.get(&e.id()) != Some(&i) {
            continue;
        }
        let (first, last) = (seal.first, e.origin_seq);
        if first == 0 || first > last || last - first >= CHUNK_ENTRIES {
            refusals.push(format!(
                "entry {}:{last} carries a seal over an impossible range from {first}",
                e.replica()
            ));
            continue;
        }
        let replica = e.replica();
        let members: Option<Vec<usize>> = (first..=last)
            .map(|s| index.get(&(replica, s)).copied())
            .collect();
        match members {
            Some(m) => pending.push((e.origin, e.incarnation, first, last, m)),
            None => refusals.push(format!(
                "chunk {replica}:{first}..={last} arrived incomplete (a sender must not split a chunk)"
            )),
        }
    }
    pending
}

/// The node id `origin`'s own chunk writes into its own `Device` row: the key a
/// device's first registration certifies itself with.
fn own_registration(entries: &[LogEntry], members: &[usize], origin: Uuid) -> Option<[u8; 32]> {
    members
        .iter()
        .flat_map(|&i| registrations(&entries[i]))
        .find(|(device, _)| *device == origin)
        .map(|(_, k)| k)
}

/// The `(device, node key)` an entry writes into a `Device` row, if it does.
fn registrations(e: &LogEntry) -> Option<(Uuid, [u8; 32])> {
    if e.model != <crate::model::Device as crate::model::Syncable>::INFO.name {
        return None;
    }
    let info = <crate::model::Device as crate::model::Syncable>::INFO;
    let field = info.fields.iter().position(|f| f.name == "node_id")? as u16;
    let writes: &[FieldWrite] = match &e.op {
        Op::Insert(w) | Op::Update(w) => w,
        _ => return None,
    };
    writes
        .iter()
        .find(|w| w.field == field)
        .and_then(|w| match &w.value {
            Value::Text(s) => parse_node_id(s).map(|k| (e.record, k)),
            _ => None,
        })
}

/// Per entry of `entries` (whole chunks, in the order a log read returns
/// them): whether a page may end after it. Not inside a chunk: it carries a
/// seal, or no later seal of its origin's consecutive run covers it (entries
/// kept from before seals belong to no chunk).
fn chunk_ends(entries: &[LogEntry]) -> Vec<bool> {
    let mut ends = vec![true; entries.len()];
    let mut covering: Option<u64> = None;
    for k in (0..entries.len()).rev() {
        let e = &entries[k];
        let linked = entries
            .get(k + 1)
            .is_some_and(|n| n.replica() == e.replica() && n.origin_seq == e.origin_seq + 1);
        if !linked {
            covering = None;
        }
        if let Some(seal) = e.seal {
            covering = Some(seal.first);
        } else if covering.is_some_and(|first| first <= e.origin_seq) {
            ends[k] = false;
        } else {
            covering = None;
        }
    }
    ends
}

/// Where a page of `entries` (whole chunks, in the order a log read returns
/// them) may end, at most `limit` entries in, without splitting a chunk: after
/// the last chunk that ends by then; when the first chunk alone is longer than
/// `limit`, after that chunk.
pub fn page_end(entries: &[LogEntry], limit: usize) -> usize {
    if entries.len() <= limit {
        return entries.len();
    }
    let ends = chunk_ends(entries);
    if let Some(k) = (1..=limit).rev().find(|&k| ends[k - 1]) {
        return k;
    }
    (limit.max(1)..=entries.len())
        .find(|&k| ends[k - 1])
        .unwrap_or(entries.len())
}

/// Cut a log read to end at the first chunk boundary at or after `limit`
/// entries (it was read in whole segments, which hold whole chunks), so that a
/// read's limit never splits a chunk.
pub(crate) fn cut_after(entries: &mut Vec<LogEntry>, limit: usize) {
    if entries.len() <= limit || limit == 0 {
        entries.truncate(limit);
        return;
    }
    let ends = chunk_ends(entries);
    let end = (limit..=entries.len())
        .find(|&k| ends[k - 1])
        .unwrap_or(entries.len());
    entries.truncate(end);
}

/// Seal `entries` (consecutive entries of one replica, in order) with `key` in
/// chunks from the first, as that origin's log would: for tools that build
/// entries outside a library, the simulation's forger and tests.
pub fn seal_entries(key: &NodeKey, library: Uuid, entries: &mut [LogEntry]) {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return;
    };
    let mut sealer = RunSealer::new(
        key,
        library,
        (first.origin, first.incarnation),
        first.origin_seq,
        last.origin_seq,
    );
    let mut bytes = Vec::new();
    for e in entries.iter() {
        bytes.clear();
        e.signed_bytes(&mut bytes);
        sealer.add(&bytes);
    }
    for e in entries.iter_mut() {
        e.seal = None;
    }
    let base = entries[0].origin_seq;
    for (last, seal) in sealer.seals {
        if let Some(e) = entries.get_mut((last - base) as usize) {
            e.seal = Some(seal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::entry::FieldWrite;

    fn entry(origin: u128, seq: u64) -> LogEntry {
        LogEntry {
            origin: Uuid::from_u128(origin),
            origin_seq: seq,
            incarnation: 0,
            hlc: seq,
            lib_seq: None,
            epoch: None,
            model: "tag".into(),
            record: Uuid::from_u128(seq as u128),
            op: Op::Update(vec![FieldWrite {
                field: 0,
                value: Value::Text(format!("t{seq}")),
                base: 0,
            }]),
            seal: None,
        }
    }

    /// Origin 1's 1..=600 sealed as a log would (chunks 1..=256, 257..=512,
    /// 513..=600), then origin 2's 1..=3 from before seals.
    fn log() -> Vec<LogEntry> {
        let key = NodeKey::from_bytes(&[1; 32]);
        let mut a: Vec<LogEntry> = (1..=600).map(|s| entry(1, s)).collect();
        seal_entries(&key, Uuid::nil(), &mut a);
        a.extend((1..=3).map(|s| entry(2, s)));
        a
    }

    #[test]
    fn pages_and_reads_end_at_chunk_boundaries() {
        let all = log();
        let sealed: Vec<u64> = all
            .iter()
            .filter(|e| e.seal.is_some())
            .map(|e| e.origin_seq)
            .collect();
        assert_eq!(sealed, vec![256, 512, 600]);
        // A page of at most 300 ends after the first chunk; of at most 100,
        // after it too (a chunk is never split, even past the limit).
        assert_eq!(page_end(&all, 300), 256);
        assert_eq!(page_end(&all, 100), 256);
        assert_eq!(page_end(&all, 1000), all.len());
        // Unsealed entries belong to no chunk: a page may end between them.
        assert_eq!(page_end(&all, 601), 601);
        // A read cut at 300 goes on to the end of the chunk 300 falls in.
        let mut read = all.clone();
        cut_after(&mut read, 300);
        assert_eq!(read.len(), 512);
    }

    #[test]
    fn a_chunk_verifies_whole_and_only_whole() {
        struct Keys;
        impl KeySource for Keys {
            fn key_of(&mut self, _: Uuid) -> Result<Option<[u8; 32]>> {
                Ok(parse_node_id(&NodeKey::from_bytes(&[1; 32]).node_id()))
            }
        }
        let all = log();
        let (ok, refusals) = verify_entries(Uuid::nil(), &all[..600], &mut Keys).unwrap();
        assert!(
            ok.iter().all(|ok| *ok) && refusals.is_empty(),
            "{refusals:?}"
        );
        // Another library's seal does not verify here.
        let (ok, _) = verify_entries(Uuid::from_u128(9), &all[..600], &mut Keys).unwrap();
        assert!(ok.iter().all(|ok| !*ok));
        // Without its first entry, the first chunk is refused; the others stand.
        let (ok, refusals) = verify_entries(Uuid::nil(), &all[1..600], &mut Keys).unwrap();
        assert_eq!(ok.iter().filter(|ok| **ok).count(), 600 - 256);
        assert!(refusals[0].contains("incomplete"), "{refusals:?}");
        // Unsealed entries are refused.
        let (ok, _) = verify_entries(Uuid::nil(), &all[600..], &mut Keys).unwrap();
        assert!(ok.iter().all(|ok| !*ok));
    }
}
