//! What wakes an `instant` conduit: the library's change events. A file
//! entry written (by a device's indexer or watcher, here or on a peer and
//! synced here) marks its library changed; the scheduler then runs the
//! library's `instant` conduits after a short debounce instead of polling.
//! Per library, not per location: an event names the models it touched,
//! not the rows, and a cycle that finds nothing to do hashes nothing and
//! writes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use concord::hlc::{Clock, SystemClock};
use concord::sync::BULK_MODEL;
use concord::{Library, Uuid};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

/// Models whose changes may mean a conduit's folders changed: file entries,
/// a peer's bulk index, or a snapshot (an event naming no model).
const FILE_MODELS: [&str; 2] = ["file_entry", BULK_MODEL];
/// Tag assignments (pins).
const TAG_MODEL: &str = "tag_assignment";

/// The last file change seen per library, and a wake-up for the scheduler.
#[derive(Default)]
pub struct Changes {
    changed_ms: Mutex<HashMap<Uuid, i64>>,
    /// The last tag assignment or removal seen per library: pinning an
    /// offloaded file wakes its `instant` Offload conduit.
    tagged_ms: Mutex<HashMap<Uuid, i64>>,
    listening: Mutex<HashSet<Uuid>>,
    notify: Notify,
}

impl Changes {
    /// Listen to `lib`'s events (once per open library; again after the
    /// library was closed and opened anew).
    pub fn listen(self: &Arc<Self>, lib: &Arc<Library>) {
        if !lock(&self.listening).insert(lib.id()) {
            return;
        }
        let mut events = lib.subscribe();
        let id = lib.id();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let files =
                            e.models.is_empty() || e.models.iter().any(|m| FILE_MODELS.contains(m));
                        if files {
                            me.mark(id);
                        }
                        if e.models.contains(&TAG_MODEL) {
                            lock(&me.tagged_ms).insert(id, SystemClock.now_ms() as i64);
                            me.notify.notify_one();
                        }
                    }
                    Err(RecvError::Lagged(_)) => me.mark(id),
                    Err(RecvError::Closed) => break,
                }
            }
            lock(&me.listening).remove(&id);
        });
    }

    fn mark(&self, library: Uuid) {
        lock(&self.changed_ms).insert(library, SystemClock.now_ms() as i64);
        self.notify.notify_one();
    }

    /// When a file of `library` last changed (ms; 0: not since the node started).
    pub fn changed_ms(&self, library: Uuid) -> i64 {
        lock(&self.changed_ms).get(&library).copied().unwrap_or(0)
    }

    /// When a tag of `library` was last assigned or removed (ms; 0: not
    /// since the node started).
    pub fn tagged_ms(&self, library: Uuid) -> i64 {
        lock(&self.tagged_ms).get(&library).copied().unwrap_or(0)
    }

    /// Wait for the next change.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
