//! A cycle's plan: the [`Action`]s that bring two ends to their agreed final
//! state, in the order an executor carries them out.
//!
//! Every action names the state it expects to find (`expected`, `replaces`):
//! an executor checks it first and leaves a path that changed since the
//! scan for the next cycle, so a plan never overwrites a version it has not
//! seen. Whatever an action overwrites or deletes goes to the trash.
//!
//! Order (the executor's phases, [`Plan::simulate`] follows it too):
//! 1. stage: `CopyLocal` sources are copied aside, then `Move` sources are
//!    renamed aside (so chains and swaps of renames need no ordering);
//! 2. place the staged files at their new paths;
//! 3. `Copy` content from the other end;
//! 4. `Delete`;
//! 5. `Release` (Archive: remove the source once the copy is verified).

use std::collections::BTreeSet;

use super::path::RelPath;
use super::tree::{FileState, Hash, Tree, Version};

/// One end of a conduit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }
}

/// One step of a plan; `side` is the end it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the other end's file `from` (which must be `version`) at `path`.
    Copy {
        side: Side,
        path: RelPath,
        from: RelPath,
        version: FileState,
        replaces: Option<FileState>,
    },
    /// Write a file this end already holds with the same content (`from`,
    /// found by hash) at `path`: nothing crosses the network.
    CopyLocal {
        side: Side,
        from: RelPath,
        expected: FileState,
        path: RelPath,
        version: Version,
        replaces: Option<FileState>,
    },
    /// Rename `from` to `path` on this end: a rename or move seen on the
    /// other end (matched by content hash), or a conflict's losing version
    /// moved to its conflict copy name.
    Move {
        side: Side,
        from: RelPath,
        expected: FileState,
        path: RelPath,
        version: Version,
        replaces: Option<FileState>,
    },
    /// Move `path` to the trash.
    Delete {
        side: Side,
        path: RelPath,
        expected: FileState,
    },
    /// Archive: once the destination's file at `path` hashes to `hash`,
    /// remove the source's (which must still be `expected`) and record it.
    Release {
        path: RelPath,
        expected: FileState,
        hash: Hash,
    },
}

impl Action {
    /// The end this action changes.
    pub fn side(&self) -> Side {
        match self {
            Action::Copy { side, .. }
            | Action::CopyLocal { side, .. }
            | Action::Move { side, .. }
            | Action::Delete { side, .. } => *side,
            Action::Release { .. } => Side::Source,
        }
    }

    /// Every path this action reads or changes (on either end); if it fails,
    /// they keep their earlier agreement.
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Action::Copy { path, from, .. }
            | Action::CopyLocal { path, from, .. }
            | Action::Move { path, from, .. } => vec![path, from],
            Action::Delete { path, .. } | Action::Release { path, .. } => vec![path],
        }
    }

    /// The executor's phase of this action (see the module doc); local copies
    /// (0) are staged before moves (1), which may take their source away.
    pub fn phase(&self) -> u8 {
        match self {
            Action::CopyLocal { .. } => 0,
            Action::Move { .. } => 1,
            Action::Copy { .. } => 3,
            Action::Delete { .. } => 4,
            Action::Release { .. } => 5,
        }
    }
}

/// A conflict the plan resolves by keeping both versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Where the version that won stays.
    pub path: RelPath,
    /// The conflict copy holding the other version.
    pub copy: RelPath,
    /// The end whose version kept the name.
    pub kept: Side,
}

/// What a cycle does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In execution order (by [`Action::phase`]).
    pub actions: Vec<Action>,
    pub conflicts: Vec<Conflict>,
    /// Paths the plan cannot settle (a name taken by a folder on the other
    /// end, a conflict copy name too long); left as they are and reported.
    pub skipped: Vec<(RelPath, String)>,
}

impl Plan {
    /// Files this plan deletes on `side` (moves and overwrites excluded): what
    /// the mass-delete guard counts.
    pub fn deletes(&self, side: Side) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Delete { side: s, .. } if *s == side))
            .count()
    }

    /// Bytes this plan writes on `side` from the other end.
    pub fn bytes_in(&self, side: Side) -> u64 {
        self.actions
            .iter()
            .map(|a| match a {
                Action::Copy {
                    side: s, version, ..
                } if *s == side => version.version.size,
                _ => 0,
            })
            .sum()
    }

    /// Every path an action touches.
    pub fn touched(&self) -> BTreeSet<RelPath> {
        self.actions
            .iter()
            .flat_map(|a| a.paths())
            .cloned()
            .collect()
    }

    /// The two trees as they are after every action succeeded (written files
    /// get inode 0): what the planner promises, for tests and for checking a
    /// plan before running it.
    pub fn simulate(&self, source: &Tree, destination: &Tree) -> (Tree, Tree) {
        let mut ends = [source.clone(), destination.clone()];
        let ix = |s: Side| s as usize;
        let mut staged = Vec::new();
        for a in &self.actions {
            let (side, from, path, version, moved) = match a {
                Action::CopyLocal {
                    side,
                    from,
                    path,
                    version,
                    ..
                } => (side, from, path, version, false),
                Action::Move {
                    side,
                    from,
                    path,
                    version,
                    ..
                } => (side, from, path, version, true),
                _ => continue,
            };
            let files = &mut ends[ix(*side)].files;
            let present = if moved {
                files.remove(from).is_some()
            } else {
                files.contains_key(from)
            };
            if present {
                staged.push((*side, path.clone(), version.clone()));
            }
        }
        for (side, path, version) in staged {
            ends[ix(side)]
                .files
                .insert(path, FileState { version, inode: 0 });
        }
        for a in &self.actions {
            match a {
                Action::Copy {
                    side,
                    path,
                    version,
                    ..
                } => {
                    let state = FileState {
                        version: version.version.clone(),
                        inode: 0,
                    };
                    ends[ix(*side)].files.insert(path.clone(), state);
                }
                Action::Delete { side, path, .. } => {
                    ends[ix(*side)].files.remove(path);
                }
                Action::Release { path, .. } => {
                    ends[0].files.remove(path);
                }
                _ => {}
            }
        }
        let [s, d] = ends;
        (s, d)
    }
}
