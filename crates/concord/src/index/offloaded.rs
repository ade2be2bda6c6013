//! Entries whose content an Offload conduit moved to another device
//! (`FileEntry::offloaded_to`, DESIGN §12): the index keeps them while their
//! file is absent, and they return to local when a file reappears at their
//! path. The writes that switch an entry between the two states are in
//! `switch`.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::model::{FileEntry, Value};
use crate::sync::txn::Change;

/// Where the content of an offloaded entry lives: the three `offloaded_*`
/// fields of [`FileEntry`], written together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadedTo {
    /// The destination location (a location of a member device).
    pub location: Uuid,
    /// The path of the bytes relative to that location's root.
    pub path: String,
    /// The BLAKE3 (lower-case hex) the destination verified.
    pub hash: String,
}

impl OffloadedTo {
    /// The offload state an entry records, if it records a complete one.
    pub fn of(entry: &FileEntry) -> Option<OffloadedTo> {
        Some(OffloadedTo {
            location: entry.offloaded_to?,
            path: entry.offloaded_path.clone()?,
            hash: entry.offloaded_hash.clone()?,
        })
    }
}

/// Of entries found absent from disk (a vanished folder's whole contents
/// included), those the index must keep: every offloaded entry, and every
/// absent folder that holds one (so that the entry keeps its parent and its
/// path). The others are deleted as before.
pub(super) fn kept_while_absent(vanished: &[FileEntry]) -> HashSet<Uuid> {
    let by_id: HashMap<Uuid, &FileEntry> = vanished.iter().map(|e| (e.id, e)).collect();
    let mut kept = HashSet::new();
    for e in vanished.iter().filter(|e| e.offloaded_to.is_some()) {
        let mut at = Some(e);
        // Each step climbs one level; `insert` returning false means the rest
        // of the chain is already kept (and stops a malformed cycle).
        while let Some(cur) = at {
            if !kept.insert(cur.id) {
                break;
            }
            at = cur.parent.and_then(|p| by_id.get(&p).copied());
        }
    }
    kept
}

/// `change` with the three offload fields cleared.
pub(super) fn cleared(change: Change) -> Change {
    change
        .set("offloaded_to", Value::Null)
        .set("offloaded_path", Value::Null)
        .set("offloaded_hash", Value::Null)
}
