//! The folder watcher: watches a library's locations on this device
//! (recursively, with the `notify` crate) and reports which folders changed,
//! over a channel, as [`FolderChange`]s. It knows nothing of jobs or of the
//! library: the job runner decides when and how the changes are written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use concord::Uuid;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::NetError;

/// What the watcher saw change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderChange {
    /// Something changed in `dir` (relative to the location's root; `""` is
    /// the root itself).
    Folder { location: Uuid, dir: String },
    /// Watching failed on paths of this location: rescan it whole.
    Location(Uuid),
    /// The kernel dropped events: every watched location may have missed some.
    Overflow,
}

/// Watches locations and sends their changes. Cheap to clone: clones watch
/// the same locations.
#[derive(Clone)]
pub struct FolderWatcher {
    library: Uuid,
    roots: Arc<Mutex<HashMap<Uuid, PathBuf>>>,
    ignore: Arc<PathBuf>,
    notify: Arc<Mutex<Option<RecommendedWatcher>>>,
    changes: mpsc::UnboundedSender<FolderChange>,
}

impl FolderWatcher {
    /// A watcher for `library`'s locations that reports to `changes`, ignoring
    /// everything below `ignore` (the node's own data folder: its writes
    /// there would be seen as changes forever).
    pub fn new(
        library: Uuid,
        ignore: PathBuf,
        changes: mpsc::UnboundedSender<FolderChange>,
    ) -> Self {
        FolderWatcher {
            library,
            roots: Arc::new(Mutex::new(HashMap::new())),
            ignore: Arc::new(ignore),
            notify: Arc::new(Mutex::new(None)),
            changes,
        }
    }

    /// Watch `location`, rooted at `root`. Blocking: adding a recursive watch
    /// walks the tree.
    pub fn watch(&self, location: Uuid, root: &Path) -> Result<(), NetError> {
        let mut notify = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        if notify.is_none() {
            *notify = Some(self.start_notify()?);
        }
        if let Some(watcher) = notify.as_mut() {
            watcher
                .watch(root, RecursiveMode::Recursive)
                .map_err(|e| NetError::Other(e.to_string()))?;
        }
        drop(notify);
        self.roots().insert(location, root.to_path_buf());
        Ok(())
    }

    /// Stop watching `location`. Blocking.
    pub fn unwatch(&self, location: Uuid) {
        let Some(root) = self.roots().remove(&location) else {
            return;
        };
        let mut notify = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watcher) = notify.as_mut() {
            // Fails when the folder is gone, which ends its watch anyway.
            let _ = watcher.unwatch(&root);
        }
    }

    fn roots(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, PathBuf>> {
        self.roots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_notify(&self) -> Result<RecommendedWatcher, NetError> {
        // The callback holds what it reads, not the watcher (which owns it).
        let (roots, ignore) = (self.roots.clone(), self.ignore.clone());
        let (library, changes) = (self.library, self.changes.clone());
        notify::recommended_watcher(move |event| {
            let roots = roots.lock().unwrap_or_else(|e| e.into_inner());
            for change in classify(event, &roots, &ignore, library) {
                let _ = changes.send(change);
            }
        })
        .map_err(|e| NetError::Other(format!("cannot start a filesystem watcher: {e}")))
    }
}

/// The folders a filesystem event touches, by location.
fn classify(
    event: notify::Result<notify::Event>,
    roots: &HashMap<Uuid, PathBuf>,
    ignore: &Path,
    library: Uuid,
) -> Vec<FolderChange> {
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(library = %library, paths = ?e.paths, "watcher error: {e}");
            return e
                .paths
                .iter()
                .filter_map(|path| location_of(roots, path))
                .map(|(location, _)| FolderChange::Location(location))
                .collect();
        }
    };
    if event.need_rescan() {
        tracing::warn!(library = %library, "watcher queue overflowed: rescanning");
        return vec![FolderChange::Overflow];
    }
    // Opening and reading change nothing (and the rescans themselves read).
    if let EventKind::Access(access) = event.kind {
        if access != AccessKind::Close(AccessMode::Write) {
            return Vec::new();
        }
    }
    let mut out = Vec::new();
    for path in &event.paths {
        if path.starts_with(ignore) {
            continue;
        }
        let Some((location, rel)) = location_of(roots, path) else {
            continue;
        };
        // Names that are not UTF-8 are not indexed.
        let Some(rel) = rel.to_str() else { continue };
        let dir = rel.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
        out.push(FolderChange::Folder { location, dir });
    }
    out
}

/// The watched location holding `path`, and the path relative to its root.
fn location_of<'p>(roots: &HashMap<Uuid, PathBuf>, path: &'p Path) -> Option<(Uuid, &'p Path)> {
    roots
        .iter()
        .find_map(|(id, root)| path.strip_prefix(root).ok().map(|rel| (*id, rel)))
}
