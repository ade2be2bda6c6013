//! The leader's part of the log: the adopted term and library sequencing.

use rusqlite::params;
use uuid::Uuid;

use super::SyncLog;
use crate::error::Result;
use crate::store::meta::{key, meta_get, meta_raise, meta_set};
use crate::sync::term::Term;

impl SyncLog {
    /// The last term this device adopted, if any.
    pub fn term(&self) -> Result<Option<Term>> {
        let epoch: Option<i64> = meta_get(&self.conn, key::TERM_EPOCH)?;
        let leader: Option<Uuid> = meta_get(&self.conn, key::TERM_LEADER)?;
        Ok(match (epoch, leader) {
            (Some(e), Some(l)) => Some(Term {
                epoch: e as u64,
                leader: l,
            }),
            _ => None,
        })
    }

    /// Persist an adopted term, unless a higher one is stored already (two
    /// adoptions racing to be written): the stored term never goes back, so a
    /// restarted device never sequences under a term it had left.
    pub fn set_term(&mut self, term: Term) -> Result<()> {
        let tx = self.conn.transaction()?;
        let epoch: Option<i64> = meta_get(&tx, key::TERM_EPOCH)?;
        let leader: Option<Uuid> = meta_get(&tx, key::TERM_LEADER)?;
        if let (Some(e), Some(l)) = (epoch, leader) {
            let stored = Term {
                epoch: e as u64,
                leader: l,
            };
            if stored >= term {
                return Ok(());
            }
            assert!(
                term.epoch >= stored.epoch,
                "stored epoch would go down from {} to {}",
                stored.epoch,
                term.epoch
            );
        }
        meta_set(&tx, key::TERM_EPOCH, term.epoch as i64)?;
        meta_set(&tx, key::TERM_LEADER, term.leader)?;
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
                // A segment numbers its entries `lib_seq ..= lib_seq + n - 1`:
                // with `n < 1` the next segment's numbers would overlap these.
                assert!(*n >= 1, "segment {id} holds {n} entries");
                upd.execute(params![next as i64, epoch as i64, id])?;
                next += *n as u64;
            }
        }
        if pending.is_empty() {
            return Ok(None);
        }
        debug_assert_eq!(
            next - (top + 1),
            pending.iter().map(|(_, n)| *n as u64).sum::<u64>(),
            "library sequences assigned are not consecutive"
        );
        // Numbering goes on from here even if pruning removes every entry
        // numbered so far (`latest_seq` reads this too).
        meta_raise(&tx, key::SEQUENCED_THROUGH, (next - 1) as i64)?;
        tx.commit()?;
        Ok(Some((top + 1, next - 1)))
    }
}
