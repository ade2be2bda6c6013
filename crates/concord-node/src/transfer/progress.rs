//! Counters of a transfer's progress, shared by the engine and whoever shows
//! it (a status command, a progress bar, a benchmark, a test).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes and files moved so far; updated as data flows, read at any time.
/// Bytes are counted on the wire (file data plus BLAKE3 tree nodes).
#[derive(Debug, Default)]
pub struct TransferProgress {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Bytes verified and written to temp files (added as each file's
    /// stream ends; `bytes_received` moves live).
    pub bytes_verified: AtomicU64,
    pub files_done: AtomicU64,
    pub files_failed: AtomicU64,
}

/// A copy of [`TransferProgress`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressSnapshot {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_verified: u64,
    pub files_done: u64,
    pub files_failed: u64,
}

impl TransferProgress {
    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_verified: self.bytes_verified.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            files_failed: self.files_failed.load(Ordering::Relaxed),
        }
    }
}
