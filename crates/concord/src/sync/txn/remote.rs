//! The two halves of applying entries received from peers
//! ([`super::Library::apply_remote`]): screening them before anything is
//! written, and applying the ones the log took as new.

use uuid::Uuid;

use super::change::ApplyReport;
use crate::error::Result;
use crate::hlc::HlcGenerator;
use crate::model::ModelInfo;
use crate::sync::apply::{Applier, Cutoffs, Outcome};
use crate::sync::entry::{self, LogEntry};
use crate::sync::log::SyncLog;

/// Entries with their models, as screening passes them on.
pub(super) type Screened = Vec<(LogEntry, &'static ModelInfo)>;

/// The entries worth appending, each with its model: covered by a verified
/// seal (when `verified` is given: per entry, from `seal::verify_entries`),
/// valid, with numbers in range and a clock not too far ahead, not past a
/// removed device's cutoff, and not already held by the log. Rejections and
/// duplicates are counted in `report`. Second: the entries of verified chunks
/// whose positions the log holds with other content
/// ([`SyncLog::seal_conflict`]), to be applied but not logged; each such
/// chunk is a line of `report.position_conflicts`.
pub(super) fn screen_remote(
    entries: &[LogEntry],
    verified: Option<&[bool]>,
    log: &SyncLog,
    hlc: &HlcGenerator,
    cutoffs: &Cutoffs,
    report: &mut ApplyReport,
) -> Result<(Screened, Screened)> {
    let mut accepted: Screened = Vec::new();
    let mut conflicting: Screened = Vec::new();
    let clashes = position_clashes(entries, verified, log, report)?;
    let mut held_through: Vec<(Uuid, u64)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if verified.is_some_and(|ok| !ok[i]) {
            continue;
        }
        if e.origin_seq == 0 || e.origin_seq > i64::MAX as u64 || e.hlc > i64::MAX as u64 {
            report.rejected.push(format!(
                "entry {}:{} has out-of-range numbers",
                e.origin, e.origin_seq
            ));
            continue;
        }
        let m = match entry::validate(e) {
            Ok(m) => m,
            Err(err) => {
                report
                    .rejected
                    .push(format!("entry {}:{}: {err}", e.origin, e.origin_seq));
                continue;
            }
        };
        if let Err(err) = hlc.check(&e.stamp()) {
            report.rejected.push(err.to_string());
            continue;
        }
        let removed = cutoffs.get(e.origin).is_some();
        if let Some(why) = removed
            .then(|| Ok::<_, crate::error::Error>(log.max_seq(e.replica())? > 0))
            .transpose()?
            .and_then(|held| cutoffs.refusal(e, held))
        {
            report.rejected.push(why);
            continue;
        }
        // Entries at or below their replica's contiguous position are held (or
        // were, before pruning). The rest are deduplicated by `append` itself
        // (INSERT OR IGNORE), so no per-entry lookup is needed here.
        let replica = e.replica();
        let held = match held_through.iter().find(|(o, _)| *o == replica) {
            Some(&(_, c)) => c,
            None => {
                let c = log.contiguous(replica)?;
                held_through.push((replica, c));
                c
            }
        };
        let replica_clashes = clashes
            .iter()
            .any(|&(r, first, last)| r == replica && (first..=last).contains(&e.origin_seq));
        if replica_clashes {
            conflicting.push((e.clone(), m));
            continue;
        }
        if e.origin_seq <= held {
            report.duplicates += 1;
            continue;
        }
        accepted.push((e.clone(), m));
    }
    Ok((accepted, conflicting))
}

/// The verified chunks of `entries` (by their sealed last entry) whose
/// positions `log` holds under another seal: `(replica, first, last)` each,
/// reported in `report.position_conflicts` and the log.
fn position_clashes(
    entries: &[LogEntry],
    verified: Option<&[bool]>,
    log: &SyncLog,
    report: &mut ApplyReport,
) -> Result<Vec<(Uuid, u64, u64)>> {
    let mut clashes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(seal) = &e.seal else { continue };
        if verified.is_some_and(|ok| !ok[i]) || seal.first > e.origin_seq {
            continue;
        }
        let replica = e.replica();
        if let Some(stored) = log.seal_conflict(replica, seal, e.origin_seq)? {
            let line = format!(
                "chunk {replica}:{}..={} of device {} differs from the chunk {replica}:{stored} this device holds: two changes under one position",
                seal.first, e.origin_seq, e.origin
            );
            tracing::warn!("position conflict: {line}; both applied by the merge rules");
            report.position_conflicts.push(line);
            clashes.push((replica, seal.first, e.origin_seq));
        }
    }
    Ok(clashes)
}

/// `fresh` (indices into `accepted` the log took as new) with the entries of
/// `conflicting` added to `accepted` and to the indices: they are applied
/// like fresh entries, though the log keeps the copy it had.
pub(super) fn with_conflicting(
    accepted: &mut Screened,
    mut fresh: Vec<usize>,
    conflicting: Screened,
) -> Vec<usize> {
    fresh.extend(accepted.len()..accepted.len() + conflicting.len());
    accepted.extend(conflicting);
    fresh
}

/// Apply the entries of `accepted` at the indices `fresh` (those the log took as
/// new), counting outcomes in `report` and moving the clock past each. Returns
/// the models changed.
pub(super) fn apply_screened(
    applier: &Applier<'_, '_>,
    hlc: &HlcGenerator,
    accepted: &[(LogEntry, &'static ModelInfo)],
    fresh: &[usize],
    report: &mut ApplyReport,
) -> Result<Vec<&'static str>> {
    let mut models: Vec<&'static str> = Vec::new();
    for &i in fresh {
        let (e, m) = &accepted[i];
        let outcome = if applier.apply_update_fast(e, m)? {
            Outcome::Applied
        } else {
            applier.apply(e, m)?
        };
        match outcome {
            Outcome::Applied => {
                report.applied += 1;
                if !models.contains(&m.name) {
                    models.push(m.name);
                }
            }
            Outcome::Unchanged => report.unchanged += 1,
            Outcome::Refused(_) => report.refused += 1,
        }
        // Cannot fail: checked when screened.
        let _ = hlc.receive(&e.stamp());
    }
    Ok(models)
}
