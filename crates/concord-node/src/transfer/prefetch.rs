//! Prefetching a conduit's copies: before the core's executor (which takes
//! one action at a time) carries out a batch of copies from a remote end,
//! their content is fetched through the engine several files at once
//! ([`MAX_CONCURRENT_PER_PEER`] in flight on one connection) into the
//! receiving location's `.concord/incoming/`, named by hash, verified and
//! fsynced (the folder once for the batch), so that each copy finds its
//! file already here instead of paying a round trip of its own. Without it
//! a conduit of 20,000 small files ran 20,000 round trips one after the
//! other, and large files never overlapped.
//!
//! Bounds: a batch holds at most [`BATCH_FILES`] copies and
//! [`BATCH_BYTES`] (a larger file alone), and what it fetched is consumed
//! or removed ([`Prefetched::clear`], also on drop) before the next one
//! starts, so `.concord/incoming/` never holds more than one batch. A full
//! disk stops a batch: files not yet started are not fetched and their
//! copies fail with "disk full", which pauses the conduit (the engine
//! removes the temp file of a write that hit it; nothing gets a final name).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use concord::conduit::plan::Action;
use concord::conduit::tree::Hash;
use tokio::sync::Semaphore;

use crate::error::NetError;
use crate::peers::Peer;
use crate::transfer::fetch::{ContentClient, FileRequest};
use crate::transfer::partial::{sync_folder, DISK_FULL};
use crate::transfer::progress::TransferProgress;
use crate::transfer::wire::MAX_CONCURRENT_PER_PEER;

/// Most copies in one prefetched batch: each batch's fetch drains before
/// the executor places it, so fewer batches drain less often (on F2's
/// 20,000 files a cycle read 0.70 of the engine with 1,000, 0.81 and 0.85
/// with 4,000); the bytes bound keeps `.concord/incoming/` small whatever
/// the count.
pub const BATCH_FILES: usize = 4_000;
/// Most bytes of one prefetched batch (a single larger file is a batch of
/// its own).
pub const BATCH_BYTES: u64 = 1 << 30;

/// Split copies into batches of at most [`BATCH_FILES`] actions and
/// [`BATCH_BYTES`] of content, in their order. Actions other than copies
/// (staged local copies and moves, whose renames may form chains, and
/// deletions) stay in one batch, as the executor must see them together.
pub fn batches(actions: Vec<Action>) -> Vec<Vec<Action>> {
    if actions.iter().any(|a| !matches!(a, Action::Copy { .. })) {
        return vec![actions];
    }
    let mut out = Vec::new();
    let mut current: Vec<Action> = Vec::new();
    let mut bytes = 0u64;
    for a in actions {
        let size = match &a {
            Action::Copy { version, .. } => version.version.size,
            _ => 0,
        };
        let over = current.len() >= BATCH_FILES || bytes.saturating_add(size) > BATCH_BYTES;
        if over && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        current.push(a);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a prefetch left for one hash.
enum Slot {
    /// Verified and fsynced at `path`; `uses` copies still want it.
    Ready { path: PathBuf, uses: usize },
    /// Not fetched for want of space.
    DiskFull,
    /// Failed otherwise: the copy fetches it itself (and reports why).
    Failed,
}

/// How a copy is served from the prefetched files.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The last copy wanting this content: the file is handed over.
    File(PathBuf),
    /// Other copies want it too: copy from this file (verified), keep it.
    Shared(PathBuf),
    /// The disk filled up before it could be fetched.
    DiskFull,
    /// Nothing prefetched (or the prefetch failed): fetch it now.
    Missing,
}

/// The files one batch prefetched, by hash; whatever is not consumed is
/// removed by [`Prefetched::clear`] or on drop.
#[derive(Default)]
pub struct Prefetched {
    files: HashMap<Hash, Slot>,
}

impl Prefetched {
    /// Take the content `hash` for one copy.
    pub fn take(&mut self, hash: &Hash) -> Taken {
        match self.files.get_mut(hash) {
            Some(Slot::Ready { path, uses }) if *uses > 1 => {
                *uses -= 1;
                Taken::Shared(path.clone())
            }
            Some(Slot::Ready { .. }) => match self.files.remove(hash) {
                Some(Slot::Ready { path, .. }) => Taken::File(path),
                _ => Taken::Missing,
            },
            Some(Slot::DiskFull) => Taken::DiskFull,
            Some(Slot::Failed) | None => Taken::Missing,
        }
    }

    /// A prefetched file of `hash` still here, to copy from.
    pub fn path_of(&self, hash: &Hash) -> Option<&Path> {
        match self.files.get(hash) {
            Some(Slot::Ready { path, .. }) => Some(path),
            _ => None,
        }
    }

    /// Remove every file not consumed and forget the batch.
    pub fn clear(&mut self) {
        for (_, slot) in self.files.drain() {
            if let Slot::Ready { path, .. } = slot {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// How many files are held (for tests and bounds).
    pub fn len(&self) -> usize {
        self.files
            .values()
            .filter(|s| matches!(s, Slot::Ready { .. }))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One content to prefetch: the request, and how many copies want it.
pub struct Wanted {
    pub hash: Hash,
    pub request: FileRequest,
    pub uses: usize,
}

/// Fetch `wanted` from `peer`, [`MAX_CONCURRENT_PER_PEER`] at once; after a
/// "disk full" nothing more is started. The receiving folders are fsynced
/// once at the end, before anything is reported ready.
pub async fn fetch_batch(
    client: &ContentClient,
    peer: &Peer,
    wanted: Vec<Wanted>,
    progress: Arc<TransferProgress>,
) -> Prefetched {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_PER_PEER));
    let full = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(wanted.len());
    let mut done = Prefetched::default();
    for w in wanted {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        if full.load(Ordering::Relaxed) {
            done.files.insert(w.hash, Slot::DiskFull);
            continue;
        }
        let (client, peer, progress, full) =
            (client.clone(), peer.clone(), progress.clone(), full.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let r = client.fetch_unsynced(&peer, w.request, &progress).await;
            if r.as_ref().is_err_and(is_disk_full) {
                full.store(true, Ordering::Relaxed);
            }
            (w.hash, w.uses, r)
        }));
    }
    let mut folders = Vec::new();
    for task in tasks {
        let Ok((hash, uses, r)) = task.await else {
            continue;
        };
        let slot = match r {
            Ok(f) => {
                folders.extend(f.path.parent().map(Path::to_path_buf));
                Slot::Ready { path: f.path, uses }
            }
            Err(e) if is_disk_full(&e) => Slot::DiskFull,
            Err(_) => Slot::Failed,
        };
        done.files.insert(hash, slot);
    }
    folders.sort();
    folders.dedup();
    let _ = tokio::task::spawn_blocking(move || folders.iter().for_each(|d| sync_folder(d))).await;
    done
}

/// Remove the complete files in `incoming` (a location's
/// `.concord/incoming/`) that landed more than
/// [`concord::conduit::content::STALE_TEMP_MS`] ago (by ctime, which the
/// landing rename sets; mtime is the source's): what a cycle killed between
/// a prefetch and its copies left, never consumed since. Interrupted
/// transfers (under `.concord/`, resumable) are left alone. Returns how
/// many were removed.
pub fn purge_stale_incoming(incoming: &Path, now_ms: i64) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(incoming) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        let landed_ms = md.ctime().saturating_mul(1000);
        let stale = now_ms.saturating_sub(landed_ms) > concord::conduit::content::STALE_TEMP_MS;
        if md.is_file() && stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether the engine refused or stopped a file for want of space.
pub fn is_disk_full(e: &NetError) -> bool {
    e.to_string().contains(DISK_FULL)
}
