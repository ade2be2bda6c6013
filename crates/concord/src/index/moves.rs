//! Identity follows the file: an entry renamed or moved on disk keeps its
//! UUID (so its tags, albums and notes follow it) instead of being deleted
//! and inserted anew.
//!
//! A rescan or refresh pairs the entries it found gone with the rows it
//! found new, within one location, when they are the same file: same kind
//! and inode and, for anything but a folder, the same size and modification
//! time (a folder's own time changes as its listing does). The pair becomes
//! one update of the old entry to its new name, path and parent.
//! **Decision**: inodes are reused by filesystems, so a file must also keep
//! size and time to be recognised; a folder deleted and another created with
//! the reused inode in the same rescan would wrongly keep the first one's
//! identity (rare, and it loses nothing).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::model::{entry_kind, FileEntry};

/// New rows split into moves (rows carrying the UUID of the gone entry
/// they are) and plain inserts, parents renamed to the kept UUIDs.
pub(super) struct Matched {
    pub moves: Vec<FileEntry>,
    pub inserts: Vec<FileEntry>,
    /// The gone entries that moved (not to be deleted).
    pub kept: HashSet<Uuid>,
}

fn same_file(old: &FileEntry, new: &FileEntry) -> bool {
    old.kind == new.kind
        && old.inode.is_some()
        && old.inode == new.inode
        && (new.kind == entry_kind::DIR || (old.size == new.size && old.modified == new.modified))
}

/// Pair `gone` entries with `new_rows` (in their order, parents first).
pub(super) fn match_moves(gone: &[FileEntry], new_rows: Vec<FileEntry>) -> Matched {
    let mut by_inode: HashMap<i64, Vec<&FileEntry>> = HashMap::new();
    for g in gone {
        if let Some(i) = g.inode {
            by_inode.entry(i).or_default().push(g);
        }
    }
    let mut renamed: HashMap<Uuid, Uuid> = HashMap::new();
    let mut kept = HashSet::new();
    let mut rows = Vec::with_capacity(new_rows.len());
    for mut row in new_rows {
        let old = row.inode.and_then(|i| by_inode.get(&i)).and_then(|c| {
            c.iter()
                .find(|o| !kept.contains(&o.id) && same_file(o, &row))
        });
        let moved = if let Some(old) = old {
            kept.insert(old.id);
            renamed.insert(row.id, old.id);
            row.id = old.id;
            true
        } else {
            false
        };
        rows.push((moved, row));
    }
    let (mut moves, mut inserts) = (Vec::new(), Vec::new());
    for (moved, mut row) in rows {
        if let Some(p) = row.parent.and_then(|p| renamed.get(&p)) {
            row.parent = Some(*p);
        }
        if moved {
            moves.push(row);
        } else {
            inserts.push(row);
        }
    }
    Matched {
        moves,
        inserts,
        kept,
    }
}
