//! The sync log: append-only entries in `sync.db` (DESIGN §1.2).
//!
//! Entries are stored in **segments** (see [`crate::sync::segment`]): one row per
//! run of consecutive entries of one origin, so a transaction of 1,000 changes
//! costs one row here. Entries are never rewritten, except that a leader fills in
//! the library sequence and epoch of a whole segment once, and pruning drops a
//! prefix of a segment; they leave only through pruning. `origins` keeps, per
//! origin device, the highest `origin_seq` up to which the log holds every entry
//! (`contiguous`, the version vector) and the highest stamp seen, which survive
//! pruning.
//!
//! Invariants of the `segments` table: the segments of one origin never overlap
//! (each entry is stored once), and a sequenced segment's entries have
//! consecutive library sequences starting at its `lib_seq`. A segment's position
//! in the log (`id`) is its local append order: replay after a crash and a
//! leader's sequencing both follow it.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sync::entry::LogEntry;
use crate::sync::segment::{self, segment_from_row, Run, Segment, SEGMENT_COLUMNS};

/// Per-origin highest contiguous `origin_seq`.
pub type VersionVector = BTreeMap<Uuid, u64>;

/// Local segments merged into one row when the outbox is moved into the log,
/// at most (a single larger transaction stays one segment).
pub(crate) const MERGE_SEGMENT_ENTRIES: u64 = 1024;

/// The log in one `sync.db` connection.
pub struct SyncLog {
    pub(crate) conn: Connection,
}

fn query_segments(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut each: impl FnMut(Segment) -> Result<bool>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        if !each(segment_from_row(r)?)? {
            break;
        }
    }
    Ok(())
}

impl SyncLog {
    /// Open the log in `conn` (a `sync.db` brought up to date by
    /// [`crate::store::open_db`]), converting a log written before segments
    /// (see [`crate::store::legacy::convert_v3_log`]).
    pub fn open(mut conn: Connection) -> Result<Self> {
        crate::store::legacy::convert_v3_log(&mut conn)?;
        Ok(Self { conn })
    }

    /// Append entries in one transaction; entries already present (same origin and
    /// `origin_seq`) are skipped. Returns the indices of the entries that were new,
    /// in ascending order.
    pub fn append(&mut self, entries: &[LogEntry]) -> Result<Vec<usize>> {
        let refs: Vec<&LogEntry> = entries.iter().collect();
        self.append_refs(&refs)
    }

    /// [`SyncLog::append`] over borrowed entries.
    pub(crate) fn append_refs(&mut self, entries: &[&LogEntry]) -> Result<Vec<usize>> {
        let tx = self.conn.transaction()?;
        let fresh = append_in(&tx, entries)?;
        tx.commit()?;
        Ok(fresh)
    }

    /// Store runs of local entries (the outbox) in one transaction. A run that
    /// starts above everything held of its origin is stored as it is; one that
    /// may overlap what is held (a crash after an earlier move) is decoded and
    /// appended entry by entry, skipping what is held.
    pub(crate) fn append_runs(&mut self, runs: Vec<Run>) -> Result<()> {
        let tx = self.conn.transaction()?;
        for run in runs {
            let (contiguous, max_seq, max_hlc) = origin_row(&tx, run.origin)?;
            if run.first_seq > max_seq && run.last_seq >= run.first_seq {
                insert_segment(&tx, &run, None, None)?;
                let contiguous = if run.first_seq == contiguous + 1 {
                    run.last_seq
                } else {
                    contiguous
                };
                set_origin(
                    &tx,
                    run.origin,
                    contiguous,
                    run.last_seq,
                    max_hlc.max(run.max_hlc),
                )?;
            } else {
                let seg = Segment {
                    id: 0,
                    origin: run.origin,
                    first_seq: run.first_seq,
                    last_seq: run.last_seq,
                    lib_seq: None,
                    epoch: None,
                    blob: run.blob,
                };
                let mut entries = Vec::new();
                seg.entries(&mut entries)?;
                let refs: Vec<&LogEntry> = entries.iter().collect();
                append_in(&tx, &refs)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Highest `origin_seq` up to which the log holds (or held before pruning)
    /// every entry of `origin`: the version-vector position, 0 if none.
    pub fn contiguous(&self, origin: Uuid) -> Result<u64> {
        Ok(origin_row(&self.conn, origin)?.0)
    }

    /// Whether the log holds (or held before pruning) this entry.
    pub fn contains(&self, origin: Uuid, origin_seq: u64) -> Result<bool> {
        if origin_seq <= self.contiguous(origin)? {
            return Ok(true);
        }
        Ok(segment_holding(&self.conn, origin, origin_seq)?.is_some())
    }

    /// Entries after local position `after_id` (a segment's `id`), in append
    /// order, each with its segment's position. Whole segments are returned, so
    /// there may be more than `limit` entries.
    pub fn fetch_after_id(&self, after_id: i64, limit: usize) -> Result<Vec<(i64, LogEntry)>> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        query_segments(
            &self.conn,
            &format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE id > ?1 ORDER BY id"),
            [after_id],
            |seg| {
                scratch.clear();
                seg.entries(&mut scratch)?;
                out.extend(scratch.drain(..).map(|e| (seg.id, e)));
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// Every entry held, in log order.
    pub fn entries(&self) -> Result<Vec<LogEntry>> {
        Ok(self
            .fetch_after_id(0, usize::MAX)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Entries with a library sequence above `since`, in sequence order.
    pub fn fetch_since_seq(&self, since: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let first = since.saturating_add(1);
        // The segment holding `first`, if one does, then every later one.
        let take = |seg: Segment, out: &mut Vec<LogEntry>| -> Result<()> {
            let lib = seg.lib_seq.unwrap_or(0);
            let from = seg.first_seq + first.saturating_sub(lib);
            seg.entries_between(from, seg.last_seq, out)
        };
        query_segments(
            &self.conn,
            &format!(
                "SELECT {SEGMENT_COLUMNS} FROM segments WHERE lib_seq IS NOT NULL AND lib_seq <= ?1
                 ORDER BY lib_seq DESC LIMIT 1"
            ),
            [first as i64],
            |seg| {
                if seg.lib_seq.unwrap_or(0) + seg.len() > first {
                    take(seg, &mut out)?;
                }
                Ok(false)
            },
        )?;
        if out.len() < limit {
            query_segments(
                &self.conn,
                &format!(
                    "SELECT {SEGMENT_COLUMNS} FROM segments WHERE lib_seq > ?1 ORDER BY lib_seq"
                ),
                [first as i64],
                |seg| {
                    take(seg, &mut out)?;
                    Ok(out.len() < limit)
                },
            )?;
        }
        out.truncate(limit);
        Ok(out)
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
        let sql = format!(
            "SELECT {SEGMENT_COLUMNS} FROM segments WHERE origin = ?1 AND last_seq > ?2
             ORDER BY last_seq"
        );
        for origin in origins {
            if out.len() >= limit {
                break;
            }
            let have = vv.get(&origin).copied().unwrap_or(0);
            query_segments(&self.conn, &sql, params![origin, have as i64], |seg| {
                seg.entries_between(have.saturating_add(1), u64::MAX, &mut out)?;
                Ok(out.len() < limit)
            })?;
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Every entry about one record, in stamp order. Reads the whole log (there
    /// is no index by record): for inspection, not for hot paths.
    pub fn fetch_record(&self, record: Uuid) -> Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        let mut all = Vec::new();
        query_segments(
            &self.conn,
            &format!("SELECT {SEGMENT_COLUMNS} FROM segments ORDER BY id"),
            [],
            |seg| {
                all.clear();
                seg.entries(&mut all)?;
                out.extend(all.drain(..).filter(|e| e.record == record));
                Ok(true)
            },
        )?;
        out.sort_by_key(|e| (e.hlc, e.origin));
        Ok(out)
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
        Ok(origin_row(&self.conn, origin)?.1)
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

    /// Highest local position (a segment's `id`), 0 when empty.
    pub fn latest_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM segments")?
            .query_row([], |r| r.get(0))?)
    }

    /// Highest library sequence assigned, if any: held in the log, or assigned
    /// to entries pruned since (`sequenced_through`), so it never goes back.
    pub fn latest_seq(&self) -> Result<Option<u64>> {
        let held: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT lib_seq + last_seq - first_seq FROM segments WHERE lib_seq IS NOT NULL
                 ORDER BY lib_seq DESC LIMIT 1",
            )?
            .query_row([], |r| r.get(0))
            .optional()?;
        let through: Option<i64> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'sequenced_through'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(held.max(through).map(|v| v as u64))
    }

    /// Number of entries held.
    pub fn count(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Number of stored segments (rows), for tests and benchmarks.
    pub fn segment_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM segments", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Remove sequenced entries below `horizon` (exclusive). Positions in `origins`
    /// are kept, so the version vector and HLC floor survive.
    pub fn prune_below(&mut self, horizon: u64) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let mut n: u64 = tx.query_row(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments
             WHERE lib_seq IS NOT NULL AND lib_seq + last_seq - first_seq < ?1",
            [horizon as i64],
            |r| r.get::<_, i64>(0),
        )? as u64;
        tx.execute(
            "DELETE FROM segments WHERE lib_seq IS NOT NULL AND lib_seq + last_seq - first_seq < ?1",
            [horizon as i64],
        )?;
        // The segment `horizon` falls inside keeps its entries from `horizon` on.
        let mut partial = None;
        query_segments(
            &tx,
            &format!(
                "SELECT {SEGMENT_COLUMNS} FROM segments WHERE lib_seq IS NOT NULL AND lib_seq < ?1
                 ORDER BY lib_seq DESC LIMIT 1"
            ),
            [horizon as i64],
            |seg| {
                partial = Some(seg);
                Ok(false)
            },
        )?;
        if let Some(seg) = partial {
            let keep_from = seg.first_seq + (horizon - seg.lib_seq.unwrap_or(horizon));
            n += trim_segment(&tx, &seg, keep_from)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('pruned_below', ?1)
             ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            [horizon as i64],
        )?;
        tx.commit()?;
        Ok(n)
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

/// `(contiguous, max_seq, max_hlc)` of an origin, zeros if unknown.
pub(crate) fn origin_row(conn: &Connection, origin: Uuid) -> Result<(u64, u64, u64)> {
    let cur: Option<(i64, i64, i64)> = conn
        .prepare_cached("SELECT contiguous, max_seq, max_hlc FROM origins WHERE origin = ?1")?
        .query_row([origin], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(cur.map_or((0, 0, 0), |(c, m, h)| (c as u64, m as u64, h as u64)))
}

fn set_origin(
    tx: &Transaction<'_>,
    origin: Uuid,
    contiguous: u64,
    max_seq: u64,
    max_hlc: u64,
) -> Result<()> {
    if contiguous > i64::MAX as u64 || max_seq > i64::MAX as u64 || max_hlc > i64::MAX as u64 {
        return Err(Error::Malformed("origin_seq out of range".into()));
    }
    tx.prepare_cached(
        "INSERT INTO origins (origin, contiguous, max_seq, max_hlc) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(origin) DO UPDATE SET contiguous = excluded.contiguous,
           max_seq = excluded.max_seq, max_hlc = excluded.max_hlc",
    )?
    .execute(params![
        origin,
        contiguous as i64,
        max_seq as i64,
        max_hlc as i64
    ])?;
    Ok(())
}

/// `(first_seq, last_seq)` of the segment holding `origin_seq` of `origin`.
pub(crate) fn segment_holding(
    conn: &Connection,
    origin: Uuid,
    origin_seq: u64,
) -> Result<Option<(u64, u64)>> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT first_seq, last_seq FROM segments WHERE origin = ?1 AND last_seq >= ?2
             ORDER BY last_seq LIMIT 1",
        )?
        .query_row(params![origin, origin_seq as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row
        .map(|(f, l)| (f as u64, l as u64))
        .filter(|(f, _)| *f <= origin_seq))
}

/// Move `contiguous` forward over held entries, up to `max_seq`.
pub(crate) fn walk_contiguous(
    conn: &Connection,
    origin: Uuid,
    mut contiguous: u64,
    max_seq: u64,
) -> Result<u64> {
    while contiguous < max_seq {
        match segment_holding(conn, origin, contiguous + 1)? {
            Some((_, last)) => contiguous = last,
            None => break,
        }
    }
    Ok(contiguous)
}

fn insert_segment(
    tx: &Transaction<'_>,
    run: &Run,
    lib_seq: Option<u64>,
    epoch: Option<u64>,
) -> Result<()> {
    if run.last_seq > i64::MAX as u64 || run.first_seq == 0 {
        return Err(Error::Malformed("origin_seq out of range".into()));
    }
    tx.prepare_cached(
        "INSERT INTO segments (origin, first_seq, last_seq, lib_seq, epoch, entries)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        run.origin,
        run.first_seq as i64,
        run.last_seq as i64,
        lib_seq.map(|v| v as i64),
        epoch.map(|v| v as i64),
        run.blob
    ])?;
    Ok(())
}

/// Drop the entries of `seg` before `keep_from` (all of them if it is past the
/// end). Returns how many went.
pub(crate) fn trim_segment(tx: &Transaction<'_>, seg: &Segment, keep_from: u64) -> Result<u64> {
    if keep_from <= seg.first_seq {
        return Ok(0);
    }
    if keep_from > seg.last_seq {
        tx.execute("DELETE FROM segments WHERE id = ?1", [seg.id])?;
        return Ok(seg.len());
    }
    let at = seg.offset_of(keep_from)?;
    let dropped = keep_from - seg.first_seq;
    tx.prepare_cached(
        "UPDATE segments SET first_seq = ?2, lib_seq = ?3, entries = ?4 WHERE id = ?1",
    )?
    .execute(params![
        seg.id,
        keep_from as i64,
        seg.lib_seq.map(|l| (l + dropped) as i64),
        &seg.blob[at..]
    ])?;
    Ok(dropped)
}

/// The body of [`SyncLog::append_refs`], inside a transaction.
fn append_in(tx: &Transaction<'_>, entries: &[&LogEntry]) -> Result<Vec<usize>> {
    // Per origin in order of first appearance (segment ids must not depend on
    // hash order: the simulation replays byte for byte).
    let mut groups: Vec<(Uuid, Vec<usize>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match groups.iter_mut().find(|(o, _)| *o == e.origin) {
            Some((_, v)) => v.push(i),
            None => groups.push((e.origin, vec![i])),
        }
    }
    let mut fresh = Vec::new();
    for (origin, mut idx) in groups {
        idx.sort_by_key(|&i| (entries[i].origin_seq, i));
        idx.dedup_by_key(|i| entries[*i].origin_seq);
        let (contiguous, mut max_seq, mut max_hlc) = origin_row(tx, origin)?;
        idx.retain(|&i| entries[i].origin_seq > contiguous);
        let (Some(&lo), Some(&hi)) = (idx.first(), idx.last()) else {
            continue;
        };
        let (lo, hi) = (entries[lo].origin_seq, entries[hi].origin_seq);
        // What is held of `lo..=hi` (segments never overlap, so these are disjoint).
        let mut held: Vec<(u64, u64)> = Vec::new();
        if max_seq >= lo {
            let mut stmt = tx.prepare_cached(
                "SELECT first_seq, last_seq FROM segments WHERE origin = ?1 AND last_seq >= ?2
                 ORDER BY last_seq",
            )?;
            let mut rows = stmt.query(params![origin, lo as i64])?;
            while let Some(r) = rows.next()? {
                let (f, l): (i64, i64) = (r.get(0)?, r.get(1)?);
                if f as u64 > hi {
                    break;
                }
                held.push((f as u64, l as u64));
            }
        }
        let is_held = |s: u64| held.iter().any(|&(f, l)| f <= s && s <= l);
        idx.retain(|&i| !is_held(entries[i].origin_seq));
        // Split into runs of consecutive `origin_seq`s (and, for entries that
        // carry them, consecutive library sequences of one epoch).
        let mut start = 0;
        while start < idx.len() {
            let mut end = start + 1;
            while end < idx.len() {
                let (p, e) = (entries[idx[end - 1]], entries[idx[end]]);
                let next_lib = p.lib_seq.map(|l| l + 1);
                if e.origin_seq != p.origin_seq + 1 || e.lib_seq != next_lib || e.epoch != p.epoch {
                    break;
                }
                end += 1;
            }
            let first = entries[idx[start]];
            let mut run = Run {
                origin,
                first_seq: first.origin_seq,
                last_seq: entries[idx[end - 1]].origin_seq,
                max_hlc: 0,
                blob: Vec::new(),
            };
            for &i in &idx[start..end] {
                let e = entries[i];
                segment::encode_entry(&mut run.blob, e.hlc, &e.model, &e.record, &e.op)?;
                run.max_hlc = run.max_hlc.max(e.hlc);
            }
            insert_segment(tx, &run, first.lib_seq, first.epoch)?;
            max_hlc = max_hlc.max(run.max_hlc);
            max_seq = max_seq.max(run.last_seq);
            fresh.extend_from_slice(&idx[start..end]);
            start = end;
        }
        let contiguous = walk_contiguous(tx, origin, contiguous, max_seq)?;
        set_origin(tx, origin, contiguous, max_seq, max_hlc)?;
    }
    fresh.sort_unstable();
    Ok(fresh)
}
