//! Index jobs and live watching: one runner task per open library of the node.
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
//! memory and shown by [`NodeState::jobs`] and `concord sync status`.
//!
//! ## Live watching
//!
//! With [`crate::NodeConfig::watch`] on, the runner watches every location of
//! this device in the library (recursively, with the `notify` crate) and picks
//! up locations added or removed while it runs by re-reading the location list
//! after every event that names locations. A location added while the node runs
//! is watched once its initial index is written (its `InitialIndex` bulk
//! operation or its entries are there); changes seen before that wait for it.
//! When the runner starts, each location it finds is rescanned once (by size)
//! to catch up with changes made while the node was not running.
//!
//! Events are debounced per location: the changes are applied after
//! [`WATCH_QUIET`] without new events, and at most [`WATCH_MAX_DELAY`] after the
//! first one, so an editor's save burst is one change. Each changed path marks
//! its folder, and [`concord::index::refresh_dirs`] re-reads only those folders
//! (and the contents of new folders); a queue overflow rescans the location.
//!
//! Watcher-driven changes are written with [`WritePolicy::Windows`]: single
//! commits under 10 changes, otherwise batches of at most 1,000 changes, and
//! never `commit_bulk`, however large the burst. Rows written in bulk do not
//! travel through the sync log (peers must pull them), while singles and batches
//! do; keeping the watcher's windows at 1,000 or fewer makes every live change
//! reach peers through the log within moments, and a burst of thousands of new
//! files arrives as a few batches rather than thousands of single commits.
//! DESIGN §7's "more through `commit_bulk`" applies to initial indexing, index
//! jobs and catch-up rescans.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord::index::{self, RescanOptions, RescanReport, WritePolicy};
use concord::model::{Location, Volume};
use concord::query;
use concord::sync::entry::BulkOperation;
use concord::sync::txn::Source;
use concord::sync::BULK_MODEL;
use concord::{Library, Uuid};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::error::NetError;
use crate::node::NodeState;

/// Changes are applied after this long without a new event on the location...
pub const WATCH_QUIET: Duration = Duration::from_millis(150);
/// ...and at most this long after the first event of a burst.
pub const WATCH_MAX_DELAY: Duration = Duration::from_secs(1);
/// Past this many changed folders pending on one location, it is rescanned whole.
const MAX_DIRTY_DIRS: usize = 10_000;
/// A running job logs its progress at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Row states in `bulk_operations` (besides `failed: <why>`).
mod state {
    pub const SEEN: &str = "seen";
    pub const QUEUED: &str = "queued";
    pub const INDEXING: &str = "indexing";
    pub const INDEXED: &str = "indexed";
    pub const BROWSABLE: &str = "browsable";
}

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

/// The node's job runners, one per library.
#[derive(Default)]
pub struct Jobs {
    runners: Mutex<HashMap<Uuid, RunnerHandle>>,
}

struct RunnerHandle {
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

/// What the runner task shares with its blocking jobs and with status queries.
#[derive(Default)]
struct Shared {
    cancel: AtomicBool,
    progress: Mutex<HashMap<(Uuid, u64), Progress>>,
    watching: Mutex<Vec<WatchStatus>>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    local_location: Option<Uuid>,
    done: u64,
    total: Option<u64>,
    started: Option<Instant>,
    elapsed: Option<Duration>,
    report: Option<RescanReport>,
}

impl Shared {
    fn update(&self, keys: &[(Uuid, u64)], f: impl Fn(&mut Progress)) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            f(p.entry(*k).or_default());
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl Jobs {
    /// Stop every runner: cancel running rescans at their next write, stop
    /// watching. Called when the node shuts down.
    pub fn stop_all(&self) {
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        for (_, r) in runners.drain() {
            r.shared.cancel.store(true, Ordering::Relaxed);
            r.task.abort();
        }
    }

    /// Stop the runner of one library (when it is forgotten).
    pub fn stop(&self, library: Uuid) {
        let r = self
            .runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&library);
        if let Some(r) = r {
            r.shared.cancel.store(true, Ordering::Relaxed);
            r.task.abort();
        }
    }

    /// The locations of a library this node watches now.
    pub fn watching(&self, library: Uuid) -> Vec<WatchStatus> {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&library)
            .map(|r| {
                r.shared
                    .watching
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .unwrap_or_default()
    }

    /// The peers' bulk operations recorded in `lib`, oldest first, with what
    /// this device did about each.
    pub fn list(&self, lib: &Library) -> Result<Vec<JobStatus>, NetError> {
        let me = lib.device();
        let shared = self
            .runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&lib.id())
            .map(|r| r.shared.clone());
        let progress = shared
            .map(|s| s.progress.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for r in query::bulk_operations(lib)? {
            if r.origin == me {
                continue;
            }
            let (kind, location, path, count) = match &r.op {
                Some(BulkOperation::InitialIndex {
                    location,
                    path,
                    count,
                    ..
                }) => ("initial_index", *location, path.clone(), *count),
                Some(BulkOperation::Rescan {
                    location,
                    path,
                    count,
                    ..
                }) => ("rescan", *location, path.clone(), *count),
                None => ("unknown", Uuid::nil(), String::new(), 0),
            };
            let p = progress
                .get(&(r.origin, r.origin_seq))
                .cloned()
                .unwrap_or_default();
            let elapsed = p
                .elapsed
                .or_else(|| p.started.map(|s| s.elapsed()))
                .unwrap_or_default();
            let rate = if elapsed.as_secs_f64() > 0.0 {
                (p.done as f64 / elapsed.as_secs_f64()).round() as u64
            } else {
                0
            };
            let rep = p.report.unwrap_or_default();
            out.push(JobStatus {
                origin: r.origin,
                origin_seq: r.origin_seq,
                kind,
                location,
                path,
                count,
                local_location: p.local_location,
                state: r.state,
                done: p.done,
                total: p.total,
                rate,
                inserted: rep.inserted,
                updated: rep.updated,
                deleted: rep.deleted,
            });
        }
        Ok(out)
    }
}

impl NodeState {
    /// Index jobs of a library: every peer's bulk operation and what this device
    /// did or is doing about it (see [`crate::jobs`]).
    pub fn jobs(&self, library: Uuid) -> Result<Vec<JobStatus>, NetError> {
        let lib = self.library(library)?;
        self.job_runner.list(&lib)
    }

    /// The locations of a library this node watches now.
    pub fn watching(&self, library: Uuid) -> Vec<WatchStatus> {
        self.job_runner.watching(library)
    }
}

/// Start the job runner (and watcher) of a library, if it is not running yet.
pub fn start(state: &Arc<NodeState>, library: Uuid) -> Result<(), NetError> {
    let lib = state.library(library)?;
    let mut runners = state
        .job_runner
        .runners
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if runners.get(&library).is_some_and(|r| !r.task.is_finished()) {
        return Ok(());
    }
    let shared = Arc::new(Shared::default());
    // Events inside the node's own data folder (a location that holds it) are
    // the node's own writes: watching them would refresh forever.
    let root = state.data.root();
    let ignore = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let runner = Runner::new(lib, shared.clone(), state.config.watch, ignore);
    let task = tokio::spawn(runner.run());
    runners.insert(library, RunnerHandle { task, shared });
    Ok(())
}

/// A location being watched.
struct Watched {
    root: PathBuf,
    /// Its initial index is written: changes may be applied.
    ready: bool,
}

/// Changes seen on a location and not applied yet.
struct Pending {
    dirs: HashSet<String>,
    /// Rescan the whole location instead.
    full: bool,
    /// A catch-up rescan (by size) rather than live changes (in windows).
    catch_up: bool,
    first: Instant,
    last: Instant,
}

impl Pending {
    fn new(now: Instant) -> Self {
        Pending {
            dirs: HashSet::new(),
            full: false,
            catch_up: false,
            first: now,
            last: now,
        }
    }

    fn due(&self) -> Instant {
        if self.catch_up {
            return self.first;
        }
        (self.last + WATCH_QUIET).min(self.first + WATCH_MAX_DELAY)
    }
}

enum Work {
    /// Rescan for these bulk operations.
    Index(Vec<(Uuid, u64)>),
    /// Apply watched changes.
    Refresh(Pending),
}

/// Sends the location back to the runner when a job ends, even by a panic.
struct DoneGuard(mpsc::UnboundedSender<Uuid>, Uuid);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

struct Runner {
    lib: Arc<Library>,
    me: Uuid,
    shared: Arc<Shared>,
    watch: bool,
    ignore: PathBuf,
    fs_tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    fs_rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    done_tx: mpsc::UnboundedSender<Uuid>,
    done_rx: mpsc::UnboundedReceiver<Uuid>,
    watcher: Option<Arc<Mutex<RecommendedWatcher>>>,
    watched: HashMap<Uuid, Watched>,
    pending: HashMap<Uuid, Pending>,
    queued: HashMap<Uuid, Vec<(Uuid, u64)>>,
    busy: HashSet<Uuid>,
}

/// Run `f` on a blocking thread (library access may wait for a long write).
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, NetError> + Send + 'static,
) -> Result<R, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Other(format!("job runner task failed: {e}")))?
}

impl Runner {
    fn new(lib: Arc<Library>, shared: Arc<Shared>, watch: bool, ignore: PathBuf) -> Self {
        let (fs_tx, fs_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Runner {
            me: lib.device(),
            lib,
            shared,
            watch,
            ignore,
            fs_tx,
            fs_rx,
            done_tx,
            done_rx,
            watcher: None,
            watched: HashMap::new(),
            pending: HashMap::new(),
            queued: HashMap::new(),
            busy: HashSet::new(),
        }
    }

    async fn run(mut self) {
        // Subscribe first: nothing committed after the checks below is missed.
        let mut events = self.lib.subscribe();
        self.sync_watches(true).await;
        self.decide(true).await;
        self.dispatch();
        loop {
            let wake = self.next_due();
            let (mut check_bulk, mut check_locations) = (false, false);
            tokio::select! {
                ev = events.recv() => {
                    let mut ev = ev;
                    loop {
                        match ev {
                            Ok(e) => {
                                let snapshot = e.models.is_empty();
                                if e.source == Source::Remote
                                    && (snapshot || e.models.contains(&BULK_MODEL))
                                {
                                    check_bulk = true;
                                }
                                // Not-ready locations become ready with their
                                // initial index (a local write).
                                let waiting = self.watched.values().any(|w| !w.ready);
                                if snapshot
                                    || e.models.contains(&"location")
                                    || (waiting && e.source == Source::Local)
                                {
                                    check_locations = true;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                check_bulk = true;
                                check_locations = true;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                        ev = match events.try_recv() {
                            Ok(e) => Ok(e),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Err(broadcast::error::RecvError::Lagged(n))
                            }
                            Err(_) => break,
                        };
                    }
                }
                Some(fs) = self.fs_rx.recv() => {
                    self.on_fs(fs);
                    while let Ok(fs) = self.fs_rx.try_recv() {
                        self.on_fs(fs);
                    }
                }
                Some(loc) = self.done_rx.recv() => {
                    self.busy.remove(&loc);
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
            if check_locations {
                self.sync_watches(false).await;
            }
            if check_bulk {
                self.decide(false).await;
            }
            self.dispatch();
        }
    }

    /// When the next pending change of an idle, ready location is due.
    fn next_due(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter(|(l, _)| !self.busy.contains(l))
            .filter(|(l, _)| self.watched.get(l).is_some_and(|w| w.ready))
            .map(|(_, p)| p.due())
            .min()
    }

    /// Decide about the peers' bulk operations in state `seen` (on the first
    /// call also those a stopped node left `queued` or `indexing`).
    async fn decide(&mut self, first: bool) {
        let lib = self.lib.clone();
        let me = self.me;
        let decided = blocking(move || {
            let ops = query::bulk_operations(&lib)?;
            let todo: Vec<_> = ops
                .into_iter()
                .filter(|r| r.origin != me)
                .filter(|r| {
                    r.state == state::SEEN
                        || (first && (r.state == state::QUEUED || r.state == state::INDEXING))
                })
                .collect();
            if todo.is_empty() {
                return Ok(Vec::new());
            }
            let locations: Vec<Location> = query::locations(&lib)?
                .into_iter()
                .map(|s| s.location)
                .collect();
            let volumes = query::volumes(&lib)?;
            let mut out = Vec::new();
            for r in todo {
                let decision = match &r.op {
                    Some(op) => matching_location(op, r.origin, me, &locations, &volumes).ok_or(()),
                    None => Err(()),
                };
                let new_state = match (&r.op, decision) {
                    (None, _) => "failed: the bulk operation does not decode".to_string(),
                    (_, Ok(_)) => state::QUEUED.to_string(),
                    (_, Err(())) => state::BROWSABLE.to_string(),
                };
                set_state(&lib, &[(r.origin, r.origin_seq)], &new_state)?;
                out.push((r, decision.ok()));
            }
            Ok(out)
        })
        .await;
        let decided = match decided {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(library = %self.lib.id(), "cannot read bulk operations: {e}");
                return;
            }
        };
        for (r, local) in decided {
            let path = match &r.op {
                Some(BulkOperation::InitialIndex { path, .. })
                | Some(BulkOperation::Rescan { path, .. }) => path.as_str(),
                None => "",
            };
            match local {
                Some(loc) => {
                    tracing::info!(
                        library = %self.lib.id(), origin = %r.origin, seq = r.origin_seq,
                        path, local_location = %loc,
                        "a peer indexed a location this device has: index job queued"
                    );
                    self.shared.update(&[(r.origin, r.origin_seq)], |p| {
                        p.local_location = Some(loc)
                    });
                    self.queued
                        .entry(loc)
                        .or_default()
                        .push((r.origin, r.origin_seq));
                }
                None => tracing::info!(
                    library = %self.lib.id(), origin = %r.origin, seq = r.origin_seq, path,
                    "a peer indexed a location this device does not have: browsable"
                ),
            }
        }
    }

    /// Start the work that is due, one job per location at a time.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let locs: Vec<Uuid> = self
            .queued
            .keys()
            .chain(self.pending.keys())
            .copied()
            .collect();
        for loc in locs {
            if self.busy.contains(&loc) {
                continue;
            }
            let work = if let Some(keys) = self.queued.remove(&loc).filter(|k| !k.is_empty()) {
                // The job's rescan reads the whole location: pending changes
                // are in it.
                self.pending.remove(&loc);
                Work::Index(keys)
            } else {
                let ready = self.watched.get(&loc).is_some_and(|w| w.ready);
                match self.pending.get(&loc) {
                    Some(p) if ready && p.due() <= now => match self.pending.remove(&loc) {
                        Some(p) => Work::Refresh(p),
                        None => continue,
                    },
                    _ => continue,
                }
            };
            self.busy.insert(loc);
            let lib = self.lib.clone();
            let shared = self.shared.clone();
            let guard = DoneGuard(self.done_tx.clone(), loc);
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                match work {
                    Work::Index(keys) => run_index(&lib, &shared, loc, &keys),
                    Work::Refresh(p) => run_refresh(&lib, &shared, loc, p),
                }
            });
        }
    }

    /// A filesystem event: mark the folders it touches on their locations.
    fn on_fs(&mut self, ev: notify::Result<notify::Event>) {
        let now = Instant::now();
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(library = %self.lib.id(), paths = ?e.paths, "watcher error: {e}");
                for p in &e.paths {
                    if let Some((loc, _)) = self.location_of(p) {
                        self.pending
                            .entry(loc)
                            .or_insert_with(|| Pending::new(now))
                            .full = true;
                    }
                }
                return;
            }
        };
        if ev.need_rescan() {
            // The kernel dropped events: every location may have missed some.
            tracing::warn!(library = %self.lib.id(), "watcher queue overflowed: rescanning");
            let locs: Vec<Uuid> = self.watched.keys().copied().collect();
            for loc in locs {
                let p = self.pending.entry(loc).or_insert_with(|| Pending::new(now));
                p.full = true;
                p.last = now;
            }
            return;
        }
        // Opening and reading change nothing (and the rescans themselves read).
        if let EventKind::Access(a) = ev.kind {
            if a != AccessKind::Close(AccessMode::Write) {
                return;
            }
        }
        for path in &ev.paths {
            if path.starts_with(&self.ignore) {
                continue;
            }
            let Some((loc, rel)) = self.location_of(path) else {
                continue;
            };
            // Names that are not UTF-8 are not indexed.
            let Some(rel) = rel.to_str() else { continue };
            let dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            let p = self.pending.entry(loc).or_insert_with(|| Pending::new(now));
            p.last = now;
            if !p.full {
                p.dirs.insert(dir);
                if p.dirs.len() > MAX_DIRTY_DIRS {
                    p.full = true;
                    p.dirs.clear();
                }
            }
        }
    }

    /// The watched location holding `path`, and the path relative to its root.
    fn location_of<'p>(&self, path: &'p Path) -> Option<(Uuid, &'p Path)> {
        self.watched
            .iter()
            .find_map(|(id, w)| path.strip_prefix(&w.root).ok().map(|rel| (*id, rel)))
    }

    /// Watch this device's locations, stop watching removed ones, and note which
    /// are ready. On the first call, queue a catch-up rescan of each ready one.
    async fn sync_watches(&mut self, first: bool) {
        if !self.watch {
            return;
        }
        let lib = self.lib.clone();
        let me = self.me;
        let mine = blocking(move || {
            let own_indexed: HashSet<Uuid> = query::bulk_operations(&lib)?
                .into_iter()
                .filter(|r| r.origin == me)
                .filter_map(|r| match r.op {
                    Some(BulkOperation::InitialIndex { location, .. }) => Some(location),
                    _ => None,
                })
                .collect();
            Ok(query::locations(&lib)?
                .into_iter()
                .filter(|s| s.location.device == me)
                .map(|s| {
                    let ready = s.entries > 0 || own_indexed.contains(&s.location.id);
                    (s.location, ready)
                })
                .collect::<Vec<_>>())
        })
        .await;
        let mine = match mine {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(library = %self.lib.id(), "cannot list locations to watch: {e}");
                return;
            }
        };
        let current: HashMap<Uuid, PathBuf> = mine
            .iter()
            .map(|(l, _)| (l.id, PathBuf::from(&l.path)))
            .collect();
        let gone: Vec<Uuid> = self
            .watched
            .iter()
            .filter(|(id, w)| current.get(id) != Some(&w.root))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(w) = self.watched.remove(&id) {
                self.pending.remove(&id);
                if let Some(watcher) = self.watcher.clone() {
                    let root = w.root.clone();
                    let _ = blocking(move || {
                        let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                        // Fails when the folder is gone, which ends its watch anyway.
                        let _ = watcher.unwatch(&root);
                        Ok(())
                    })
                    .await;
                }
                tracing::info!(library = %self.lib.id(), location = %id, path = %w.root.display(), "stopped watching");
            }
        }
        for (loc, ready) in mine {
            if let Some(w) = self.watched.get_mut(&loc.id) {
                w.ready = ready;
                continue;
            }
            let root = PathBuf::from(&loc.path);
            if let Err(e) = self.start_watching(&root).await {
                tracing::warn!(
                    library = %self.lib.id(), location = %loc.id, path = %loc.path,
                    "cannot watch a location; its changes are seen on rescan only: {e}"
                );
                continue;
            }
            tracing::info!(library = %self.lib.id(), location = %loc.id, path = %loc.path, "watching");
            self.watched.insert(loc.id, Watched { root, ready });
            if first && ready {
                let p = self
                    .pending
                    .entry(loc.id)
                    .or_insert_with(|| Pending::new(Instant::now()));
                p.full = true;
                p.catch_up = true;
            }
        }
        let mut list: Vec<WatchStatus> = self
            .watched
            .iter()
            .map(|(id, w)| WatchStatus {
                location: *id,
                path: w.root.to_string_lossy().into_owned(),
                ready: w.ready,
            })
            .collect();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        *self
            .shared
            .watching
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = list;
    }

    async fn start_watching(&mut self, root: &Path) -> Result<(), NetError> {
        let watcher = match &self.watcher {
            Some(w) => w.clone(),
            None => {
                let tx = self.fs_tx.clone();
                let w = notify::recommended_watcher(move |ev| {
                    let _ = tx.send(ev);
                })
                .map_err(|e| NetError::Other(format!("cannot start a filesystem watcher: {e}")))?;
                let w = Arc::new(Mutex::new(w));
                self.watcher = Some(w.clone());
                w
            }
        };
        let root = root.to_path_buf();
        // Adding a recursive watch walks the tree: not on an async thread.
        blocking(move || {
            let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
            w.watch(&root, RecursiveMode::Recursive)
                .map_err(|e| NetError::Other(e.to_string()))
        })
        .await
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// This device's location that is the same as the one a peer's bulk operation
/// names: the same absolute path, or the same path below the mount point of a
/// volume with the same fingerprint.
fn matching_location(
    op: &BulkOperation,
    origin: Uuid,
    me: Uuid,
    locations: &[Location],
    volumes: &[Volume],
) -> Option<Uuid> {
    let (path, fingerprint) = match op {
        BulkOperation::InitialIndex {
            path,
            volume_fingerprint,
            ..
        }
        | BulkOperation::Rescan {
            path,
            volume_fingerprint,
            ..
        } => (path.as_str(), volume_fingerprint.as_str()),
    };
    let mine = || locations.iter().filter(|l| l.device == me);
    if let Some(l) = mine().find(|l| l.path == path) {
        return Some(l.id);
    }
    if fingerprint.is_empty() {
        return None;
    }
    let theirs = volumes
        .iter()
        .find(|v| v.device == origin && v.fingerprint == fingerprint)?;
    let rel = Path::new(path).strip_prefix(&theirs.mount_point).ok()?;
    mine()
        .find(|l| {
            volumes
                .iter()
                .find(|v| v.id == l.volume && v.fingerprint == fingerprint)
                .and_then(|v| Path::new(&l.path).strip_prefix(&v.mount_point).ok())
                == Some(rel)
        })
        .map(|l| l.id)
}

/// Set the device-local state of bulk operation rows (not synced, not logged).
fn set_state(lib: &Library, keys: &[(Uuid, u64)], state: &str) -> Result<(), NetError> {
    lib.with_tx(|ctx| {
        let mut stmt = ctx.sql().prepare_cached(
            "UPDATE bulk_operations SET state = ?1 WHERE origin = ?2 AND origin_seq = ?3",
        )?;
        for (origin, seq) in keys {
            stmt.execute(concord::rusqlite::params![state, origin, *seq as i64])?;
        }
        Ok(())
    })?;
    Ok(())
}

/// An index job: rescan this device's `location` for the bulk operations `keys`.
fn run_index(lib: &Library, shared: &Shared, location: Uuid, keys: &[(Uuid, u64)]) {
    let started = Instant::now();
    if let Err(e) = set_state(lib, keys, state::INDEXING) {
        tracing::warn!(location = %location, "cannot record the index job's state: {e}");
    }
    shared.update(keys, |p| {
        *p = Progress {
            local_location: Some(location),
            started: Some(started),
            ..Progress::default()
        }
    });
    tracing::info!(library = %lib.id(), location = %location, jobs = keys.len(), "index job started");
    let mut walked = 0u64;
    let mut logged = Instant::now();
    let opts = RescanOptions {
        policy: WritePolicy::BySize,
        cancel: Some(&shared.cancel),
    };
    let result = index::rescan_location_with(lib, location, opts, &mut |done, total| {
        if total.is_none() {
            walked = done;
        }
        shared.update(keys, |p| {
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
            shared.update(keys, |p| {
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
        Err(_) if shared.cancelled() => {}
        Err(e) => {
            shared.update(keys, |p| p.elapsed = Some(elapsed));
            let _ = set_state(lib, keys, &format!("failed: {e}"));
            tracing::warn!(library = %lib.id(), location = %location, "index job failed: {e}");
        }
    }
}

/// Apply watched changes to `location` (see the module docs for the policy).
fn run_refresh(lib: &Library, shared: &Shared, location: Uuid, p: Pending) {
    let opts = RescanOptions {
        policy: if p.catch_up {
            WritePolicy::BySize
        } else {
            WritePolicy::Windows
        },
        cancel: Some(&shared.cancel),
    };
    let started = Instant::now();
    let result = if p.full {
        index::rescan_location_with(lib, location, opts, &mut |_, _| {})
    } else {
        let dirs: Vec<String> = p.dirs.into_iter().collect();
        index::refresh_dirs(lib, location, &dirs, opts, &mut |_, _| {})
    };
    match result {
        Ok(r) if r.inserted + r.updated + r.deleted > 0 => tracing::info!(
            library = %lib.id(), location = %location, catch_up = p.catch_up,
            inserted = r.inserted, updated = r.updated, deleted = r.deleted, mode = ?r.mode,
            ms = started.elapsed().as_millis() as u64,
            "watcher: changes written"
        ),
        Ok(_) => {}
        Err(_) if shared.cancelled() => {}
        Err(e) => {
            tracing::warn!(library = %lib.id(), location = %location, "watcher: cannot apply changes: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(device: Uuid, volume: Uuid, path: &str) -> Location {
        Location {
            id: Uuid::now_v7(),
            device,
            volume,
            path: path.into(),
            name: "x".into(),
        }
    }

    fn vol(device: Uuid, fingerprint: &str, mount: &str) -> Volume {
        Volume {
            id: Uuid::now_v7(),
            device,
            name: mount.into(),
            fingerprint: fingerprint.into(),
            mount_point: mount.into(),
        }
    }

    #[test]
    fn matching_by_path_or_place_on_the_volume() {
        let (me, peer) = (Uuid::now_v7(), Uuid::now_v7());
        let their_vol = vol(peer, "uuid:disk", "/media/peer/disk");
        let my_vol = vol(me, "uuid:disk", "/mnt/disk");
        let other_vol = vol(me, "uuid:other", "/");
        let photos = loc(me, my_vol.id, "/mnt/disk/photos");
        let home = loc(me, other_vol.id, "/home/u/docs");
        let theirs = loc(peer, their_vol.id, "/home/u/docs");
        let locations = vec![photos.clone(), home.clone(), theirs];
        let volumes = vec![their_vol, my_vol, other_vol];
        let op = |path: &str, fp: &str| BulkOperation::InitialIndex {
            location: Uuid::now_v7(),
            path: path.into(),
            volume_fingerprint: fp.into(),
            count: 1,
        };
        let m = |o: &BulkOperation| matching_location(o, peer, me, &locations, &volumes);
        assert_eq!(m(&op("/home/u/docs", "uuid:elsewhere")), Some(home.id));
        assert_eq!(
            m(&op("/media/peer/disk/photos", "uuid:disk")),
            Some(photos.id)
        );
        assert_eq!(m(&op("/media/peer/disk/music", "uuid:disk")), None);
        assert_eq!(m(&op("/media/peer/disk/photos", "uuid:other")), None);
        assert_eq!(m(&op("/home/u/music", "")), None);
    }
}
