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
//!
//! The whole API of the log is `impl SyncLog`, spread by concern: reading and
//! appending here ([`rows`] holds the row-level writes), the leader's term and
//! sequencing in [`sequencing`], pruning and snapshot positions in [`floors`],
//! peer acknowledgements in [`acks`], what is held past a gap in [`gaps`],
//! retired replicas (compact vectors) in [`retired`].

mod acks;
mod floors;
mod gaps;
mod retired;
mod rows;
mod seals;
mod sequencing;

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::error::Result;
use crate::store::meta::{key, meta_get};
use crate::sync::entry::LogEntry;
use crate::sync::seal::cut_after;
use crate::sync::segment::{segment_from_row, Run, Segment, SEGMENT_COLUMNS};
use rows::{append_in, insert_segment, origin_row, segment_holding, set_origin};

pub use crate::sync::version_vector::VersionVector;
pub use retired::{retired_digest, RETIRED_KEY};

/// Local segments merged into one row when the outbox is moved into the log,
/// at most (a single larger transaction stays one segment).
pub(crate) const MERGE_SEGMENT_ENTRIES: u64 = 1024;

/// The log in one `sync.db` connection.
pub struct SyncLog {
    conn: Connection,
    /// The library and this device's key, when local entries are sealed as
    /// they enter the log ([`SyncLog::set_sealer`]).
    sealer: Option<(Uuid, crate::sync::seal::NodeKey)>,
}

/// Run `sql` (selecting `origin, seq` pairs) as a version vector.
fn query_version_vector(conn: &Connection, sql: &str) -> Result<VersionVector> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Uuid>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Run `sql` (selecting [`SEGMENT_COLUMNS`]) and pass each segment to `each`
/// until it returns `false`.
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
        Ok(Self { conn, sealer: None })
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
            let replica = run.replica();
            let (contiguous, max_seq, max_hlc) = origin_row(&tx, replica)?;
            if let Some((library, key)) = &self.sealer {
                // Only what is not held yet: a run moved again after a crash
                // keeps the seals its first move stored.
                seals::seal_run(&tx, key, *library, &run, max_seq + 1)?;
            }
            if run.first_seq > max_seq && run.last_seq >= run.first_seq {
                insert_segment(&tx, &run, None, None)?;
                let contiguous = if run.first_seq == contiguous + 1 {
                    run.last_seq
                } else {
                    contiguous
                };
                set_origin(
                    &tx,
                    replica,
                    contiguous,
                    run.last_seq,
                    max_hlc.max(run.max_hlc),
                )?;
            } else {
                let seg = Segment {
                    id: 0,
                    origin: run.origin,
                    incarnation: run.incarnation,
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
                self.attach_seals(&mut scratch)?;
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

    /// Entries with a library sequence above `since`, in sequence order: at
    /// least `limit` when there are, and then up to the end of the chunk the
    /// `limit`th is in (a chunk is never split, `crate::sync::seal`).
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
        self.attach_seals(&mut out)?;
        cut_after(&mut out, limit);
        Ok(out)
    }

    /// Entries the holder of `vv` lacks, oldest first per origin: `limit`, or up
    /// to the end of the chunk the `limit`th is in.
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
        self.attach_seals(&mut out)?;
        cut_after(&mut out, limit);
        Ok(out)
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

    /// The version vector: per origin, the highest `origin_seq` below which the log
    /// has (or had before pruning) every entry. The full one, retired replicas
    /// included; peers are sent [`SyncLog::compact_vector`].
    pub fn version_vector(&self) -> Result<VersionVector> {
        query_version_vector(&self.conn, "SELECT origin, contiguous FROM origins")
    }

    /// Highest `origin_seq` seen from `origin` (0 if none).
    pub fn max_seq(&self, origin: Uuid) -> Result<u64> {
        Ok(origin_row(&self.conn, origin)?.1)
    }

    /// Highest HLC time of any entry ever logged (pruned ones included) or
    /// absorbed outside the log (snapshot rows, see `raise_hlc_floor`).
    pub fn max_hlc(&self) -> Result<u64> {
        let logged: Option<i64> =
            self.conn
                .query_row("SELECT MAX(max_hlc) FROM origins", [], |r| r.get(0))?;
        let absorbed: Option<i64> = meta_get(&self.conn, key::HLC_FLOOR)?;
        Ok(logged.max(absorbed).unwrap_or(0) as u64)
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
        let through: Option<i64> = meta_get(&self.conn, key::SEQUENCED_THROUGH)?;
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
}
