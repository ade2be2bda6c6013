//! Snapshot backfill (DESIGN §8): the current state as rows with their field
//! clocks and tombstones, in resumable chunks, merged into the receiver by the
//! same rules as entries (per-field LWW, membership presence, final tombstones).
//!
//! `read.rs` serves chunks, `merge.rs` merges them in; `columns.rs` is how a
//! row and its field clocks are read, shared by both and by remote browsing.

mod columns;
mod merge;
mod read;

/// Reading a row with its field clocks (used by remote browsing too).
pub(crate) use columns::{read_row, row_columns};
/// Merging a chunk in (the receiving side).
pub use merge::apply;
/// Serving a chunk (the sending side).
pub use read::chunk;
