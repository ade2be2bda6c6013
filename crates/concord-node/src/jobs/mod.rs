//! Index jobs and live watching: one runner task per open library of the node
//! ([`JobRunners`]), started by the [`crate::host`].
//!
//! ## Bulk notifications become index jobs (DESIGN §7)
//!
//! A device that indexes a location writes its entries with `commit_bulk` and
//! ONE `bulk_operation` log entry. Applying that entry records a row in the
//! `bulk_operations` table of `library.db`, state `seen`. The runner notices new
//! rows (when it starts, and after every remote `ResourceChanged` event that
//! names bulk operations or carries a snapshot chunk) and decides, for each row
//! of another device:
//!
//! - this device has the same location: the same absolute path, or the same
//!   place on the same volume (equal volume fingerprint and equal path below the
//!   volume's mount point on each device). The row becomes `queued`, then a
//!   rescan of this device's OWN location
//!   ([`concord::index::rescan_location_with`], written by size) runs on a
//!   blocking thread: `indexing`, then `indexed` or `failed: <why>`. The entries
//!   it writes are this device's.
//! - otherwise the row becomes `browsable`: the peer's entries stay on the peer
//!   and are pulled on demand.
//!
//! Jobs of one location run one at a time, and jobs queued for a location while
//! it is busy are done together by its next rescan (which starts after all of
//! them arrived). A row left `queued` or `indexing` by a node that stopped is
//! decided again when the node starts. Rows of this device's own bulk writes
//! stay `seen`. Progress (entries walked or written, total, rate) is kept in
//! memory and shown by [`crate::host::LibraryHost::jobs`] and `concord sync status`.
//!
//! ## Live watching
//!
//! With [`crate::NodeConfig::watch`] on, the runner watches every location of
//! this device in the library through a [`crate::watcher::FolderWatcher`],
//! which reports changed folders over a channel, and picks
//! up locations added or removed while it runs by re-reading the location list
//! after every event that names locations. A location added while the node runs
//! is watched once its initial index is written (its `InitialIndex` bulk
//! operation or its entries are there); changes seen before that wait for it.
//! When the runner starts, each location it finds is rescanned once (by size)
//! to catch up with changes made while the node was not running.
//!
//! Events are debounced per location: the changes are applied after
//! [`pending::WATCH_QUIET`] without new events, and at most
//! [`pending::WATCH_MAX_DELAY`] after the first one, so an editor's save burst
//! is one change. Each changed path marks
//! its folder, and [`concord::index::refresh_dirs`] re-reads only those folders
//! (and the contents of new folders); a queue overflow rescans the location.
//!
//! Watcher-driven changes are written with [`concord::index::WritePolicy::Windows`]: single
//! commits under 10 changes, otherwise batches of at most 1,000 changes, and
//! never `commit_bulk`, however large the burst. Rows written in bulk do not
//! travel through the sync log (peers must pull them), while singles and batches
//! do; keeping the watcher's windows at 1,000 or fewer makes every live change
//! reach peers through the log within moments, and a burst of thousands of new
//! files arrives as a few batches rather than thousands of single commits.
//! DESIGN §7's "more through `commit_bulk`" applies to initial indexing, index
//! jobs and catch-up rescans.
//!
//! ## Files
//!
//! [`board`] (progress and statuses shared with queries), [`decide`] (which
//! bulk operations become jobs; row states), [`pending`] (debounced watcher
//! changes), [`work`] (the index job and the refresh), [`runner`] (the task
//! that ties them together). Each imports only the ones listed before it.

pub mod board;
pub mod decide;
pub mod pending;
pub mod runner;
pub mod work;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use concord::{Library, Uuid};

use crate::error::NetError;

use board::JobBoard;
pub use board::{JobStatus, WatchStatus};
use runner::Runner;

/// The node's job runners, one per library.
#[derive(Default)]
pub struct JobRunners {
    runners: Mutex<HashMap<Uuid, RunnerHandle>>,
}

struct RunnerHandle {
    task: tokio::task::JoinHandle<()>,
    board: Arc<JobBoard>,
}

impl RunnerHandle {
    fn stop(self) {
        self.board.cancel();
        self.task.abort();
    }
}

impl JobRunners {
    /// Start the job runner (and, with `watch`, the folder watcher) of a
    /// library, unless it is running. Changes below `ignore` are not watched.
    pub fn start(&self, lib: Arc<Library>, watch: bool, ignore: PathBuf) {
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        if runners
            .get(&lib.id())
            .is_some_and(|r| !r.task.is_finished())
        {
            return;
        }
        let board = Arc::new(JobBoard::default());
        let library = lib.id();
        let task = tokio::spawn(Runner::new(lib, board.clone(), watch, ignore).run());
        runners.insert(library, RunnerHandle { task, board });
    }

    /// Stop every runner: cancel running rescans at their next write, stop
    /// watching. Called when the node shuts down.
    pub fn stop_all(&self) {
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        for (_, runner) in runners.drain() {
            runner.stop();
        }
    }

    /// Stop the runner of one library (when it is forgotten).
    pub fn stop(&self, library: Uuid) {
        let runner = self
            .runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&library);
        if let Some(runner) = runner {
            runner.stop();
        }
    }

    /// The locations of a library this node watches now.
    pub fn watching(&self, library: Uuid) -> Vec<WatchStatus> {
        self.board(library)
            .map(|board| board.watching())
            .unwrap_or_default()
    }

    /// The peers' bulk operations recorded in `lib`, oldest first, with what
    /// this device did about each.
    pub fn list(&self, lib: &Library) -> Result<Vec<JobStatus>, NetError> {
        let board = self.board(lib.id());
        board::statuses(lib, board.as_deref())
    }

    fn board(&self, library: Uuid) -> Option<Arc<JobBoard>> {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&library)
            .map(|r| r.board.clone())
    }
}
