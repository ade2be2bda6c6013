//! Changes the folder watcher reported on a location and not applied yet, and
//! when they are due: events are debounced per location, applied after
//! [`WATCH_QUIET`] without new events and at most [`WATCH_MAX_DELAY`] after the
//! first one, so an editor's save burst is one change.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Changes are applied after this long without a new event on the location...
pub const WATCH_QUIET: Duration = Duration::from_millis(150);
/// ...and at most this long after the first event of a burst.
pub const WATCH_MAX_DELAY: Duration = Duration::from_secs(1);
/// Past this many changed folders pending on one location, it is rescanned whole.
const MAX_DIRTY_DIRS: usize = 10_000;

/// Changes seen on a location and not applied yet.
pub struct Pending {
    /// Changed folders, relative to the location's root.
    pub dirs: HashSet<String>,
    /// Rescan the whole location instead.
    pub full: bool,
    /// A catch-up rescan (by size) rather than live changes (in windows).
    pub catch_up: bool,
    pub first: Instant,
    pub last: Instant,
}

impl Pending {
    /// Nothing pending yet; the burst starts `now`.
    pub fn new(now: Instant) -> Self {
        Pending {
            dirs: HashSet::new(),
            full: false,
            catch_up: false,
            first: now,
            last: now,
        }
    }

    /// When these changes should be applied.
    pub fn due(&self) -> Instant {
        if self.catch_up {
            return self.first;
        }
        (self.last + WATCH_QUIET).min(self.first + WATCH_MAX_DELAY)
    }

    /// A change inside `dir`, seen at `now`.
    pub fn add_folder(&mut self, dir: String, now: Instant) {
        self.last = now;
        if !self.full {
            self.dirs.insert(dir);
            if self.dirs.len() > MAX_DIRTY_DIRS {
                self.full = true;
                self.dirs.clear();
            }
        }
    }
}
