//! The initial index of a folder: checking the path the user gave, finding or
//! creating its volume, adding the location and writing every entry with one
//! `commit_bulk` (DESIGN §7).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{Location, Volume};
use crate::query;
use crate::sync::entry::{BulkOperation, MAX_TEXT_BYTES};
use crate::sync::txn::{Change, Library};

use super::progress::ProgressCallback;
use super::volume::{volume_identity, VolumeIdentity};
use super::walk::scan;
use super::write::{to_rows, write_bulk};

/// A location just added, and what indexing it found: what the caller shows
/// the user (and the ids it needs to rescan the location later).
#[derive(Debug, Clone)]
pub struct Indexed {
    pub location: Location,
    /// The volume the location lies on (found, or created with it).
    pub volume: Volume,
    /// File entries written.
    pub entries: u64,
    /// Entries skipped (see [`Scan::skipped`](super::walk::Scan::skipped)).
    pub skipped: u64,
}

/// A folder given by the user: absolute, canonical, an existing directory,
/// with a UTF-8 path.
fn checked_dir(path: &Path) -> Result<(PathBuf, String)> {
    let canon = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "{} does not exist; give the path of an existing folder",
                path.display()
            )))
        }
        Err(e) => {
            return Err(Error::Invalid(format!(
                "cannot access {}: {e}",
                path.display()
            )))
        }
    };
    if !canon.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a folder; give the path of a folder to index",
            path.display()
        )));
    }
    let s = canon
        .to_str()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not valid UTF-8; concord indexes UTF-8 paths only",
                canon.display()
            ))
        })?
        .to_string();
    if s.len() > MAX_TEXT_BYTES {
        return Err(Error::Invalid(format!(
            "the path is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok((canon, s))
}

/// Refuse a folder inside or around a location this device already has: the
/// same file would be indexed twice.
fn refuse_overlap(lib: &Library, canon: &Path) -> Result<()> {
    let me = lib.device();
    for l in query::locations(lib)?.into_iter().map(|s| s.location) {
        if l.device != me {
            continue;
        }
        let other = Path::new(&l.path);
        if canon.starts_with(other) {
            return Err(Error::Invalid(format!(
                "{} is already indexed as part of location {} ({}); rescan that location instead",
                canon.display(),
                l.name,
                l.id
            )));
        }
        if other.starts_with(canon) {
            return Err(Error::Invalid(format!(
                "{} contains location {} ({}); remove that location first",
                canon.display(),
                l.name,
                l.id
            )));
        }
    }
    Ok(())
}

/// The volume of this device with `ident`'s fingerprint, or a new one (`true`)
/// to insert with the location.
fn volume_of(lib: &Library, ident: &VolumeIdentity) -> Result<(Volume, bool)> {
    let me = lib.device();
    let existing = query::volumes(lib)?
        .into_iter()
        .find(|v| v.device == me && v.fingerprint == ident.fingerprint);
    Ok(match existing {
        Some(v) => (v, false),
        None => (
            Volume {
                id: Uuid::now_v7(),
                device: me,
                name: ident.mount_point.clone(),
                fingerprint: ident.fingerprint.clone(),
                mount_point: ident.mount_point.clone(),
            },
            true,
        ),
    })
}

/// Index `path` as a new location of this device in `lib`.
///
/// Refuses a missing path, a path that is not a folder, and a folder inside or
/// around a location this device already has in the library.
pub fn add_location(lib: &Library, path: &Path, progress: ProgressCallback<'_>) -> Result<Indexed> {
    let me = lib.device();
    let (canon, path_str) = checked_dir(path)?;
    refuse_overlap(lib, &canon)?;
    let ident = volume_identity(&canon)?;
    // Walk before writing anything, so a failed walk changes nothing.
    let scan = scan(&canon, progress)?;
    let (volume, new_volume) = volume_of(lib, &ident)?;
    let name = canon
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(&path_str)
        .to_string();
    let location = Location {
        id: Uuid::now_v7(),
        device: me,
        volume: volume.id,
        path: path_str.clone(),
        name,
    };
    let mut changes = Vec::new();
    if new_volume {
        changes.push(Change::insert(&volume));
    }
    changes.push(Change::insert(&location));
    lib.commit_batch(changes)?;

    let rows = to_rows(&scan.entries, me, location.id, None, |_| None);
    let total = rows.len() as u64;
    let written = write_bulk(
        lib,
        rows,
        BulkOperation::InitialIndex {
            location: location.id,
            path: path_str,
            volume_fingerprint: volume.fingerprint.clone(),
            count: 0,
        },
        progress,
    );
    if let Err(e) = written {
        // Undo the location so that a failed add leaves no empty location behind.
        if let Err(undo) = lib.commit(Change::delete::<Location>(location.id)) {
            tracing::warn!(
                "could not remove the half-added location {}: {undo}",
                location.id
            );
        }
        return Err(e);
    }
    Ok(Indexed {
        location,
        volume,
        entries: total,
        skipped: scan.skipped,
    })
}
