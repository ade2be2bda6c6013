//! What the log holds as state rather than as entries: pruning entries every
//! device has, and positions raised by a snapshot.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rows::{trim_segment, walk_contiguous};
use super::{query_version_vector, SyncLog};
use crate::error::Result;
use crate::store::meta::{key, meta_raise};
use crate::sync::segment::{segment_from_row, SEGMENT_COLUMNS};
use crate::sync::version_vector::VersionVector;

impl SyncLog {
    /// Per origin, the highest `origin_seq` pruned from this log.
    pub fn pruned_floor(&self) -> Result<VersionVector> {
        query_version_vector(&self.conn, "SELECT origin, through FROM pruned")
    }

    /// Remove entries every device has (`horizon`: per origin, the highest
    /// `origin_seq` all registered devices hold). Returns how many went.
    ///
    /// Never past what this log holds itself: a horizon from a leader that no
    /// longer counts this device may run ahead of it, and a pruned floor above
    /// the version vector would make every peer that reconciles here take a
    /// snapshot that cannot lift it over that floor, forever.
    pub fn prune_covered(&mut self, horizon: &VersionVector) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for (origin, through) in horizon {
            let held: Option<i64> = tx
                .query_row(
                    "SELECT contiguous FROM origins WHERE origin = ?1",
                    [origin],
                    |r| r.get(0),
                )
                .optional()?;
            let through = &(*through).min(held.unwrap_or(0) as u64);
            if *through == 0 {
                continue;
            }
            n += tx.query_row(
                "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments
                 WHERE origin = ?1 AND last_seq <= ?2",
                params![origin, *through as i64],
                |r| r.get::<_, i64>(0),
            )? as u64;
            tx.execute(
                "DELETE FROM segments WHERE origin = ?1 AND last_seq <= ?2",
                params![origin, *through as i64],
            )?;
            tx.execute(
                "DELETE FROM seals WHERE origin = ?1 AND last_seq <= ?2",
                params![origin, *through as i64],
            )?;
            // The segment `through` falls inside keeps the entries after it.
            let partial = tx
                .query_row(
                    &format!(
                        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE origin = ?1 AND last_seq > ?2
                         ORDER BY last_seq LIMIT 1"
                    ),
                    params![origin, *through as i64],
                    segment_from_row,
                )
                .optional()?;
            if let Some(seg) = partial {
                n += trim_segment(&tx, &seg, through + 1)?;
            }
            raise_pruned(&tx, *origin, *through)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// After a snapshot: this device now holds, as state, everything up to `vv`.
    pub fn raise_version_vector(&mut self, vv: &VersionVector, max_hlc: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        // The reserved key of a compact vector is no replica.
        for (origin, seq) in vv.iter().filter(|(o, _)| **o != super::RETIRED_KEY) {
            tx.execute(
                "INSERT INTO origins (origin, contiguous, max_seq, max_hlc) VALUES (?1, ?2, ?2, ?3)
                 ON CONFLICT(origin) DO UPDATE SET contiguous = MAX(contiguous, excluded.contiguous),
                   max_seq = MAX(max_seq, excluded.max_seq), max_hlc = MAX(max_hlc, excluded.max_hlc)",
                params![origin, *seq as i64, max_hlc as i64],
            )?;
            // Entries held beyond the new position (they arrived across a gap
            // the snapshot filled) extend it: they will never be "fresh" again.
            let (contiguous, max_seq): (i64, i64) = tx.query_row(
                "SELECT contiguous, max_seq FROM origins WHERE origin = ?1",
                [origin],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let start = contiguous;
            let contiguous = walk_contiguous(&tx, *origin, start as u64, max_seq as u64)? as i64;
            if contiguous != start {
                tx.execute(
                    "UPDATE origins SET contiguous = ?2 WHERE origin = ?1",
                    params![origin, contiguous],
                )?;
            }
            // Entries this device cannot serve any more: it holds them only as state.
            raise_pruned(&tx, *origin, *seq)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Persist a stamp absorbed outside the log (snapshot rows), so the HLC
    /// re-seeded on open stays above every clock stored in `library.db`.
    pub fn raise_hlc_floor(&mut self, hlc: u64) -> Result<()> {
        meta_raise(&self.conn, key::HLC_FLOOR, hlc as i64)
    }
}

/// Record that entries of `origin` up to `through` are no longer served from
/// this log (the floor only rises).
fn raise_pruned(tx: &Connection, origin: Uuid, through: u64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO pruned (origin, through) VALUES (?1, ?2)
         ON CONFLICT(origin) DO UPDATE SET through = MAX(through, excluded.through)",
    )?
    .execute(params![origin, through as i64])?;
    Ok(())
}
