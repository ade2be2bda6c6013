//! The log's side of sealed chunks (`crate::sync::seal`): the `seals` table
//! (one row per chunk, keyed by its replica and last `origin_seq`; the column
//! `origin` holds the replica id, as in `segments`), sealing this
//! device's entries where they enter the log, and putting each seal back on
//! the entry that carries it when entries are read to be sent.

use rusqlite::{params, Transaction};
use uuid::Uuid;

use super::SyncLog;
use crate::error::Result;
use crate::sync::entry::{signed_bytes_of, LogEntry};
use crate::sync::seal::{NodeKey, RunSealer, Seal};
use crate::sync::segment::{raw_entries, Run};

/// Store chunk seals of `replica`, each keyed by its chunk's last `origin_seq`.
pub(super) fn store_seals(
    tx: &Transaction<'_>,
    replica: Uuid,
    seals: &[(u64, Seal)],
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO seals (origin, last_seq, first_seq, sig) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (last, seal) in seals {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&seal.sig[0]);
        sig[32..].copy_from_slice(&seal.sig[1]);
        stmt.execute(params![replica, *last as i64, seal.first as i64, &sig[..]])?;
    }
    Ok(())
}

/// Seal the entries of `run` from `from_seq` on (those not held before), in
/// chunks, reading them raw from the run's blob (no decoding).
pub(super) fn seal_run(
    tx: &Transaction<'_>,
    key: &NodeKey,
    library: Uuid,
    run: &Run,
    from_seq: u64,
) -> Result<()> {
    if from_seq > run.last_seq {
        return Ok(());
    }
    let origin = (run.origin, run.incarnation);
    let mut sealer = RunSealer::new(key, library, origin, from_seq, run.last_seq);
    let mut bytes = Vec::with_capacity(256);
    for (seq, raw) in (run.first_seq..).zip(raw_entries(&run.blob)) {
        let raw = raw?;
        if seq < from_seq {
            continue;
        }
        bytes.clear();
        signed_bytes_of(
            (run.origin, run.incarnation, seq),
            raw.hlc,
            raw.model,
            &raw.record,
            &mut bytes,
            |buf| {
                let mut buf = std::mem::take(buf);
                buf.extend_from_slice(raw.payload);
                buf
            },
        );
        sealer.add(&bytes);
    }
    store_seals(tx, run.replica(), &sealer.seals)
}

/// Seal entries already decoded (all of one replica, consecutive).
pub(super) fn seal_entries(
    tx: &Transaction<'_>,
    key: &NodeKey,
    library: Uuid,
    entries: &mut [LogEntry],
) -> Result<()> {
    let Some(replica) = entries.first().map(|e| e.replica()) else {
        return Ok(());
    };
    crate::sync::seal::seal_entries(key, library, entries);
    let seals: Vec<(u64, Seal)> = entries
        .iter()
        .filter_map(|e| e.seal.map(|s| (e.origin_seq, s)))
        .collect();
    store_seals(tx, replica, &seals)
}

impl SyncLog {
    /// Seal, from now on, the entries this device originates as they enter
    /// the log, with `key`, for library `library`.
    pub fn set_sealer(&mut self, library: Uuid, key: NodeKey) {
        self.sealer = Some((library, key));
    }

    /// Seal this device's entries that entered the log unsealed (a log from
    /// before seals, or written while no key was at hand): in each of
    /// `device`'s replicas (every incarnation it held), everything above the
    /// replica's highest seal. A no-op without a sealer.
    pub fn seal_own_unsealed(&mut self, device: Uuid) -> Result<()> {
        if self.sealer.is_none() {
            return Ok(());
        }
        let replicas: Vec<Uuid> = {
            let mut stmt = self
                .conn
                .prepare("SELECT DISTINCT origin FROM segments WHERE origin = ?1 OR device = ?1")?;
            let rows = stmt.query_map([device], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for replica in replicas {
            self.seal_unsealed_of(replica)?;
        }
        Ok(())
    }

    /// [`SyncLog::seal_own_unsealed`] for one replica.
    fn seal_unsealed_of(&mut self, replica: Uuid) -> Result<()> {
        let Some((library, key)) = self.sealer.clone() else {
            return Ok(());
        };
        let sealed: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(last_seq), 0) FROM seals WHERE origin = ?1",
            [replica],
            |r| r.get(0),
        )?;
        let mut entries = Vec::new();
        super::query_segments(
            &self.conn,
            &format!(
                "SELECT {} FROM segments WHERE origin = ?1 AND last_seq > ?2 ORDER BY last_seq",
                crate::sync::segment::SEGMENT_COLUMNS
            ),
            params![replica, sealed],
            |seg| {
                seg.entries_between(sealed as u64 + 1, u64::MAX, &mut entries)?;
                Ok(true)
            },
        )?;
        if entries.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        // Chunks of consecutive entries only (pruning or gaps may interrupt).
        let mut start = 0;
        for k in 1..=entries.len() {
            if k == entries.len() || entries[k].origin_seq != entries[k - 1].origin_seq + 1 {
                seal_entries(&tx, &key, library, &mut entries[start..k])?;
                start = k;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether a received chunk `first..=last` of `replica`, sealed with
    /// `seal`, differs from what this log holds for those positions: `Some`
    /// (the stored chunk, as `first..=last`) when a stored seal overlaps the
    /// range and is not the same chunk with the same signature. An honest
    /// origin seals each position once, in one chunk, and ed25519 signatures
    /// are deterministic, so a different seal means different content: two
    /// changes under one position (a bug, a forged peer, an undetected
    /// rollback). `None` when they agree or nothing stored can tell.
    pub fn seal_conflict(&self, replica: Uuid, seal: &Seal, last: u64) -> Result<Option<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_seq, last_seq, sig FROM seals
             WHERE origin = ?1 AND last_seq >= ?2 AND first_seq <= ?3",
        )?;
        let mut rows = stmt.query(params![replica, seal.first as i64, last as i64])?;
        while let Some(r) = rows.next()? {
            let first = r.get::<_, i64>(0)? as u64;
            let stored_last = r.get::<_, i64>(1)? as u64;
            let sig = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            let same = first == seal.first
                && stored_last == last
                && sig.len() == 64
                && sig[..32] == seal.sig[0]
                && sig[32..] == seal.sig[1];
            if !same {
                return Ok(Some(format!("{first}..={stored_last}")));
            }
        }
        Ok(None)
    }

    /// Put each stored seal on the entry that carries it (the last of its
    /// chunk), for entries read to be sent.
    pub(super) fn attach_seals(&self, entries: &mut [LogEntry]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT last_seq, first_seq, sig FROM seals
             WHERE origin = ?1 AND last_seq >= ?2 AND last_seq <= ?3",
        )?;
        let mut start = 0;
        while start < entries.len() {
            let replica = entries[start].replica();
            let mut end = start + 1;
            while end < entries.len()
                && entries[end].replica() == replica
                && entries[end].origin_seq == entries[end - 1].origin_seq + 1
            {
                end += 1;
            }
            let (lo, hi) = (entries[start].origin_seq, entries[end - 1].origin_seq);
            let mut rows = stmt.query(params![replica, lo as i64, hi as i64])?;
            while let Some(r) = rows.next()? {
                let last = r.get::<_, i64>(0)? as u64;
                let first = r.get::<_, i64>(1)? as u64;
                let sig = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
                if sig.len() != 64 {
                    continue;
                }
                let mut halves = [[0u8; 32]; 2];
                halves[0].copy_from_slice(&sig[..32]);
                halves[1].copy_from_slice(&sig[32..]);
                let e = &mut entries[start + (last - lo) as usize];
                e.seal = Some(Seal { first, sig: halves });
            }
            start = end;
        }
        Ok(())
    }
}
