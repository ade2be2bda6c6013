//! The sync service's durable state in `sync.db`: the term, sequencing, pruning
//! floors and peer acknowledgements.

use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use super::protocol::Term;
use crate::error::{Error, Result};
use crate::sync::entry::LogEntry;
use crate::sync::log::{trim_segment, walk_contiguous, SyncLog, VersionVector};
use crate::sync::segment::{segment_from_row, SEGMENT_COLUMNS};

impl SyncLog {
    /// The last term this device adopted, if any.
    pub fn term(&self) -> Result<Option<Term>> {
        let epoch: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'term_epoch'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let leader: Option<Uuid> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'term_leader'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match (epoch, leader) {
            (Some(e), Some(l)) => Some(Term {
                epoch: e as u64,
                leader: l,
            }),
            _ => None,
        })
    }

    /// Persist a term.
    pub fn set_term(&mut self, term: Term) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('term_epoch', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [term.epoch as i64],
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('term_leader', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [term.leader],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Leader: give every unsequenced entry the next library sequence number, in
    /// log order (segment by segment: a segment's entries get consecutive
    /// numbers). Returns the range assigned, if any.
    pub fn sequence_pending(&mut self, epoch: u64) -> Result<Option<(u64, u64)>> {
        let top = self.latest_seq()?.unwrap_or(0);
        let tx = self.conn.transaction()?;
        // Read off the partial index `segments_unsequenced`.
        let pending: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, last_seq - first_seq + 1 FROM segments WHERE lib_seq IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut next = top + 1;
        {
            let mut upd =
                tx.prepare_cached("UPDATE segments SET lib_seq = ?1, epoch = ?2 WHERE id = ?3")?;
            for (id, n) in &pending {
                upd.execute(params![next as i64, epoch as i64, id])?;
                next += *n as u64;
            }
        }
        if pending.is_empty() {
            return Ok(None);
        }
        // Numbering goes on from here even if pruning removes every entry
        // numbered so far (`latest_seq` reads this too).
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('sequenced_through', ?1)
             ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
        )?
        .execute([(next - 1) as i64])?;
        tx.commit()?;
        Ok(Some((top + 1, next - 1)))
    }

    /// Entries of one origin after `after_seq`, in order.
    pub fn fetch_origin(
        &self,
        origin: Uuid,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        // Claim every other origin complete, so only `origin` has anything missing.
        let mut vv: VersionVector = self
            .version_vector()?
            .into_keys()
            .map(|o| (o, i64::MAX as u64))
            .collect();
        vv.insert(origin, after_seq);
        self.fetch_missing(&vv, limit)
    }

    /// Per origin, the highest `origin_seq` pruned from this log.
    pub fn pruned_floor(&self) -> Result<VersionVector> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT origin, through FROM pruned")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Uuid>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
            tx.execute(
                "INSERT INTO pruned (origin, through) VALUES (?1, ?2)
                 ON CONFLICT(origin) DO UPDATE SET through = MAX(through, excluded.through)",
                params![origin, *through as i64],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// After a snapshot: this device now holds, as state, everything up to `vv`.
    pub fn raise_version_vector(&mut self, vv: &VersionVector, max_hlc: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        for (origin, seq) in vv {
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
            tx.execute(
                "INSERT INTO pruned (origin, through) VALUES (?1, ?2)
                 ON CONFLICT(origin) DO UPDATE SET through = MAX(through, excluded.through)",
                params![origin, *seq as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Persist a stamp absorbed outside the log (snapshot rows), so the HLC
    /// re-seeded on open stays above every clock stored in `library.db`.
    pub fn raise_hlc_floor(&mut self, hlc: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('hlc_floor', ?1)
             ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            [hlc as i64],
        )?;
        Ok(())
    }

    /// Record what a peer acknowledged and when.
    pub fn record_ack(&mut self, device: Uuid, vv: &VersionVector, at_ms: u64) -> Result<()> {
        let bytes = postcard::to_allocvec(vv).map_err(|e| Error::Other(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO peer_acks (device, vv, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device) DO UPDATE SET vv = excluded.vv, at = excluded.at",
            )?
            .execute(params![device, bytes, at_ms as i64])?;
        Ok(())
    }

    /// Every peer's last acknowledgement: `(device, vv, at_ms)`.
    pub fn acks(&self) -> Result<Vec<(Uuid, VersionVector, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device, vv, at FROM peer_acks")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Uuid>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (d, b, at) = row?;
            let vv: VersionVector = postcard::from_bytes(&b).unwrap_or_default();
            out.push((d, vv, at as u64));
        }
        Ok(out)
    }
}

/// Elementwise minimum of version vectors (an origin missing from one counts as 0).
pub fn vv_min<'a>(vvs: impl IntoIterator<Item = &'a VersionVector>) -> VersionVector {
    let mut iter = vvs.into_iter();
    let Some(first) = iter.next() else {
        return VersionVector::new();
    };
    let mut out = first.clone();
    for vv in iter {
        for (origin, seq) in out.iter_mut() {
            *seq = (*seq).min(vv.get(origin).copied().unwrap_or(0));
        }
    }
    out.retain(|_, s| *s > 0);
    out
}

/// Entries `a` has that `b` lacks, counted per origin.
pub fn vv_lag(a: &VersionVector, b: &VersionVector) -> u64 {
    a.iter()
        .map(|(o, s)| s.saturating_sub(b.get(o).copied().unwrap_or(0)))
        .sum()
}

/// Whether `a` covers everything in `b`.
pub fn vv_covers(a: &VersionVector, b: &VersionVector) -> bool {
    b.iter().all(|(o, s)| a.get(o).copied().unwrap_or(0) >= *s)
}
