//! The directory indexer: turns a real folder into a location and its file
//! entries, and keeps them up to date on rescan. One submodule per step:
//!
//! - `walk`: [`scan`] walks a folder with `std::fs`, never following symbolic
//!   links (so it cannot loop); links are recorded as
//!   [`crate::model::entry_kind::SYMLINK`]. Entries it cannot read, and names
//!   that are not UTF-8, are skipped with a warning and counted; sockets, FIFOs
//!   and device nodes are left out.
//! - `volume`: which filesystem a folder lives on ([`volume_identity`]).
//! - `add`: [`add_location`] finds or creates the [`crate::model::Volume`] of
//!   the folder's filesystem, inserts the [`crate::model::Location`] and writes
//!   every entry with ONE `commit_bulk` (DESIGN §7).
//! - `rescan`: [`rescan_location`] walks again, diffs by path against the
//!   stored entries, and writes the differences by size.
//!   [`rescan_location_with`] can instead keep to batches of at most
//!   [`BATCH_MAX`] ([`WritePolicy::Windows`]) and be cancelled.
//! - `refresh`: [`refresh_dirs`] does the same for a few folders of a
//!   location, reading only their listings (and the contents of folders that
//!   are new): what a filesystem watcher calls.
//! - `write`: how differences are written (DESIGN §7): fewer than
//!   [`SINGLE_COMMIT_BELOW`] as single commits, up to [`BATCH_MAX`] as one
//!   batch, more with new entries through `commit_bulk` and the rest in batches.
//! - `progress`: the [`ProgressCallback`] every step reports through.
//! - `moves`: an entry renamed or moved on disk keeps its UUID (matched by
//!   inode, kind, and size and time for files), so its tags follow it.
//!
//! - `offloaded`: an entry whose content an Offload conduit moved away
//!   ([`crate::model::FileEntry::offloaded_to`]) is kept while its file is
//!   absent and returns to local when a file reappears at its path.
//! - `switch`: [`commit_offloaded`] and [`commit_local`] switch an entry
//!   between local and offloaded under the location's lock.
//!
//! Rescans and refreshes of one location run one at a time in a process.
//!
//! Dependencies run one way: `progress` ← `walk`, `volume` ← `write` ←
//! `rescan` ← `refresh`, `offloaded` ← `write`, `moves` below `rescan`, `switch` above `rescan`
//! (its lock), and `add` beside `rescan`;
//! this root only re-exports.

mod add;
mod moves;
mod offloaded;
mod progress;
mod refresh;
mod rescan;
mod switch;
mod volume;
mod walk;
mod write;

#[cfg(test)]
mod tests;

pub use add::{add_location, Indexed};
pub use offloaded::OffloadedTo;
pub use progress::ProgressCallback;
pub use refresh::refresh_dirs;
pub use rescan::{rescan_location, rescan_location_with, RescanReport};
pub use switch::{commit_local, commit_offloaded};
pub use volume::{volume_identity, VolumeIdentity};
pub use walk::{scan, Scan, ScannedEntry};
pub use write::{RescanOptions, WriteMode, WritePolicy, BATCH_MAX, SINGLE_COMMIT_BELOW};
