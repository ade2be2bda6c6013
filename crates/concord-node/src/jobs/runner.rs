//! One library's job runner: a task that decides about the peers' bulk
//! operations, takes the folder watcher's changes, and starts the work that is
//! due, one job per location at a time (see [`crate::jobs`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use concord::model::Location;
use concord::query;
use concord::sync::entry::BulkOperation;
use concord::sync::txn::Source;
use concord::sync::BULK_MODEL;
use concord::{Library, Uuid};
use tokio::sync::{broadcast, mpsc};

use crate::error::NetError;
use crate::watcher::{FolderChange, FolderWatcher};

use super::board::{BulkKey, JobBoard, WatchStatus};
use super::decide::decide;
use super::pending::Pending;
use super::work::{run_index, run_refresh};

/// A location being watched.
struct Watched {
    root: PathBuf,
    /// Its initial index is written: changes may be applied.
    ready: bool,
}

enum Work {
    /// Rescan for these bulk operations.
    Index(Vec<BulkKey>),
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

/// What woke the runner up, and what it must look at again.
#[derive(Default)]
struct Recheck {
    bulk: bool,
    locations: bool,
}

/// The state of one library's runner task.
pub struct Runner {
    lib: Arc<Library>,
    me: Uuid,
    board: Arc<JobBoard>,
    /// `None` when the node does not watch locations.
    watcher: Option<FolderWatcher>,
    changes: mpsc::UnboundedReceiver<FolderChange>,
    done_tx: mpsc::UnboundedSender<Uuid>,
    done_rx: mpsc::UnboundedReceiver<Uuid>,
    watched: HashMap<Uuid, Watched>,
    pending: HashMap<Uuid, Pending>,
    queued: HashMap<Uuid, Vec<BulkKey>>,
    busy: HashSet<Uuid>,
}

/// Run `f` on a blocking thread (library access may wait for a long write).
async fn on_blocking_thread<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, NetError> + Send + 'static,
) -> Result<R, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Other(format!("job runner task failed: {e}")))?
}

impl Runner {
    /// A runner for `lib`; with `watch`, it watches this device's locations
    /// (ignoring changes below `ignore`).
    pub fn new(lib: Arc<Library>, board: Arc<JobBoard>, watch: bool, ignore: PathBuf) -> Self {
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let watcher = watch.then(|| FolderWatcher::new(lib.id(), ignore, changes_tx));
        Runner {
            me: lib.device(),
            lib,
            board,
            watcher,
            changes,
            done_tx,
            done_rx,
            watched: HashMap::new(),
            pending: HashMap::new(),
            queued: HashMap::new(),
            busy: HashSet::new(),
        }
    }

    /// Run until the library closes or the task is aborted.
    pub async fn run(mut self) {
        // Subscribe first: nothing committed after the checks below is missed.
        let mut events = self.lib.subscribe();
        self.sync_watches(true).await;
        self.decide(true).await;
        self.dispatch();
        loop {
            let wake = self.next_due();
            let mut recheck = Recheck::default();
            tokio::select! {
                event = events.recv() => {
                    if !self.on_library_events(event, &mut events, &mut recheck) {
                        return;
                    }
                }
                Some(change) = self.changes.recv() => {
                    self.on_change(change);
                    while let Ok(change) = self.changes.try_recv() {
                        self.on_change(change);
                    }
                }
                Some(location) = self.done_rx.recv() => {
                    self.busy.remove(&location);
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
            if recheck.locations {
                self.sync_watches(false).await;
            }
            if recheck.bulk {
                self.decide(false).await;
            }
            self.dispatch();
        }
    }

    /// Note what the library's change events (`first` and those queued behind
    /// it) ask to look at again. `false` when the library is closed.
    fn on_library_events(
        &self,
        first: Result<concord::ResourceChanged, broadcast::error::RecvError>,
        events: &mut broadcast::Receiver<concord::ResourceChanged>,
        recheck: &mut Recheck,
    ) -> bool {
        let mut event = first;
        loop {
            match event {
                Ok(e) => {
                    let snapshot = e.models.is_empty();
                    if e.source == Source::Remote && (snapshot || e.models.contains(&BULK_MODEL)) {
                        recheck.bulk = true;
                    }
                    // Not-ready locations become ready with their initial
                    // index (a local write).
                    let waiting = self.watched.values().any(|w| !w.ready);
                    if snapshot
                        || e.models.contains(&"location")
                        || (waiting && e.source == Source::Local)
                    {
                        recheck.locations = true;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    recheck.bulk = true;
                    recheck.locations = true;
                }
                Err(broadcast::error::RecvError::Closed) => return false,
            }
            event = match events.try_recv() {
                Ok(e) => Ok(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(_) => return true,
            };
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
    /// call also those a stopped node left `queued` or `indexing`), and queue
    /// index jobs for those this device has.
    async fn decide(&mut self, first: bool) {
        let lib = self.lib.clone();
        let decided = match on_blocking_thread(move || decide(&lib, first)).await {
            Ok(decided) => decided,
            Err(e) => {
                tracing::warn!(library = %self.lib.id(), "cannot read bulk operations: {e}");
                return;
            }
        };
        for (record, local) in decided {
            let path = record.op.as_ref().map_or("", |op| op.path());
            let key = (record.origin, record.origin_seq);
            match local {
                Some(location) => {
                    tracing::info!(
                        library = %self.lib.id(), origin = %record.origin, seq = record.origin_seq,
                        path, local_location = %location,
                        "a peer indexed a location this device has: index job queued"
                    );
                    self.board
                        .update(&[key], |p| p.local_location = Some(location));
                    self.queued.entry(location).or_default().push(key);
                }
                None => tracing::info!(
                    library = %self.lib.id(), origin = %record.origin, seq = record.origin_seq, path,
                    "a peer indexed a location this device does not have: browsable"
                ),
            }
        }
    }

    /// Start the work that is due, one job per location at a time.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let locations: Vec<Uuid> = self
            .queued
            .keys()
            .chain(self.pending.keys())
            .copied()
            .collect();
        for location in locations {
            if self.busy.contains(&location) {
                continue;
            }
            let Some(work) = self.take_work(location, now) else {
                continue;
            };
            self.busy.insert(location);
            let lib = self.lib.clone();
            let board = self.board.clone();
            let guard = DoneGuard(self.done_tx.clone(), location);
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                match work {
                    Work::Index(keys) => run_index(&lib, &board, location, &keys),
                    Work::Refresh(pending) => run_refresh(&lib, &board, location, pending),
                }
            });
        }
    }

    /// The work due on an idle `location`: its queued index jobs first, else
    /// its pending changes once ready and due.
    fn take_work(&mut self, location: Uuid, now: Instant) -> Option<Work> {
        if let Some(keys) = self.queued.remove(&location).filter(|k| !k.is_empty()) {
            // The job's rescan reads the whole location: pending changes are in it.
            self.pending.remove(&location);
            return Some(Work::Index(keys));
        }
        let ready = self.watched.get(&location).is_some_and(|w| w.ready);
        match self.pending.get(&location) {
            Some(p) if ready && p.due() <= now => self.pending.remove(&location).map(Work::Refresh),
            _ => None,
        }
    }

    /// A change the folder watcher reported: mark it on its location.
    fn on_change(&mut self, change: FolderChange) {
        let now = Instant::now();
        match change {
            FolderChange::Folder { location, dir } => {
                // A location unwatched since the change was seen.
                if !self.watched.contains_key(&location) {
                    return;
                }
                self.pending
                    .entry(location)
                    .or_insert_with(|| Pending::new(now))
                    .add_folder(dir, now);
            }
            FolderChange::Location(location) => {
                if self.watched.contains_key(&location) {
                    self.pending
                        .entry(location)
                        .or_insert_with(|| Pending::new(now))
                        .full = true;
                }
            }
            FolderChange::Overflow => {
                for location in self.watched.keys() {
                    let pending = self
                        .pending
                        .entry(*location)
                        .or_insert_with(|| Pending::new(now));
                    pending.full = true;
                    pending.last = now;
                }
            }
        }
    }

    /// Watch this device's locations, stop watching removed ones, and note which
    /// are ready. On the first call, queue a catch-up rescan of each ready one.
    async fn sync_watches(&mut self, first: bool) {
        let Some(watcher) = self.watcher.clone() else {
            return;
        };
        let lib = self.lib.clone();
        let me = self.me;
        let mine = match on_blocking_thread(move || own_locations(&lib, me)).await {
            Ok(mine) => mine,
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
            if let Some(stopped) = self.watched.remove(&id) {
                self.pending.remove(&id);
                let unwatching = watcher.clone();
                let _ = on_blocking_thread(move || {
                    unwatching.unwatch(id);
                    Ok(())
                })
                .await;
                tracing::info!(library = %self.lib.id(), location = %id, path = %stopped.root.display(), "stopped watching");
            }
        }
        for (location, ready) in mine {
            if let Some(watched) = self.watched.get_mut(&location.id) {
                watched.ready = ready;
                continue;
            }
            let root = PathBuf::from(&location.path);
            let (watching, at) = (watcher.clone(), root.clone());
            if let Err(e) = on_blocking_thread(move || watching.watch(location.id, &at)).await {
                tracing::warn!(
                    library = %self.lib.id(), location = %location.id, path = %location.path,
                    "cannot watch a location; its changes are seen on rescan only: {e}"
                );
                continue;
            }
            tracing::info!(library = %self.lib.id(), location = %location.id, path = %location.path, "watching");
            self.watched.insert(location.id, Watched { root, ready });
            if first && ready {
                let catch_up = self
                    .pending
                    .entry(location.id)
                    .or_insert_with(|| Pending::new(Instant::now()));
                catch_up.full = true;
                catch_up.catch_up = true;
            }
        }
        self.publish_watching();
    }

    /// Show the watched locations to status queries.
    fn publish_watching(&self) {
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
        self.board.set_watching(list);
    }
}

/// This device's locations in `lib`, each with whether its initial index is
/// written (entries, or its own `InitialIndex` bulk operation). Blocking.
fn own_locations(lib: &Library, me: Uuid) -> Result<Vec<(Location, bool)>, NetError> {
    let own_indexed: HashSet<Uuid> = query::bulk_operations(lib)?
        .into_iter()
        .filter(|r| r.origin == me)
        .filter_map(|r| match r.op {
            Some(BulkOperation::InitialIndex { location, .. }) => Some(location),
            _ => None,
        })
        .collect();
    Ok(query::locations(lib)?
        .into_iter()
        .filter(|s| s.location.device == me)
        .map(|s| {
            let ready = s.entries > 0 || own_indexed.contains(&s.location.id);
            (s.location, ready)
        })
        .collect())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
