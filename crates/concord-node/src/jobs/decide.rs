//! Deciding about a peer's bulk operation: does this device have the same
//! location (then it is indexed here) or not (then it stays browsable)? Also
//! the device-local state of each bulk operation row, which records the
//! decision and the job's outcome.

use std::path::Path;

use concord::model::{Location, Volume};
use concord::query::{self, BulkRecord};
use concord::sync::entry::BulkOperation;
use concord::{Library, Uuid};

use crate::error::NetError;

use super::board::BulkKey;

/// Row states in `bulk_operations` (besides `failed: <why>`).
pub mod state {
    /// Recorded, not decided yet.
    pub const SEEN: &str = "seen";
    /// This device has the location: an index job waits.
    pub const QUEUED: &str = "queued";
    /// The index job runs.
    pub const INDEXING: &str = "indexing";
    /// The index job is done.
    pub const INDEXED: &str = "indexed";
    /// This device lacks the location: the peer's entries are pulled on demand.
    pub const BROWSABLE: &str = "browsable";
}

/// Decide about the peers' bulk operations in state `seen` (with `first`, also
/// those a stopped node left `queued` or `indexing`): record each decision and
/// return the records with this device's matching location, if any. Blocking.
pub fn decide(lib: &Library, first: bool) -> Result<Vec<(BulkRecord, Option<Uuid>)>, NetError> {
    let me = lib.device();
    let todo: Vec<BulkRecord> = query::bulk_operations(lib)?
        .into_iter()
        .filter(|r| r.origin != me)
        .filter(|r| {
            r.state == state::SEEN
                || (first && (r.state == state::QUEUED || r.state == state::INDEXING))
        })
        .collect();
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let locations: Vec<Location> = query::locations(lib)?
        .into_iter()
        .map(|summary| summary.location)
        .collect();
    let volumes = query::volumes(lib)?;
    let mut out = Vec::new();
    for record in todo {
        let local = record
            .op
            .as_ref()
            .and_then(|op| matching_location(op, record.origin, me, &locations, &volumes));
        let new_state = match (&record.op, local) {
            (None, _) => "failed: the bulk operation does not decode".to_string(),
            (_, Some(_)) => state::QUEUED.to_string(),
            (_, None) => state::BROWSABLE.to_string(),
        };
        set_state(lib, &[(record.origin, record.origin_seq)], &new_state)?;
        out.push((record, local));
    }
    Ok(out)
}

/// This device's location that is the same as the one a peer's bulk operation
/// names: the same absolute path, or the same path below the mount point of a
/// volume with the same fingerprint.
pub fn matching_location(
    op: &BulkOperation,
    origin: Uuid,
    me: Uuid,
    locations: &[Location],
    volumes: &[Volume],
) -> Option<Uuid> {
    let (path, fingerprint) = (op.path(), op.volume_fingerprint());
    let mine = || locations.iter().filter(|l| l.device == me);
    if let Some(l) = mine().find(|l| l.path == path) {
        return Some(l.id);
    }
    if fingerprint.is_empty() {
        return None;
    }
    let theirs = volumes
        .iter()
        .find(|v| v.device == origin && v.fingerprint == fingerprint)?;
    let rel = Path::new(path).strip_prefix(&theirs.mount_point).ok()?;
    mine()
        .find(|l| {
            volumes
                .iter()
                .find(|v| v.id == l.volume && v.fingerprint == fingerprint)
                .and_then(|v| Path::new(&l.path).strip_prefix(&v.mount_point).ok())
                == Some(rel)
        })
        .map(|l| l.id)
}

/// Set the device-local state of bulk operation rows (not synced, not logged).
pub fn set_state(lib: &Library, keys: &[BulkKey], state: &str) -> Result<(), NetError> {
    for (origin, seq) in keys {
        query::set_bulk_operation_state(lib, *origin, *seq, state)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(device: Uuid, volume: Uuid, path: &str) -> Location {
        Location {
            id: Uuid::now_v7(),
            device,
            volume,
            path: path.into(),
            name: "x".into(),
        }
    }

    fn vol(device: Uuid, fingerprint: &str, mount: &str) -> Volume {
        Volume {
            id: Uuid::now_v7(),
            device,
            name: mount.into(),
            fingerprint: fingerprint.into(),
            mount_point: mount.into(),
        }
    }

    #[test]
    fn matching_by_path_or_place_on_the_volume() {
        let (me, peer) = (Uuid::now_v7(), Uuid::now_v7());
        let their_vol = vol(peer, "uuid:disk", "/media/peer/disk");
        let my_vol = vol(me, "uuid:disk", "/mnt/disk");
        let other_vol = vol(me, "uuid:other", "/");
        let photos = loc(me, my_vol.id, "/mnt/disk/photos");
        let home = loc(me, other_vol.id, "/home/u/docs");
        let theirs = loc(peer, their_vol.id, "/home/u/docs");
        let locations = vec![photos.clone(), home.clone(), theirs];
        let volumes = vec![their_vol, my_vol, other_vol];
        let op = |path: &str, fp: &str| BulkOperation::InitialIndex {
            location: Uuid::now_v7(),
            path: path.into(),
            volume_fingerprint: fp.into(),
            count: 1,
        };
        let m = |o: &BulkOperation| matching_location(o, peer, me, &locations, &volumes);
        assert_eq!(m(&op("/home/u/docs", "uuid:elsewhere")), Some(home.id));
        assert_eq!(
            m(&op("/media/peer/disk/photos", "uuid:disk")),
            Some(photos.id)
        );
        assert_eq!(m(&op("/media/peer/disk/music", "uuid:disk")), None);
        assert_eq!(m(&op("/media/peer/disk/photos", "uuid:other")), None);
        assert_eq!(m(&op("/home/u/music", "")), None);
    }
}
