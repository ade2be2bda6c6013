//! How the indexer reports progress to its caller (a CLI bar, a job's status).

/// A progress callback: `(done, total)`. While walking, `total` is `None` and
/// `done` counts entries found; while writing, `total` is the number of rows to
/// write. A plain `FnMut` so callers need no trait of ours.
pub type ProgressCallback<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// How often (in entries) the walk and the bulk writer report progress: often
/// enough for a moving bar, rarely enough to cost nothing.
pub(crate) const PROGRESS_EVERY: usize = 1024;
