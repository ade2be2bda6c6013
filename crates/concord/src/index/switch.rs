//! The two writes that switch a file entry between local and offloaded
//! (`offloaded`), each under the location's lock so that no rescan or
//! refresh of the location runs in between.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::FileEntry;
use crate::query;
use crate::sync::entry::MAX_TEXT_BYTES;
use crate::sync::txn::{Change, Library};

use super::offloaded::{cleared, OffloadedTo};
use super::rescan::location_lock;

/// Record that `entry`'s content now lives at `to`, then run `remove` (which
/// removes the source file), both under the location's lock: a rescan sees
/// either the entry local with its file, or offloaded without it, never the
/// entry local without its file (which it would delete). The entry must be a
/// file of this device. If `remove` fails the entry stays offloaded; the next
/// rescan returns it to local if the file is still there.
pub fn commit_offloaded(
    lib: &Library,
    entry: Uuid,
    to: &OffloadedTo,
    remove: impl FnOnce() -> Result<()>,
) -> Result<()> {
    check(to)?;
    let e = own_entry(lib, entry)?;
    let lock = location_lock(e.location);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    lib.commit_batch(vec![Change::update::<FileEntry>(entry)
        .set("offloaded_to", to.location)
        .set("offloaded_path", to.path.as_str())
        .set("offloaded_hash", to.hash.as_str())])?;
    remove()
}

/// Return an offloaded entry to local (its file was fetched back to its path),
/// under the location's lock. Nothing is written if it is local already.
pub fn commit_local(lib: &Library, entry: Uuid) -> Result<()> {
    let e = own_entry(lib, entry)?;
    let lock = location_lock(e.location);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    let now = query::file_entry(lib, entry)?;
    if now.is_some_and(|n| n.offloaded_to.is_some()) {
        lib.commit_batch(vec![cleared(Change::update::<FileEntry>(entry))])?;
    }
    Ok(())
}

/// A destination that peers can read back: a relative path within the
/// bounds of a synced text, without `.`, `..` or empty names, and a BLAKE3
/// in lower-case hex.
fn check(to: &OffloadedTo) -> Result<()> {
    let path_ok = !to.path.is_empty()
        && to.path.len() <= MAX_TEXT_BYTES
        && to
            .path
            .split('/')
            .all(|n| !n.is_empty() && n != "." && n != ".." && !n.contains(['\\', '\0']));
    if !path_ok {
        return Err(Error::Invalid(format!(
            "offload destination path {:?} is not a relative path of at most {MAX_TEXT_BYTES} bytes",
            to.path
        )));
    }
    let hash_ok = to.hash.len() == 64
        && to
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hash_ok {
        return Err(Error::Invalid(format!(
            "offload hash {:?} is not a BLAKE3 in lower-case hex",
            to.hash
        )));
    }
    Ok(())
}

/// A file entry of this device.
fn own_entry(lib: &Library, entry: Uuid) -> Result<FileEntry> {
    let e = query::file_entry(lib, entry)?.ok_or(Error::NotFound {
        model: "file_entry",
        id: entry,
    })?;
    if e.device != lib.device() {
        return Err(Error::Invalid(format!(
            "entry {} belongs to device {}; only its owner offloads or restores it",
            e.path, e.device
        )));
    }
    if e.kind != crate::model::entry_kind::FILE {
        return Err(Error::Invalid(format!(
            "entry {} is not a file; only files are offloaded",
            e.path
        )));
    }
    Ok(e)
}
