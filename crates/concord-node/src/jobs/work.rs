//! The two kinds of work a job runner does, each on a blocking thread: an index
//! job (rescan this device's location for peers' bulk operations, written by
//! size) and a refresh (apply the folder watcher's changes, written in
//! windows; see [`crate::jobs`] for why).

use std::time::{Duration, Instant};

use concord::index::{self, RescanOptions, WritePolicy};
use concord::{Library, Uuid};

use super::board::{BulkKey, JobBoard, JobProgress};
use super::decide::{set_state, state};
use super::pending::Pending;

/// A running job logs its progress at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// An index job: rescan this device's `location` for the bulk operations `keys`.
pub fn run_index(lib: &Library, board: &JobBoard, location: Uuid, keys: &[BulkKey]) {
    let started = Instant::now();
    if let Err(e) = set_state(lib, keys, state::INDEXING) {
        tracing::warn!(location = %location, "cannot record the index job's state: {e}");
    }
    board.update(keys, |p| {
        *p = JobProgress {
            local_location: Some(location),
            started: Some(started),
            ..JobProgress::default()
        }
    });
    tracing::info!(library = %lib.id(), location = %location, jobs = keys.len(), "index job started");
    let mut walked = 0u64;
    let mut logged = Instant::now();
    let opts = RescanOptions {
        policy: WritePolicy::BySize,
        cancel: Some(board.cancel_flag()),
    };
    let result = index::rescan_location_with(lib, location, opts, &mut |done, total| {
        if total.is_none() {
            walked = done;
        }
        board.update(keys, |p| {
            p.done = done;
            p.total = total;
        });
        if logged.elapsed() >= LOG_EVERY {
            logged = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            match total {
                None => {
                    tracing::info!(location = %location, walked = done, rate = rate as u64, "index job: walking")
                }
                Some(t) => {
                    tracing::info!(location = %location, written = done, total = t, rate = rate as u64, "index job: writing")
                }
            }
        }
    });
    let elapsed = started.elapsed();
    match result {
        Ok(report) => {
            board.update(keys, |p| {
                p.done = walked;
                p.total = Some(walked);
                p.elapsed = Some(elapsed);
                p.report = Some(report.clone());
            });
            if let Err(e) = set_state(lib, keys, state::INDEXED) {
                tracing::warn!(location = %location, "cannot record the index job's state: {e}");
            }
            tracing::info!(
                library = %lib.id(), location = %location, entries = walked,
                inserted = report.inserted, updated = report.updated, deleted = report.deleted,
                mode = ?report.mode, secs = elapsed.as_secs_f64(),
                "index job done"
            );
        }
        // Stopping: the rows stay `indexing` and are taken up on the next start.
        Err(_) if board.cancelled() => {}
        Err(e) => {
            board.update(keys, |p| p.elapsed = Some(elapsed));
            let _ = set_state(lib, keys, &format!("failed: {e}"));
            tracing::warn!(library = %lib.id(), location = %location, "index job failed: {e}");
        }
    }
}

/// Apply watched changes to `location` (see [`crate::jobs`] for the policy).
pub fn run_refresh(lib: &Library, board: &JobBoard, location: Uuid, pending: Pending) {
    let opts = RescanOptions {
        policy: if pending.catch_up {
            WritePolicy::BySize
        } else {
            WritePolicy::Windows
        },
        cancel: Some(board.cancel_flag()),
    };
    let catch_up = pending.catch_up;
    let started = Instant::now();
    let result = if pending.full {
        index::rescan_location_with(lib, location, opts, &mut |_, _| {})
    } else {
        let dirs: Vec<String> = pending.dirs.into_iter().collect();
        index::refresh_dirs(lib, location, &dirs, opts, &mut |_, _| {})
    };
    match result {
        Ok(r) if r.inserted + r.updated + r.deleted > 0 => tracing::info!(
            library = %lib.id(), location = %location, catch_up,
            inserted = r.inserted, updated = r.updated, deleted = r.deleted, mode = ?r.mode,
            ms = started.elapsed().as_millis() as u64,
            "watcher: changes written"
        ),
        Ok(_) => {}
        Err(_) if board.cancelled() => {}
        Err(e) => {
            tracing::warn!(library = %lib.id(), location = %location, "watcher: cannot apply changes: {e}")
        }
    }
}
