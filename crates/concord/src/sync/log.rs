//! The sync log: append-only entries in `sync.db` (DESIGN §1.2).
//!
//! Entries are never rewritten, except that a leader fills in the library sequence
//! and epoch once; they leave only through [`SyncLog::prune_below`]. `origins`
//! keeps, per origin device, the highest `origin_seq` up to which the log holds
//! every entry (`contiguous`, the version vector) and the highest stamp seen, which
//! survive pruning.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sync::entry::{LogEntry, Op};

/// Per-origin highest contiguous `origin_seq`.
pub type VersionVector = BTreeMap<Uuid, u64>;

/// A log entry in its stored form: the operation encoded (`Op::encode`), its kind
/// code alongside.
pub(crate) struct StoredEntry<'a> {
    pub origin: Uuid,
    pub origin_seq: u64,
    pub hlc: u64,
    pub lib_seq: Option<u64>,
    pub epoch: Option<u64>,
    pub model: &'a str,
    pub record: Uuid,
    pub kind: i64,
    pub payload: std::borrow::Cow<'a, [u8]>,
}

/// The log in one `sync.db` connection.
pub struct SyncLog {
    pub(crate) conn: Connection,
}

const ENTRY_COLUMNS: &str = "origin, origin_seq, hlc, lib_seq, epoch, model, record, payload";

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
    Ok((
        r.get(0)?,
        r.get::<_, i64>(1)? as u64,
        r.get::<_, i64>(2)? as u64,
        r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

type RawEntry = (
    Uuid,
    u64,
    u64,
    Option<u64>,
    Option<u64>,
    String,
    Uuid,
    Vec<u8>,
);

fn decode(raw: RawEntry) -> Result<LogEntry> {
    let (origin, origin_seq, hlc, lib_seq, epoch, model, record, payload) = raw;
    Ok(LogEntry {
        origin,
        origin_seq,
        hlc,
        lib_seq,
        epoch,
        model,
        record,
        op: Op::decode(&payload)?,
    })
}

impl SyncLog {
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Append entries in one transaction; entries already present (same origin and
    /// `origin_seq`) are skipped. Returns the entries that were new.
    pub fn append(&mut self, entries: &[LogEntry]) -> Result<Vec<usize>> {
        self.append_stored(entries.iter().map(|e| StoredEntry {
            origin: e.origin,
            origin_seq: e.origin_seq,
            hlc: e.hlc,
            lib_seq: e.lib_seq,
            epoch: e.epoch,
            model: &e.model,
            record: e.record,
            kind: e.op.kind(),
            payload: std::borrow::Cow::Owned(e.op.encode()),
        }))
    }

    /// [`SyncLog::append`] for entries whose operation is already encoded (the
    /// outbox holds them so): no decoding and encoding again on the way.
    pub(crate) fn append_stored<'a>(
        &mut self,
        entries: impl IntoIterator<Item = StoredEntry<'a>>,
    ) -> Result<Vec<usize>> {
        let tx = self.conn.transaction()?;
        let mut fresh = Vec::new();
        let mut per_origin: HashMap<Uuid, (Vec<u64>, u64)> = HashMap::new();
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO log (origin, origin_seq, hlc, lib_seq, epoch, model, record, kind, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (i, e) in entries.into_iter().enumerate() {
                let n = ins.execute(params![
                    e.origin,
                    e.origin_seq as i64,
                    e.hlc as i64,
                    e.lib_seq.map(|v| v as i64),
                    e.epoch.map(|v| v as i64),
                    e.model,
                    e.record,
                    e.kind,
                    e.payload.as_ref(),
                ])?;
                if n == 1 {
                    fresh.push(i);
                    let slot = per_origin
                        .entry(e.origin)
                        .or_insert_with(|| (Vec::new(), 0));
                    slot.0.push(e.origin_seq);
                    slot.1 = slot.1.max(e.hlc);
                }
            }
        }
        for (origin, (mut seqs, max_hlc)) in per_origin {
            seqs.sort_unstable();
            update_origin(&tx, origin, &seqs, max_hlc)?;
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// Highest `origin_seq` up to which the log holds (or held before pruning)
    /// every entry of `origin`: the version-vector position, 0 if none.
    pub fn contiguous(&self, origin: Uuid) -> Result<u64> {
        let contiguous: Option<i64> = self
            .conn
            .prepare_cached("SELECT contiguous FROM origins WHERE origin = ?1")?
            .query_row([origin], |r| r.get(0))
            .optional()?;
        Ok(contiguous.unwrap_or(0) as u64)
    }

    /// Whether the log holds (or held before pruning) this entry.
    pub fn contains(&self, origin: Uuid, origin_seq: u64) -> Result<bool> {
        if origin_seq <= self.contiguous(origin)? {
            return Ok(true);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM log WHERE origin = ?1 AND origin_seq = ?2")?
            .query_row(params![origin, origin_seq as i64], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Entries after local position `after_id` (the `log.id` column), in append order.
    pub fn fetch_after_id(&self, after_id: i64, limit: usize) -> Result<Vec<(i64, LogEntry)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, {ENTRY_COLUMNS} FROM log WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after_id, limit as i64], |r| {
            let id: i64 = r.get(0)?;
            let raw = (
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            );
            Ok((id, raw))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, raw) = row?;
            out.push((id, decode(raw)?));
        }
        Ok(out)
    }

    /// Entries with a library sequence above `since`, in sequence order.
    pub fn fetch_since_seq(&self, since: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM log WHERE lib_seq > ?1 ORDER BY lib_seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![since as i64, limit as i64], row_to_entry)?;
        rows.map(|r| decode(r?)).collect()
    }

    /// Entries the holder of `vv` lacks, oldest first per origin, at most `limit`.
    pub fn fetch_missing(&self, vv: &VersionVector, limit: usize) -> Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        let origins: Vec<Uuid> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT origin FROM origins ORDER BY origin")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM log WHERE origin = ?1 AND origin_seq > ?2 ORDER BY origin_seq LIMIT ?3"
        ))?;
        for origin in origins {
            if out.len() >= limit {
                break;
            }
            let have = vv.get(&origin).copied().unwrap_or(0);
            let rows = stmt.query_map(
                params![origin, have as i64, (limit - out.len()) as i64],
                row_to_entry,
            )?;
            for r in rows {
                out.push(decode(r?)?);
            }
        }
        Ok(out)
    }

    /// Every entry about one record, in stamp order. Scans the log (there is no
    /// index by record; see the v3 migration of `sync.db`): for inspection, not
    /// for hot paths.
    pub fn fetch_record(&self, record: Uuid) -> Result<Vec<LogEntry>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM log WHERE record = ?1 ORDER BY hlc, origin"
        ))?;
        let rows = stmt.query_map([record], row_to_entry)?;
        rows.map(|r| decode(r?)).collect()
    }

    /// The version vector: per origin, the highest `origin_seq` below which the log
    /// has (or had before pruning) every entry.
    pub fn version_vector(&self) -> Result<VersionVector> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT origin, contiguous FROM origins")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Uuid>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Highest `origin_seq` seen from `origin` (0 if none).
    pub fn max_seq(&self, origin: Uuid) -> Result<u64> {
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT max_seq FROM origins WHERE origin = ?1")?
            .query_row([origin], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Highest HLC time of any entry ever logged (pruned ones included) or
    /// absorbed outside the log (snapshot rows, see `raise_hlc_floor`).
    pub fn max_hlc(&self) -> Result<u64> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT MAX(m) FROM (SELECT MAX(max_hlc) AS m FROM origins
             UNION ALL SELECT value FROM meta WHERE key = 'hlc_floor')",
            [],
            |r| r.get(0),
        )?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Highest local position (`log.id`), 0 when empty.
    pub fn latest_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM log", [], |r| r.get(0))?)
    }

    /// Highest library sequence assigned, if any.
    pub fn latest_seq(&self) -> Result<Option<u64>> {
        let v: Option<i64> = self
            .conn
            // The `IS NOT NULL` lets SQLite read the maximum off the partial
            // index `log_by_lib_seq` instead of scanning the whole log.
            .query_row(
                "SELECT MAX(lib_seq) FROM log WHERE lib_seq IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
        Ok(v.map(|v| v as u64))
    }

    /// Number of entries held.
    pub fn count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM log", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Assign library sequence numbers (leader only). Entries already sequenced
    /// keep theirs.
    pub fn sequence(&mut self, ids: &[(Uuid, u64)], first_seq: u64, epoch: u64) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let mut seq = first_seq;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE log SET lib_seq = ?1, epoch = ?2 WHERE origin = ?3 AND origin_seq = ?4 AND lib_seq IS NULL",
            )?;
            for (origin, oseq) in ids {
                if stmt.execute(params![seq as i64, epoch as i64, origin, *oseq as i64])? == 1 {
                    seq += 1;
                }
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    /// Remove sequenced entries below `horizon` (exclusive). Positions in `origins`
    /// are kept, so the version vector and HLC floor survive.
    pub fn prune_below(&mut self, horizon: u64) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM log WHERE lib_seq IS NOT NULL AND lib_seq < ?1",
            [horizon as i64],
        )?;
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('pruned_below', ?1)
             ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            [horizon as i64],
        )?;
        Ok(n as u64)
    }

    /// The sequence below which entries may have been pruned.
    pub fn pruned_below(&self) -> Result<u64> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'pruned_below'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }
}

/// Advance `contiguous` over the newly appended `seqs` (sorted) and any entries
/// beyond a previous gap.
fn update_origin(
    tx: &rusqlite::Transaction<'_>,
    origin: Uuid,
    seqs: &[u64],
    max_hlc: u64,
) -> Result<()> {
    let cur: Option<(i64, i64, i64)> = tx
        .prepare_cached("SELECT contiguous, max_seq, max_hlc FROM origins WHERE origin = ?1")?
        .query_row([origin], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (mut contiguous, mut max_seq, mut top_hlc) = cur.map_or((0u64, 0u64, 0u64), |(c, m, h)| {
        (c as u64, m as u64, h as u64)
    });
    let mut gap = false;
    for &s in seqs {
        if s == contiguous + 1 {
            contiguous = s;
        } else if s > contiguous + 1 {
            gap = true;
        }
        max_seq = max_seq.max(s);
    }
    if gap || max_seq > contiguous {
        // Entries beyond an earlier gap may already be here: walk forward.
        let mut stmt =
            tx.prepare_cached("SELECT 1 FROM log WHERE origin = ?1 AND origin_seq = ?2")?;
        while contiguous < max_seq
            && stmt
                .query_row(params![origin, (contiguous + 1) as i64], |_| Ok(()))
                .optional()?
                .is_some()
        {
            contiguous += 1;
        }
    }
    top_hlc = top_hlc.max(max_hlc);
    tx.prepare_cached(
        "INSERT INTO origins (origin, contiguous, max_seq, max_hlc) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(origin) DO UPDATE SET contiguous = excluded.contiguous,
           max_seq = excluded.max_seq, max_hlc = excluded.max_hlc",
    )?
    .execute(params![
        origin,
        contiguous as i64,
        max_seq as i64,
        top_hlc as i64
    ])?;
    if contiguous > i64::MAX as u64 {
        return Err(Error::Malformed("origin_seq out of range".into()));
    }
    Ok(())
}
