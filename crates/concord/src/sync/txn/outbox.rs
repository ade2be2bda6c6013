//! The outbox and the applied-log watermark: how local entries committed with
//! their change in `library.db` reach the log in `sync.db` (invariant I1, see
//! [`super`]), and how `library.db` records which log positions it has applied.

use rusqlite::{params, Connection, Transaction};
use uuid::Uuid;

use crate::error::Result;
use crate::store::meta::{key, meta_get, meta_set};
use crate::sync::entry::{LogEntry, Op};
use crate::sync::log::{SyncLog, MERGE_SEGMENT_ENTRIES};
use crate::sync::segment::{self, Run};

/// The `library.db` table holding the outbox (one row per transaction).
const OUTBOX_TABLE: &str = "outbox_segments";

/// The outbox is moved into `sync.db` once it holds this many entries (or
/// [`MOVE_AT_BYTES`]), besides whenever the log is read, on close and on open.
/// Why this many: each move syncs `sync.db` once (`synchronous=FULL`), so it
/// covers many transactions (sixteen batches of 1,000 changes, or 16,384
/// single commits); and it bounds what a power cut may take of commits made
/// while nothing reads the log (ARCHITECTURE.md, "Durability").
pub(super) const MOVE_AT_ENTRIES: usize = 16_384;
/// The outbox is moved once its entries take this many encoded bytes: bounds
/// the memory a move takes and a power cut's loss when entries are large.
pub(super) const MOVE_AT_BYTES: usize = 1 << 20;

/// How much the outbox holds since it was last moved (what this open wrote;
/// what an earlier one left is moved on open).
#[derive(Default)]
pub(super) struct OutboxSize {
    entries: usize,
    bytes: usize,
}

impl OutboxSize {
    /// Count a run just written to the outbox.
    pub(super) fn add(&mut self, run: &OutboxRun) {
        if run.first_seq != 0 {
            self.entries += (run.last_seq + 1 - run.first_seq) as usize;
            self.bytes += run.blob.len();
        }
    }

    /// Whether the outbox is due to be moved into the log.
    pub(super) fn due(&self) -> bool {
        self.entries >= MOVE_AT_ENTRIES || self.bytes >= MOVE_AT_BYTES
    }
}

/// The entries one transaction writes, encoded as a log segment
/// (`sync::segment`) as they are made, and stored in the outbox as ONE row
/// when the transaction commits: a batch of 1,000 changes costs one insert
/// here and one row when moved into `sync.db`, where it becomes a segment
/// without being decoded.
#[derive(Default)]
pub(super) struct OutboxRun {
    blob: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
    max_hlc: u64,
}

impl OutboxRun {
    pub(super) fn push(&mut self, e: &LogEntry) -> Result<()> {
        self.push_parts(e.origin_seq, e.hlc, &e.model, &e.record, &e.op)
    }

    pub(super) fn push_parts(
        &mut self,
        seq: u64,
        hlc: u64,
        model: &str,
        record: &Uuid,
        op: &Op,
    ) -> Result<()> {
        segment::encode_entry(&mut self.blob, hlc, model, record, op)?;
        if self.first_seq == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.max_hlc = self.max_hlc.max(hlc);
        Ok(())
    }

    /// Store the run in the outbox, in the transaction that made it (I1).
    pub(super) fn write(&self, tx: &Transaction<'_>, origin: Uuid, incarnation: u64) -> Result<()> {
        if self.first_seq == 0 {
            return Ok(());
        }
        tx.prepare_cached(
            "INSERT INTO outbox_segments (origin, first_seq, last_seq, max_hlc, entries, incarnation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            origin,
            self.first_seq as i64,
            self.last_seq as i64,
            self.max_hlc as i64,
            self.blob,
            incarnation as i64
        ])?;
        Ok(())
    }
}

/// Every entry waiting in the outbox, as runs in `origin_seq` order: runs of
/// consecutive transactions are merged into one segment (up to
/// `MERGE_SEGMENT_ENTRIES`), their blobs being concatenations of entries.
fn pending_outbox(lib: &Connection) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    let mut stmt = lib.prepare_cached(
        "SELECT origin, first_seq, last_seq, max_hlc, entries, incarnation FROM outbox_segments
         ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let origin: Uuid = r.get(0)?;
        let first_seq = r.get::<_, i64>(1)? as u64;
        let last_seq = r.get::<_, i64>(2)? as u64;
        let max_hlc = r.get::<_, i64>(3)? as u64;
        let blob = r.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?;
        let incarnation = r.get::<_, i64>(5)? as u64;
        match runs.last_mut() {
            Some(prev)
                if prev.origin == origin
                    && prev.incarnation == incarnation
                    && prev.last_seq.checked_add(1) == Some(first_seq)
                    && prev.last_seq + 1 - prev.first_seq < MERGE_SEGMENT_ENTRIES =>
            {
                prev.blob.extend_from_slice(blob);
                prev.last_seq = last_seq;
                prev.max_hlc = prev.max_hlc.max(max_hlc);
            }
            _ => runs.push(Run {
                origin,
                incarnation,
                first_seq,
                last_seq,
                max_hlc,
                blob: blob.to_vec(),
            }),
        }
    }
    Ok(runs)
}

fn clear_tables(lib: &Connection, tables: &[&str]) -> Result<()> {
    for t in tables {
        lib.prepare_cached(&format!("DELETE FROM {t}"))?
            .execute([])?;
    }
    Ok(())
}

/// The applied-log watermark: every log position up to it is applied to
/// `library.db` (0: none).
pub(super) fn watermark(lib: &Connection) -> Result<i64> {
    Ok(meta_get(lib, key::APPLIED_LOG_ID)?.unwrap_or(0))
}

/// Record that the log is applied through position `id`, `latest` being the
/// log's latest position. A watermark past the log would skip entries appended
/// later at the positions it covers: they would never be applied.
pub(super) fn set_watermark(lib: &Connection, id: i64, latest: i64) -> Result<()> {
    assert!(
        id <= latest,
        "applied-log watermark {id} past the latest log position {latest}"
    );
    meta_set(lib, key::APPLIED_LOG_ID, id)
}

/// After appending log positions `before + 1 ..= latest` whose entries are
/// applied in this transaction: move the watermark over them, unless entries
/// before them are logged but not applied yet (a failed `apply_remote`): those
/// are replayed from the watermark, and these again with them.
fn advance_watermark(lib: &Connection, before: i64, latest: i64) -> Result<()> {
    if watermark(lib)? >= before {
        set_watermark(lib, latest, latest)?;
    }
    Ok(())
}

/// Move every outbox entry into `sync.db`, then clear the outbox and advance the
/// watermark (every log entry is applied at this point: local ones were applied
/// when committed, remote ones before the lock was released).
pub(super) fn flush_outbox(lib: &mut Connection, log: &mut SyncLog) -> Result<()> {
    let runs = pending_outbox(lib)?;
    move_to_log(lib, log, runs, &[OUTBOX_TABLE])
}

/// Append `runs` (applied local entries) to the log, then empty `tables`, the
/// `library.db` tables they came from, and advance the watermark over them.
pub(super) fn move_to_log(
    lib: &mut Connection,
    log: &mut SyncLog,
    runs: Vec<Run>,
    tables: &[&str],
) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let before = log.latest_id()?;
    log.append_runs(runs)?;
    let latest = log.latest_id()?;
    let tx = lib.transaction()?;
    clear_tables(&tx, tables)?;
    advance_watermark(&tx, before, latest)?;
    tx.commit()?;
    Ok(())
}
