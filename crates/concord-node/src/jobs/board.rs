//! The job board: what a library's job runner shares with its running jobs and
//! with status queries (progress per bulk operation, the watched locations,
//! the cancel flag), and the statuses built from it for `concord sync status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use concord::index::RescanReport;
use concord::query;
use concord::{Library, Uuid};
use serde::Serialize;

use crate::error::NetError;

/// A bulk operation's key: the device that wrote it and its sequence number.
pub type BulkKey = (Uuid, u64);

/// One peer's bulk operation and what this device did about it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// The device that wrote the bulk operation.
    pub origin: Uuid,
    pub origin_seq: u64,
    /// `initial_index` or `rescan`.
    pub kind: &'static str,
    /// The peer's location the operation names.
    pub location: Uuid,
    /// Its path on the peer.
    pub path: String,
    /// Rows the peer wrote.
    pub count: u64,
    /// This device's location indexed for it, if any.
    pub local_location: Option<Uuid>,
    /// `seen`, `queued`, `indexing`, `indexed`, `browsable` or `failed: <why>`.
    pub state: String,
    /// Entries walked so far (while `total` is unknown), or written out of
    /// `total`; when done, the entries walked, equal to `total`.
    pub done: u64,
    pub total: Option<u64>,
    /// Entries per second since the job started (0 until it has).
    pub rate: u64,
    /// What the job changed, once done.
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// A location this device watches.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub location: Uuid,
    pub path: String,
    /// Its initial index is written, so its changes are applied.
    pub ready: bool,
}

/// What the runner task shares with its blocking jobs and with status queries.
#[derive(Default)]
pub struct JobBoard {
    cancel: AtomicBool,
    progress: Mutex<HashMap<BulkKey, JobProgress>>,
    watching: Mutex<Vec<WatchStatus>>,
}

/// How far an index job for one bulk operation got (in memory only).
#[derive(Debug, Clone, Default)]
pub struct JobProgress {
    pub local_location: Option<Uuid>,
    pub done: u64,
    pub total: Option<u64>,
    pub started: Option<Instant>,
    pub elapsed: Option<Duration>,
    pub report: Option<RescanReport>,
}

impl JobBoard {
    /// Change the progress of the jobs of `keys`.
    pub fn update(&self, keys: &[BulkKey], f: impl Fn(&mut JobProgress)) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            f(progress.entry(*key).or_default());
        }
    }

    /// Ask running rescans to stop at their next write.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether the runner is stopping (a failed rescan is then no failure).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The flag rescans poll to stop early.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    /// Publish the watched locations.
    pub fn set_watching(&self, list: Vec<WatchStatus>) {
        *self.watching.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// The watched locations, for `sync status`.
    pub fn watching(&self) -> Vec<WatchStatus> {
        self.watching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn progress(&self) -> HashMap<BulkKey, JobProgress> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The peers' bulk operations recorded in `lib`, oldest first, with what this
/// device did about each (`board`: the library's runner, if one runs).
pub fn statuses(lib: &Library, board: Option<&JobBoard>) -> Result<Vec<JobStatus>, NetError> {
    let me = lib.device();
    let progress = board.map(JobBoard::progress).unwrap_or_default();
    let mut out = Vec::new();
    for record in query::bulk_operations(lib)? {
        if record.origin == me {
            continue;
        }
        let (kind, location, path, count) = match &record.op {
            Some(op) => (
                op.kind_name(),
                op.location(),
                op.path().to_string(),
                op.count(),
            ),
            None => ("unknown", Uuid::nil(), String::new(), 0),
        };
        let job = progress
            .get(&(record.origin, record.origin_seq))
            .cloned()
            .unwrap_or_default();
        let elapsed = job
            .elapsed
            .or_else(|| job.started.map(|s| s.elapsed()))
            .unwrap_or_default();
        let rate = if elapsed.as_secs_f64() > 0.0 {
            (job.done as f64 / elapsed.as_secs_f64()).round() as u64
        } else {
            0
        };
        let report = job.report.unwrap_or_default();
        out.push(JobStatus {
            origin: record.origin,
            origin_seq: record.origin_seq,
            kind,
            location,
            path,
            count,
            local_location: job.local_location,
            state: record.state,
            done: job.done,
            total: job.total,
            rate,
            inserted: report.inserted,
            updated: report.updated,
            deleted: report.deleted,
        });
    }
    Ok(out)
}
