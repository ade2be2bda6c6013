//! A file being received: its data in a temp file and the ranges of it that
//! were verified, both kept next to each other in the destination location's
//! `.concord/tmp/`, so a transfer interrupted by a disconnect or a `kill -9`
//! of either side resumes with only the missing ranges.
//!
//! Order of writes (what a crash can leave): verified leaves are written to
//! `<stem>.part`; every [`CHECKPOINT_BYTES`] the ranges written so far are
//! handed to a checkpoint thread of the transfer, which fsyncs the part file
//! and only then replaces `<stem>.state` (hash, size, verified ranges)
//! atomically. So the state never claims a range that is not on disk, and
//! the decoding thread does not wait for the disk (a checkpoint due while
//! one runs is offered again with the next leaves, and waited for once
//! twice [`CHECKPOINT_BYTES`] are unsaved: a crash costs at most about
//! three times [`CHECKPOINT_BYTES`]). Complete: mtime and
//! exec bit are set, the part file is fsynced and renamed onto the final name,
//! the folder is fsynced (at once, or once per folder for a batch: see
//! [`Partial::commit`]), the state removed. Nothing unverified ever gets the
//! final name.
//!
//! A file of at most [`STATELESS_BYTES`] keeps no state at all: a crash
//! could save at most that much, so it starts afresh instead, and its
//! transfer costs one fsync of its data instead of four.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bao_tree::{ChunkNum, ChunkRanges};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::transfer::path::{make_dir, prepare_destination, CONCORD_DIR};
use crate::transfer::wire::{decode_ranges, encode_ranges};

/// Verified bytes written between two checkpoints: what a crash may cost.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// Files up to this size are received without a resume state (a quarter of
/// [`CHECKPOINT_BYTES`]: what a restart may fetch twice stays below what a
/// checkpointed transfer may lose).
pub const STATELESS_BYTES: u64 = 1024 * 1024;
/// Verified leaves written together, in one system call.
pub const WRITE_BATCH: usize = 256 * 1024;
/// How a refusal for want of space starts, for callers that pause on it.
pub const DISK_FULL: &str = "disk full";
/// Largest state file read back (its ranges are bounded by the protocol's).
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// What `<stem>.state` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialState {
    pub hash: [u8; 32],
    pub size: u64,
    /// Verified chunk ranges, as wire boundaries.
    pub verified: Vec<u64>,
}

/// The temp files of the transfer to `root/rel`.
fn temp_paths(root: &Path, rel: &str) -> (PathBuf, PathBuf) {
    let stem = blake3::hash(rel.as_bytes()).to_hex();
    let dir = root.join(CONCORD_DIR).join("tmp");
    (
        dir.join(format!("{}.part", &stem[..32])),
        dir.join(format!("{}.state", &stem[..32])),
    )
}

/// Make `root/.concord/tmp`, refusing a symlink on the way.
fn temp_dir(root: &Path) -> Result<PathBuf, NetError> {
    let mut dir = root.to_path_buf();
    for part in [CONCORD_DIR, "tmp"] {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(NetError::Refused(format!(
                    "{} is not a folder",
                    dir.display()
                )))
            }
            Err(_) => make_dir(&dir)?,
        }
    }
    Ok(dir)
}

/// Bytes covered by a set of 1 KiB chunk ranges (an open range counts as
/// none: it only appears in requests).
fn chunk_bytes(ranges: &ChunkRanges) -> u64 {
    let b = encode_ranges(ranges);
    b.chunks(2)
        .filter_map(|r| r.get(1).map(|end| end - r[0]))
        .sum::<u64>()
        .saturating_mul(1024)
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn available(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The chunks of a file of `size` bytes.
pub fn all_chunks(size: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(0)..ChunkNum(size.div_ceil(1024)))
}

/// The state of an earlier, interrupted transfer to `root/rel`, if any whose
/// part file is still there.
pub fn load_state(root: &Path, rel: &str) -> Option<PartialState> {
    let (part, state) = temp_paths(root, rel);
    let meta = std::fs::metadata(&state).ok()?;
    if meta.len() > MAX_STATE_BYTES {
        return None;
    }
    let bytes = std::fs::read(&state).ok()?;
    let parsed: PartialState = postcard::from_bytes(&bytes).ok()?;
    let part_len = std::fs::metadata(&part).ok()?.len();
    (part_len == parsed.size && decode_ranges(&parsed.verified).is_ok()).then_some(parsed)
}

/// Bytes already verified of the interrupted transfers into the location
/// at `root` (what their resumes will not fetch again): for status and
/// tests.
pub fn resumable_bytes(root: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(root.join(CONCORD_DIR).join("tmp")) else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "state") {
            continue;
        }
        let state = std::fs::read(&path)
            .ok()
            .and_then(|b| postcard::from_bytes::<PartialState>(&b).ok());
        if let Some(ranges) = state.and_then(|s| decode_ranges(&s.verified).ok()) {
            total += chunk_bytes(&ranges);
        }
    }
    total
}

/// How long an interrupted transfer's resume files may sit untouched in
/// `.concord/tmp/` before a cycle removes them as abandoned (its file was
/// deleted or changed at the source, its conduit removed): a week, so a
/// device away for a few days still resumes rather than fetching again.
pub const ABANDONED_MS: i64 = 7 * 24 * 3600 * 1000;

/// Remove the engine's resume files (`<32 hex>.part` and `.state`) in
/// `tmp_dir` that nothing wrote for [`ABANDONED_MS`] (by the later mtime of
/// the pair; a transfer in progress writes its part file continuously and
/// its state every checkpoint). Other names are left alone. Returns how many
/// files were removed.
pub fn purge_abandoned(tmp_dir: &Path, now_ms: i64) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp_dir) else {
        return 0;
    };
    let modified_ms = |p: &Path| -> Option<i64> {
        let t = std::fs::symlink_metadata(p).ok()?.modified().ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_millis()).ok()
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".part")) else {
            continue;
        };
        if stem.len() != 32 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let (part, state) = (e.path(), tmp_dir.join(format!("{stem}.state")));
        let last = modified_ms(&part).max(modified_ms(&state));
        if last.is_some_and(|m| now_ms.saturating_sub(m) > ABANDONED_MS) {
            let _ = std::fs::remove_file(&state);
            if std::fs::remove_file(&part).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Forget an interrupted transfer to `root/rel` (its content changed).
pub fn discard(root: &Path, rel: &str) {
    let (part, state) = temp_paths(root, rel);
    let _ = std::fs::remove_file(state);
    let _ = std::fs::remove_file(part);
}

/// The checkpoint thread of one transfer: it receives the verified ranges
/// (as wire boundaries) written so far, fsyncs the part file, then saves
/// them. Dropping it waits for the checkpoint under way, so nothing is
/// saved after its transfer ended.
struct Checkpointer {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<Result<(), NetError>>>,
}

impl Checkpointer {
    fn start(file: &File, state_path: &Path, hash: [u8; 32], size: u64) -> Result<Self, NetError> {
        let file = file.try_clone()?;
        let state_path = state_path.to_path_buf();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u64>>(1);
        let thread = std::thread::Builder::new()
            .name("concord-checkpoint".into())
            .spawn(move || {
                while let Ok(mut verified) = rx.recv() {
                    while let Ok(later) = rx.try_recv() {
                        verified = later;
                    }
                    file.sync_data().map_err(|e| io_error(&state_path, e))?;
                    save_state(&state_path, hash, size, verified)?;
                }
                Ok(())
            })?;
        Ok(Checkpointer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hand `verified` over; `Ok(false)` when a checkpoint is already
    /// queued (the caller offers it again later). With `wait`, wait for
    /// room instead: what a crash may cost stays bounded however slow the
    /// disk.
    fn offer(&mut self, verified: Vec<u64>, wait: bool) -> Result<bool, NetError> {
        let Some(tx) = &self.tx else {
            return Ok(false);
        };
        let sent = if wait {
            tx.send(verified).map_err(|_| ())
        } else {
            match tx.try_send(verified) {
                Err(std::sync::mpsc::TrySendError::Full(_)) => return Ok(false),
                other => other.map_err(|_| ()),
            }
        };
        match sent {
            Ok(()) => Ok(true),
            Err(()) => self.finish().map(|()| false),
        }
    }

    /// Wait for the checkpoints handed over; the first error of the thread.
    fn finish(&mut self) -> Result<(), NetError> {
        self.tx = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(NetError::Other("the checkpoint thread panicked".into())),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A failed write or sync of a transfer's files: "disk full" (the caller
/// removes them) or an I/O error.
fn io_error(path: &Path, e: std::io::Error) -> NetError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        NetError::Refused(format!("{DISK_FULL}: writing {}", path.display()))
    } else {
        NetError::Io(format!("{}: {e}", path.display()))
    }
}

/// Write `leaves` one after the other at `at`, with as few system calls as
/// the kernel allows.
fn write_all_vectored_at(file: &File, leaves: &[Bytes], at: u64) -> std::io::Result<()> {
    let slices: Vec<std::io::IoSlice<'_>> =
        leaves.iter().map(|l| std::io::IoSlice::new(l)).collect();
    let total: usize = leaves.iter().map(Bytes::len).sum();
    let written = rustix::io::pwritev(file, &slices, at).map_err(std::io::Error::from)?;
    if written == total {
        return Ok(());
    }
    // A short write: the rest one leaf at a time.
    let mut offset = at;
    for leaf in leaves {
        let done = (at + written as u64).saturating_sub(offset);
        let start = usize::try_from(done).unwrap_or(usize::MAX).min(leaf.len());
        if start < leaf.len() {
            file.write_all_at(&leaf[start..], offset + start as u64)?;
        }
        offset += leaf.len() as u64;
    }
    Ok(())
}

/// Replace the state file at `path` atomically.
fn save_state(path: &Path, hash: [u8; 32], size: u64, verified: Vec<u64>) -> Result<(), NetError> {
    let state = PartialState {
        hash,
        size,
        verified,
    };
    let bytes = postcard::to_allocvec(&state)
        .map_err(|e| NetError::Other(format!("encode transfer state: {e}")))?;
    match concord::datadir::write_atomic(path, &bytes) {
        Ok(()) => Ok(()),
        // A full disk can strike here too (several transfers at once):
        // nothing of this transfer may stay, as for a failed write (the
        // caller removes the part file and the state on "disk full").
        Err(concord::Error::Io(e)) => {
            let _ = std::fs::remove_file(path.with_extension("tmp"));
            Err(io_error(path, e))
        }
        Err(e) => Err(e.into()),
    }
}

/// A transfer in progress into a temp file.
pub struct Partial {
    dest: PathBuf,
    part: PathBuf,
    state_path: PathBuf,
    file: File,
    hash: [u8; 32],
    size: u64,
    verified: ChunkRanges,
    unsaved: u64,
    /// No state file is kept (the file is at most [`STATELESS_BYTES`]).
    stateless: bool,
    /// Takes the checkpoints (files with a state only).
    checkpoints: Option<Checkpointer>,
    /// Verified leaves, contiguous from `pending_at`, not yet written.
    pending: Vec<Bytes>,
    pending_at: u64,
    pending_len: usize,
}

/// Whether a file of `size` bytes is received without a resume state.
fn stateless(size: u64) -> bool {
    size <= STATELESS_BYTES
}

impl Partial {
    /// Start (or resume, when a matching state is on disk) the transfer of a
    /// file of `size` bytes hashing to `hash` into `root/rel`.
    pub fn begin(root: &Path, rel: &str, hash: [u8; 32], size: u64) -> Result<Self, NetError> {
        let dest = prepare_destination(root, rel)?;
        temp_dir(root)?;
        let (part, state_path) = temp_paths(root, rel);
        let prior = if stateless(size) {
            None
        } else {
            load_state(root, rel)
        };
        let verified = match prior {
            Some(s) if s.hash == hash && s.size == size => decode_ranges(&s.verified)?,
            _ => {
                discard(root, rel);
                ChunkRanges::empty()
            }
        };
        let have = chunk_bytes(&verified).min(size);
        if let Some(free) = available(root) {
            if size - have > free {
                return Err(NetError::Refused(format!(
                    "{DISK_FULL}: {} needs {} more bytes and {free} are free",
                    dest.display(),
                    size - have
                )));
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part)
            .map_err(|e| NetError::Io(format!("{}: {e}", part.display())))?;
        file.set_len(size)
            .map_err(|e| NetError::Io(format!("{}: {e}", part.display())))?;
        let mut partial = Partial {
            dest,
            part,
            state_path,
            file,
            hash,
            size,
            verified,
            unsaved: 0,
            stateless: stateless(size),
            checkpoints: None,
            pending: Vec::new(),
            pending_at: 0,
            pending_len: 0,
        };
        if !partial.stateless {
            partial.save()?;
            partial.checkpoints = Some(Checkpointer::start(
                &partial.file,
                &partial.state_path,
                hash,
                size,
            )?);
        }
        Ok(partial)
    }

    /// The error for a failed write: "disk full" (and the temp files
    /// removed once no checkpoint runs, so none is left behind) or an I/O
    /// error.
    fn write_error(&mut self, e: std::io::Error) -> NetError {
        let e = io_error(&self.part, e);
        self.failed(e)
    }

    /// `e` ended the transfer: on "disk full" its temp files go.
    fn failed(&mut self, e: NetError) -> NetError {
        if matches!(&e, NetError::Refused(r) if r.starts_with(DISK_FULL)) {
            self.checkpoints = None;
            let _ = std::fs::remove_file(&self.state_path);
            let _ = std::fs::remove_file(&self.part);
            return NetError::Refused(format!("{DISK_FULL}: writing {}", self.dest.display()));
        }
        e
    }

    /// Ranges already verified and on disk.
    pub fn verified(&self) -> &ChunkRanges {
        &self.verified
    }

    /// Take a verified leaf: kept with the leaves just before it and
    /// written together with them ([`WRITE_BATCH`] bytes per system call,
    /// not one per 16 KiB group, and no copy); checkpoint every
    /// [`CHECKPOINT_BYTES`].
    pub fn write_leaf(&mut self, offset: u64, data: Bytes) -> Result<(), NetError> {
        offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= self.size)
            .ok_or_else(|| NetError::Protocol("data beyond the end of the file".into()))?;
        let pending_end = self.pending_at + self.pending_len as u64;
        if !self.pending.is_empty() && offset != pending_end {
            self.write_pending()?;
        }
        if self.pending.is_empty() {
            self.pending_at = offset;
        }
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= WRITE_BATCH {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Write the leaves taken and not yet written, then count them as
    /// verified (and hand a checkpoint over when one is due).
    pub fn write_pending(&mut self) -> Result<(), NetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (at, len) = (self.pending_at, self.pending_len as u64);
        let leaves = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        if let Err(e) = write_all_vectored_at(&self.file, &leaves, at) {
            return Err(self.write_error(e));
        }
        self.verified |=
            ChunkRanges::from(ChunkNum(at / 1024)..ChunkNum((at + len).div_ceil(1024)));
        self.unsaved += len;
        if self.unsaved >= CHECKPOINT_BYTES {
            let offered = match self.checkpoints.as_mut() {
                Some(c) => {
                    let wait = self.unsaved >= 2 * CHECKPOINT_BYTES;
                    c.offer(encode_ranges(&self.verified), wait)
                }
                None => Ok(true),
            };
            match offered {
                Ok(true) => self.unsaved = 0,
                Ok(false) => {}
                Err(e) => return Err(self.failed(e)),
            }
        }
        Ok(())
    }

    /// Make what was written durable, then record it as verified, on this
    /// thread, after the checkpoints handed over (nothing to do for a file
    /// received without state: [`Partial::commit`] syncs it).
    pub fn checkpoint(&mut self) -> Result<(), NetError> {
        self.write_pending()?;
        if self.stateless {
            return Ok(());
        }
        if let Some(mut c) = self.checkpoints.take() {
            if let Err(e) = c.finish() {
                return Err(self.failed(e));
            }
        }
        if let Err(e) = self.file.sync_data() {
            return Err(self.write_error(e));
        }
        self.save()?;
        self.unsaved = 0;
        Ok(())
    }

    fn save(&mut self) -> Result<(), NetError> {
        let verified = encode_ranges(&self.verified);
        save_state(&self.state_path, self.hash, self.size, verified).map_err(|e| self.failed(e))
    }

    /// Every chunk of the file verified and written (after
    /// [`Partial::write_pending`]).
    pub fn is_complete(&self) -> bool {
        (all_chunks(self.size) - self.verified.clone()).is_empty()
    }

    /// Stop here: keep the verified part for a resume, or (a file received
    /// without state) remove it, as nothing says what of it was verified.
    pub fn abandon(mut self) -> Result<(), NetError> {
        if self.stateless {
            self.pending.clear();
            let _ = std::fs::remove_file(&self.part);
            return Ok(());
        }
        self.checkpoint()
    }

    /// Give the complete file its final name, with the sender's modification
    /// time (ns since the epoch) and exec bit. With `sync_dir` the folder is
    /// fsynced too; without, the caller must fsync it (once for all the
    /// files it committed there) before it reports any of them done.
    pub fn commit(
        mut self,
        modified_ns: i128,
        executable: bool,
        sync_dir: bool,
    ) -> Result<PathBuf, NetError> {
        self.write_pending()?;
        if !self.is_complete() {
            return Err(NetError::Protocol(
                "the transfer ended before every range was verified".into(),
            ));
        }
        if let Some(mut c) = self.checkpoints.take() {
            if let Err(e) = c.finish() {
                return Err(self.failed(e));
            }
        }
        let io = |e: std::io::Error| NetError::Io(format!("{}: {e}", self.part.display()));
        if executable {
            let mode = self.file.metadata().map_err(io)?.permissions().mode();
            let mode = mode | ((mode & 0o444) >> 2);
            self.file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io)?;
        }
        if let Some(time) = system_time(modified_ns) {
            self.file
                .set_times(std::fs::FileTimes::new().set_modified(time))
                .map_err(io)?;
        }
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.part, &self.dest)
            .map_err(|e| NetError::Io(format!("{}: {e}", self.dest.display())))?;
        if sync_dir {
            if let Some(dir) = self.dest.parent() {
                sync_folder(dir);
            }
        }
        if !self.stateless {
            let _ = std::fs::remove_file(&self.state_path);
        }
        Ok(self.dest)
    }
}

/// fsync a folder, so the renames into it survive a crash (best effort: a
/// filesystem that cannot sync folders has nothing more to do).
pub fn sync_folder(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// A time in ns since the epoch (negative: before it), if representable.
pub fn system_time(ns: i128) -> Option<SystemTime> {
    let abs = u64::try_from(ns.unsigned_abs() / 1_000_000_000).ok()?;
    let sub = (ns.unsigned_abs() % 1_000_000_000) as u32;
    let d = Duration::new(abs, sub);
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// A time as ns since the epoch (negative: before it).
pub fn epoch_ns(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}
