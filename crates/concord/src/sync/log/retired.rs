//! Retired replicas: keeping version vectors small.
//!
//! Every library open writes under a new replica (an incarnation of its
//! device, see `crate::sync::entry::replica_id`), so without compaction a
//! vector would grow by one replica per open, forever. A replica is *retired*
//! at `last_seq` once it is superseded and every member holds it through
//! `last_seq` (the leader decides, `service/retire.rs`). The `retired` table
//! records it; its `origins` row stays, so the full vector
//! ([`SyncLog::version_vector`]) and everything that reads positions are
//! unchanged.
//!
//! The vector a device *sends* ([`SyncLog::compact_vector`]) leaves out every
//! retired replica it holds exactly through `last_seq`, and carries instead one
//! reserved key, [`RETIRED_KEY`], whose value is a digest of the retired set.
//! Two vectors with the same digest come from devices that retired the same
//! replicas at the same positions, and a device retires a replica only while
//! it holds it through `last_seq` (and positions never go back in one
//! `sync.db`), so such a vector is expanded back to the full one without loss
//! ([`SyncLog::expand_vector`]). A vector with another digest (a device that
//! missed a retirement, or restored from a backup from before it) is taken as
//! it is: a replica it leaves out counts as not held at all, so it is sent
//! what it lacks, or a snapshot when that was pruned. Comparing two compact
//! vectors with one digest is exact; with different digests, the reserved key
//! itself differs, so they never look equal.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use super::rows::origin_row;
use super::{query_version_vector, SyncLog};
use crate::error::Result;
use crate::sync::version_vector::VersionVector;

/// The key a compact vector carries its retired-set digest under. Never a
/// replica: device ids are v4/v7 UUIDs and replica ids v8, this is all ones.
pub const RETIRED_KEY: Uuid = Uuid::max();

/// Digest of a retired set: the XOR of a 63-bit hash of each `(replica,
/// last_seq)`, so it does not depend on order; never 0 for a set that is not
/// empty (0 means "nothing retired" and is not sent).
pub fn retired_digest<'a>(retired: impl IntoIterator<Item = &'a (Uuid, u64)>) -> u64 {
    let mut digest = 0u64;
    let mut any = false;
    for (replica, last_seq) in retired {
        let h = blake3::Hasher::new()
            .update(b"concord-retired\0")
            .update(replica.as_bytes())
            .update(&last_seq.to_le_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        digest ^= u64::from_le_bytes(first) & (i64::MAX as u64);
        any = true;
    }
    if any && digest == 0 {
        1
    } else {
        digest
    }
}

impl SyncLog {
    /// Every retired replica with the position it was retired at, by replica.
    pub fn retired(&self) -> Result<Vec<(Uuid, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT replica, last_seq FROM retired ORDER BY replica")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Uuid>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Record retirements, each only when this log holds its replica through
    /// `last_seq` (so a vector that leaves it out never claims more than the
    /// log holds) and it raises what is recorded. Returns how many were
    /// recorded. Anything else (unknown replicas, positions not held yet, the
    /// reserved key) is skipped: a device restored from a backup records a
    /// retirement once it holds the replica again.
    pub fn retire(&mut self, retired: &[(Uuid, u64)]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for (replica, last_seq) in retired {
            if *replica == RETIRED_KEY || *last_seq == 0 || *last_seq > i64::MAX as u64 {
                continue;
            }
            if origin_row(&tx, *replica)?.0 < *last_seq {
                continue;
            }
            let held: Option<i64> = tx
                .prepare_cached("SELECT last_seq FROM retired WHERE replica = ?1")?
                .query_row([replica], |r| r.get(0))
                .optional()?;
            if held.is_some_and(|h| h as u64 >= *last_seq) {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO retired (replica, last_seq) VALUES (?1, ?2)
                 ON CONFLICT(replica) DO UPDATE SET last_seq = excluded.last_seq",
            )?
            .execute(params![replica, *last_seq as i64])?;
            n += 1;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The vector this device sends and peers store: the full vector minus
    /// the retired replicas held exactly through their retirement, plus the
    /// digest of the retired set under [`RETIRED_KEY`] (absent when nothing
    /// is retired).
    pub fn compact_vector(&self) -> Result<VersionVector> {
        let mut vv = query_version_vector(
            &self.conn,
            "SELECT o.origin, o.contiguous FROM origins o LEFT JOIN retired r ON r.replica = o.origin
             WHERE r.last_seq IS NULL OR r.last_seq <> o.contiguous",
        )?;
        vv.remove(&RETIRED_KEY);
        let digest = retired_digest(&self.retired()?);
        if digest != 0 {
            vv.insert(RETIRED_KEY, digest);
        }
        Ok(vv)
    }

    /// A peer's compact vector as a full one, for comparing with this log:
    /// when its digest is this log's, each retired replica it leaves out is
    /// held through its retirement; otherwise what it leaves out counts as
    /// not held. The reserved key is dropped either way.
    pub fn expand_vector(&self, vv: &VersionVector) -> Result<VersionVector> {
        let mut out = vv.clone();
        let theirs = out.remove(&RETIRED_KEY).unwrap_or(0);
        if theirs == 0 {
            return Ok(out);
        }
        let retired = self.retired()?;
        if retired_digest(&retired) == theirs {
            for (replica, last_seq) in retired {
                out.entry(replica).or_insert(last_seq);
            }
        }
        Ok(out)
    }

    /// When this log last appended entries of `replica` it still holds: the
    /// local position (segment id) of its highest segment, `None` when none
    /// is held. Of two replicas of one device, the later appended is the
    /// one it wrote under more recently, as far as this log knows.
    pub fn appended_at(&self, replica: Uuid) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM segments WHERE origin = ?1 ORDER BY last_seq DESC LIMIT 1",
            )?
            .query_row([replica], |r| r.get(0))
            .optional()?)
    }

    /// Replicas this log could retire now, with the position: held without
    /// a gap through `contiguous` (nothing held beyond it), and not retired
    /// there yet. Whether they are superseded and every member holds them is
    /// the caller's to check.
    pub fn retire_candidates(&self) -> Result<Vec<(Uuid, u64)>> {
        let retired: BTreeMap<Uuid, u64> = self.retired()?.into_iter().collect();
        let mut stmt = self.conn.prepare_cached(
            "SELECT origin, contiguous FROM origins WHERE contiguous > 0 AND contiguous = max_seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Uuid>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (replica, contiguous) = row?;
            if replica != RETIRED_KEY && retired.get(&replica).is_none_or(|at| *at < contiguous) {
                out.push((replica, contiguous));
            }
        }
        Ok(out)
    }
}
