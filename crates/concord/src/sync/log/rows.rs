//! Row-level operations on the log's tables (`segments`, `origins`) inside a
//! `sync.db` transaction: appending entries as segments, keeping each origin's
//! positions, and trimming a segment's prefix. [`super::SyncLog`] composes them.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sync::entry::LogEntry;
use crate::sync::segment::{self, Run, Segment};

/// `(contiguous, max_seq, max_hlc)` of an origin, zeros if unknown.
pub(super) fn origin_row(conn: &Connection, origin: Uuid) -> Result<(u64, u64, u64)> {
    let cur: Option<(i64, i64, i64)> = conn
        .prepare_cached("SELECT contiguous, max_seq, max_hlc FROM origins WHERE origin = ?1")?
        .query_row([origin], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(cur.map_or((0, 0, 0), |(c, m, h)| (c as u64, m as u64, h as u64)))
}

/// Store an origin's positions (see [`origin_row`]).
pub(super) fn set_origin(
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
pub(super) fn segment_holding(
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
pub(super) fn walk_contiguous(
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

/// Store `run` as one segment, with its first entry's library sequence and
/// epoch when it carries them.
pub(super) fn insert_segment(
    tx: &Transaction<'_>,
    run: &Run,
    lib_seq: Option<u64>,
    epoch: Option<u64>,
) -> Result<()> {
    if run.last_seq > i64::MAX as u64 || run.first_seq == 0 {
        return Err(Error::Malformed("origin_seq out of range".into()));
    }
    // Every reader takes `last_seq - first_seq + 1` as the number of entries.
    assert!(
        run.first_seq <= run.last_seq,
        "segment of {} from {} to {}",
        run.replica(),
        run.first_seq,
        run.last_seq
    );
    tx.prepare_cached(
        "INSERT INTO segments (origin, first_seq, last_seq, lib_seq, epoch, entries, device, incarnation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        run.replica(),
        run.first_seq as i64,
        run.last_seq as i64,
        lib_seq.map(|v| v as i64),
        epoch.map(|v| v as i64),
        run.blob,
        (run.incarnation != 0).then_some(run.origin),
        run.incarnation as i64
    ])?;
    Ok(())
}

/// Drop the entries of `seg` before `keep_from` (all of them if it is past the
/// end). Returns how many went.
pub(super) fn trim_segment(tx: &Transaction<'_>, seg: &Segment, keep_from: u64) -> Result<u64> {
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

/// The body of [`super::SyncLog::append_refs`], inside a transaction.
pub(super) fn append_in(tx: &Transaction<'_>, entries: &[&LogEntry]) -> Result<Vec<usize>> {
    // Per replica in order of first appearance (segment ids must not depend on
    // hash order: the simulation replays byte for byte).
    let mut groups: Vec<(Uuid, Vec<usize>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let replica = e.replica();
        match groups.iter_mut().find(|(o, _)| *o == replica) {
            Some((_, v)) => v.push(i),
            None => groups.push((replica, vec![i])),
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
                origin: first.origin,
                incarnation: first.incarnation,
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
            let seals: Vec<(u64, crate::sync::seal::Seal)> = idx[start..end]
                .iter()
                .filter_map(|&i| entries[i].seal.map(|s| (entries[i].origin_seq, s)))
                .collect();
            super::seals::store_seals(tx, origin, &seals)?;
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
