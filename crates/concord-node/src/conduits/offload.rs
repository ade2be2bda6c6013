//! Offload cycles (DESIGN §12) on the device that owns the conduit's
//! *source*: it alone can measure the free space of the source's volume.
//! Below the threshold it picks the least recently used unpinned files,
//! asks the destination's device to hold verified copies (the `Hold` call,
//! docs/PROTOCOL.md), checks each file again (stat and BLAKE3 equal to
//! what was copied; a file changed meanwhile stays), marks its entry
//! offloaded and only then removes it, until free space is back above the
//! threshold plus a margin. Each cycle also checks that the destination
//! still holds what was offloaded (lost content) and brings pinned files
//! back. This file reads the facts (the volume, the files, their stamps);
//! `offload_cycle.rs` runs the steps.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use concord::conduit::ignore::IgnoreRules;
use concord::conduit::offload::{Candidate, Space};
use concord::conduit::offload_steps::SourceFile;
use concord::conduit::tree::{hash_reader, FileState};

use crate::error::NetError;
use crate::transfer::hold::joined;
use crate::transfer::wire::{HoldFile, MAX_HOLD_FILES, MAX_HOLD_PATH_BYTES};

/// Test hook: when set to an existing folder, a cycle writes `verified` there once the
/// destination holds a batch's copies and waits (at most
/// [`PAUSE_HOOK_LIMIT`]) for a file `go` before it checks and removes them,
/// so a test can change a file between the copy and the removal.
pub const PAUSE_HOOK_ENV: &str = "CONCORD_TEST_OFFLOAD_PAUSE";
const PAUSE_HOOK_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How often a non-manual Offload conduit measures its source's free space
/// (a cycle follows when it is below the threshold).
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The free and total bytes of the volume holding `path`, and whether it
/// records access times ([`Space::measure`]).
pub fn space(path: &Path) -> std::io::Result<(Space, bool)> {
    Space::measure(path).ok_or_else(|| {
        std::io::Error::other(format!(
            "cannot measure the free space of {}",
            path.display()
        ))
    })
}

/// Whether the source volume of Offload conduit `c` (a location of this
/// device) is below its threshold now: what the scheduler's timer checks
/// between cycles (one `statvfs`, no walk).
pub fn below_threshold(lib: &concord::Library, c: &concord::model::Conduit) -> bool {
    let Some(min) = c
        .min_free
        .as_deref()
        .and_then(|m| concord::conduit::settings::MinFree::parse(m).ok())
    else {
        return false;
    };
    let Ok(Some(loc)) = concord::query::location(lib, c.source) else {
        return false;
    };
    Space::measure(Path::new(&loc.path))
        .is_some_and(|(s, _)| s.free < concord::conduit::offload::threshold(min, s.total))
}

/// Most files one walk returns: a bound on the memory of a cycle.
pub const MAX_WALK_FILES: usize = 1_000_000;

/// Every regular file below `root` (no link followed, `.concord/` and what
/// `ignore` names left out: an ignored file never leaves), its path
/// relative to `root` and its metadata.
pub fn walk(root: &Path, ignore: &IgnoreRules) -> Vec<(String, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in read.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if rel.is_empty() && name == crate::transfer::path::CONCORD_DIR {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let path = joined(&rel, &name);
            if ignore.is_ignored(&path, md.is_dir()) {
                continue;
            }
            if md.is_dir() {
                stack.push((e.path(), path));
            } else if md.is_file() && out.len() < MAX_WALK_FILES {
                out.push((path, md));
            }
        }
    }
    out
}

/// The source file at `path` as the offload steps observe it: absent, or
/// its stat with its BLAKE3 (no hash when it changed while being read, or
/// is not a regular file: such a file is never offloaded).
pub fn source_state(path: &Path) -> std::io::Result<SourceFile> {
    let before = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SourceFile::Absent),
        Err(e) => return Err(e),
    };
    let mut state = FileState::from_metadata(&before);
    if !before.is_file() {
        return Ok(SourceFile::Present(state));
    }
    let mut f = concord::conduit::path::open_nofollow(path)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (hash, size) = hash_reader(&mut f)?;
    let after = std::fs::symlink_metadata(path)?;
    if size == state.version.size && state.unchanged(&after) {
        state.version.hash = Some(hash);
    }
    Ok(SourceFile::Present(state))
}

/// Whether the file at `path` was used or changed within the hour before
/// `now_ms` (checked again just before a copy).
pub fn used_recently(path: &Path, atime: bool, now_ms: i64) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|md| Candidate::from_metadata(String::new(), &md, atime).is_recent(now_ms))
}

/// Test hook: `CONCORD_TEST_OFFLOAD_CLOCK_AHEAD_MS` moves the clock the
/// offload runner judges "used within the hour" by ahead, so a test's files
/// (whose change times, unlike their access and modification times, cannot
/// be set back) can be old enough.
pub fn clock_ahead_ms() -> i64 {
    std::env::var("CONCORD_TEST_OFFLOAD_CLOCK_AHEAD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the destination verified of an offloaded file (from its entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub size: u64,
    /// BLAKE3, hex.
    pub hash: String,
}

impl Held {
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        blake3::Hash::from_hex(&self.hash)
            .ok()
            .map(|h| *h.as_bytes())
    }
}

/// Files in groups a `Hold` call can carry (count and path bytes bounded).
pub fn hold_batches(files: Vec<HoldFile>) -> Vec<Vec<HoldFile>> {
    let mut out: Vec<Vec<HoldFile>> = Vec::new();
    let mut bytes = 0;
    for f in files {
        let full = out.last().is_none_or(|b| {
            b.len() >= MAX_HOLD_FILES || bytes + f.path.len() > MAX_HOLD_PATH_BYTES
        });
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += f.path.len();
        if let Some(b) = out.last_mut() {
            b.push(f);
        }
    }
    out
}

/// The test hook ([`PAUSE_HOOK_ENV`]): announce `paths` verified, then wait
/// for the test's `go`.
pub fn pause_hook(paths: &[String]) {
    let Some(dir) = std::env::var_os(PAUSE_HOOK_ENV).map(PathBuf::from) else {
        return;
    };
    if !dir.is_dir() {
        return; // the test is done with the hook
    }
    let go = dir.join("go");
    let _ = std::fs::write(dir.join("verified.tmp"), paths.join("\n"));
    let _ = std::fs::rename(dir.join("verified.tmp"), dir.join("verified"));
    let start = std::time::Instant::now();
    while !go.exists() && start.elapsed() < PAUSE_HOOK_LIMIT {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&go);
    let _ = std::fs::remove_file(dir.join("verified"));
}

/// What `conduit status` shows of Offload on the source's device.
#[derive(Debug, Default)]
pub struct OffloadLive {
    /// Why offloading waits (the destination is unreachable), if it does.
    pub waiting: Mutex<Option<String>>,
    /// Offloaded files the destination no longer holds, with why.
    pub lost: Mutex<Vec<(String, String)>>,
    /// The source volume's free bytes and threshold at the last measure.
    pub measured: Mutex<Option<(u64, u64)>>,
}

impl OffloadLive {
    pub fn set_waiting(&self, why: Option<String>) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// A shared [`OffloadLive`].
pub type Live = Arc<OffloadLive>;

/// A failure to reach the destination (offloading waits) as opposed to a
/// refusal or a local fault.
pub fn is_unreachable(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Unreachable(_) | NetError::Timeout(_) | NetError::Io(_)
    )
}
