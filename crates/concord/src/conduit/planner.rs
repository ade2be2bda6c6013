//! The cycle planner: a pure function from the two ends' trees and the last
//! agreed state to a [`Plan`]. State-based: it sees only where each end is
//! now, so a burst of changes between two cycles (create, edit, rename,
//! edit again) compresses to its final state.
//!
//! Rules per path (ARCHITECTURE.md, "Conduits"):
//! - **Replicate**: the destination takes every source file that differs
//!   (the old version to the trash); a destination file the source lacks is
//!   deleted (to the trash) only with the `delete` flag.
//! - **Synchronize**: an end *changed* a path when its version differs from
//!   the agreed one (creating and deleting are changes). Changed on one end
//!   only: the change goes to the other (a deletion too). Changed on both:
//!   equal content agrees; a deletion against an edit keeps the edit; two
//!   different versions are a **conflict**: the later modification keeps
//!   the name (ties: the source), the other is kept on both ends as
//!   `NAME.conflict-DEVICE-YYYYMMDD-HHMMSS.EXT`. A conflict between conflict
//!   copies never makes another: the loser goes to the trash.
//! - **Archive**: the destination takes every source file that differs,
//!   then the source file is released (removed once the destination's copy
//!   is verified by hash).
//!
//! Then renames: a copy onto an end whose deletions include a file with the
//! same content becomes a move of that file; a copy of content the end
//! already holds elsewhere becomes a local copy. A renamed file, or folder,
//! is moved, never sent again.

use std::collections::{BTreeMap, BTreeSet};

use super::agreed::Agreed;
use super::conflict::{conflict_path, is_conflict_copy};
use super::error::{ConduitError, Result};
use super::path::{union3, RelPath};
use super::plan::{Action, Conflict, Plan, Side};
use super::settings::Policy;
use super::tree::{FileState, Tree, Version};

/// Conflict copy names tried per path before the path is skipped.
const MAX_CONFLICT_NAMES: u32 = 100;

/// What the planner needs to know about a conduit and its two ends.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub policy: Policy,
    /// Replicate: deletions propagate.
    pub propagate_deletes: bool,
    pub source: &'a Tree,
    pub destination: &'a Tree,
    pub agreed: &'a Agreed,
    /// The device names of the two ends, for conflict copies' names.
    pub source_device: &'a str,
    pub destination_device: &'a str,
}

impl PlanInput<'_> {
    fn tree(&self, side: Side) -> &Tree {
        match side {
            Side::Source => self.source,
            Side::Destination => self.destination,
        }
    }

    fn device(&self, side: Side) -> &str {
        match side {
            Side::Source => self.source_device,
            Side::Destination => self.destination_device,
        }
    }
}

/// The names a conflict copy may not take: every path of either end or of
/// the agreed state, and the copies this plan already named.
struct Taken<'a> {
    input: &'a PlanInput<'a>,
    named: BTreeSet<RelPath>,
}

impl Taken<'_> {
    fn contains(&self, p: &RelPath) -> bool {
        self.input.source.files.contains_key(p)
            || self.input.destination.files.contains_key(p)
            || self.input.agreed.files.contains_key(p)
            || self.named.contains(p)
    }
}

/// Plan one cycle. One pass over the two trees and the agreed state in path
/// order: an idle cycle over 100,000 files allocates nothing per path.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan> {
    let mut out = Plan::default();
    let mut taken = Taken {
        input,
        named: BTreeSet::new(),
    };
    let paths = union3(
        &input.source.files,
        &input.destination.files,
        &input.agreed.files,
    );
    for (p, a, b, g) in paths {
        match input.policy {
            Policy::Replicate => replicate(p, a, b, input.propagate_deletes, &mut out),
            Policy::Archive => archive(p, a, b, &mut out),
            Policy::Synchronize => synchronize(input, p, (a, b, g), &mut taken, &mut out),
            Policy::Offload => {
                return Err(ConduitError::Invalid(
                    "offload cycles are not planned yet (they need the transfer engine)".into(),
                ))
            }
        }
    }
    for side in [Side::Source, Side::Destination] {
        out.actions = reuse_local_content(std::mem::take(&mut out.actions), side, input.tree(side));
    }
    out.actions.sort_by_key(Action::phase);
    Ok(out)
}

fn copy(side: Side, p: &RelPath, version: &FileState, replaces: Option<&FileState>) -> Action {
    Action::Copy {
        side,
        path: p.clone(),
        from: p.clone(),
        version: version.clone(),
        replaces: replaces.cloned(),
    }
}

fn replicate(
    p: &RelPath,
    a: Option<&FileState>,
    b: Option<&FileState>,
    delete: bool,
    out: &mut Plan,
) {
    match (a, b) {
        (Some(a), b) if !b.is_some_and(|b| b.version.same_as(&a.version)) => {
            out.actions.push(copy(Side::Destination, p, a, b));
        }
        (None, Some(b)) if delete => out.actions.push(Action::Delete {
            side: Side::Destination,
            path: p.clone(),
            expected: b.clone(),
        }),
        _ => {}
    }
}

fn archive(p: &RelPath, a: Option<&FileState>, b: Option<&FileState>, out: &mut Plan) {
    let Some(a) = a else { return };
    if !b.is_some_and(|b| b.version.same_as(&a.version)) {
        out.actions.push(copy(Side::Destination, p, a, b));
    }
    // Without a hash the copy cannot be verified: the source stays until
    // a scan hashes it.
    if let Some(hash) = a.version.hash {
        out.actions.push(Action::Release {
            path: p.clone(),
            expected: a.clone(),
            hash,
        });
    }
}

/// Whether an end's file differs from the agreed version (absent counts).
fn changed(x: Option<&FileState>, agreed: Option<&Version>) -> bool {
    match (x, agreed) {
        (None, None) => false,
        (Some(x), Some(g)) => !x.version.same_as(g),
        _ => true,
    }
}

/// `(a, b, g)`: the source's, the destination's and the agreed version of `p`.
fn synchronize(
    input: &PlanInput<'_>,
    p: &RelPath,
    (a, b, g): (Option<&FileState>, Option<&FileState>, Option<&Version>),
    taken: &mut Taken<'_>,
    out: &mut Plan,
) {
    let (ca, cb) = (changed(a, g), changed(b, g));
    let one_way = |from: Side, x: Option<&FileState>, y: Option<&FileState>, out: &mut Plan| {
        let to = from.other();
        match (x, y) {
            (Some(x), y) => out.actions.push(copy(to, p, x, y)),
            (None, Some(y)) => out.actions.push(Action::Delete {
                side: to,
                path: p.clone(),
                expected: y.clone(),
            }),
            (None, None) => {}
        }
    };
    match (ca, cb) {
        (false, false) => {}
        (true, false) => one_way(Side::Source, a, b, out),
        (false, true) => one_way(Side::Destination, b, a, out),
        (true, true) => match (a, b) {
            (None, None) => {}
            // An edit beats a deletion: nothing is lost.
            (Some(a), None) => out.actions.push(copy(Side::Destination, p, a, None)),
            (None, Some(b)) => out.actions.push(copy(Side::Source, p, b, None)),
            (Some(a), Some(b)) if a.version.same_as(&b.version) => {}
            (Some(a), Some(b)) => conflict(input, p, a, b, taken, out),
        },
    }
}

/// Both ends wrote different versions of `p` since the last agreement.
fn conflict(
    input: &PlanInput<'_>,
    p: &RelPath,
    a: &FileState,
    b: &FileState,
    taken: &mut Taken<'_>,
    out: &mut Plan,
) {
    let winner = if b.version.mtime_ns > a.version.mtime_ns {
        Side::Destination
    } else {
        Side::Source
    };
    let loser = winner.other();
    let (won, lost) = match winner {
        Side::Source => (a, b),
        Side::Destination => (b, a),
    };
    if is_conflict_copy(p.file_name()) {
        // A conflict copy never begets another: the losing version goes to
        // the trash of the end that held it.
        out.actions.push(copy(loser, p, won, Some(lost)));
        return;
    }
    let mtime_ms = lost.version.mtime_ns.div_euclid(1_000_000);
    let name = (1..=MAX_CONFLICT_NAMES)
        .filter_map(|n| conflict_path(p, input.device(loser), mtime_ms, n))
        .find(|c| !taken.contains(c));
    let Some(name) = name else {
        out.skipped
            .push((p.clone(), "no free name for a conflict copy".into()));
        return;
    };
    taken.named.insert(name.clone());
    out.actions.push(Action::Move {
        side: loser,
        from: p.clone(),
        expected: lost.clone(),
        path: name.clone(),
        version: lost.version.clone(),
        replaces: None,
    });
    out.actions.push(copy(loser, p, won, None));
    out.actions.push(Action::Copy {
        side: winner,
        path: name.clone(),
        from: name.clone(),
        version: lost.clone(),
        replaces: None,
    });
    out.conflicts.push(Conflict {
        path: p.clone(),
        copy: name,
        kept: winner,
    });
}

/// Turn copies onto `side` into moves of files `side` deletes with the same
/// content, or into local copies of content `side` already holds.
fn reuse_local_content(actions: Vec<Action>, side: Side, tree: &Tree) -> Vec<Action> {
    let copies_with_hash = actions.iter().any(|a| {
        matches!(a, Action::Copy { side: s, version, .. } if *s == side && version.version.hash.is_some())
    });
    if !copies_with_hash {
        return actions; // nothing to turn into a move or a local copy
    }
    let mut deleted: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
    for (i, a) in actions.iter().enumerate() {
        if let Action::Delete {
            side: s, expected, ..
        } = a
        {
            if let (true, Some(h)) = (*s == side, expected.version.hash) {
                deleted.entry(h).or_default().push(i);
            }
        }
    }
    let mut held: BTreeMap<[u8; 32], (&RelPath, &FileState)> = BTreeMap::new();
    for (p, f) in &tree.files {
        if let Some(h) = f.version.hash {
            held.entry(h).or_insert((p, f));
        }
    }
    let mut gone = BTreeSet::new();
    let mut replaced: BTreeMap<usize, Action> = BTreeMap::new();
    for (i, a) in actions.iter().enumerate() {
        let Action::Copy {
            side: s,
            path,
            version,
            replaces,
            ..
        } = a
        else {
            continue;
        };
        let Some(h) = version.version.hash.filter(|_| *s == side) else {
            continue;
        };
        let reuse = if let Some(d) = deleted.get_mut(&h).and_then(Vec::pop) {
            let Action::Delete {
                path: from,
                expected,
                ..
            } = &actions[d]
            else {
                continue;
            };
            gone.insert(d);
            Action::Move {
                side,
                from: from.clone(),
                expected: expected.clone(),
                path: path.clone(),
                version: version.version.clone(),
                replaces: replaces.clone(),
            }
        } else if let Some((from, expected)) = held.get(&h) {
            Action::CopyLocal {
                side,
                from: (*from).clone(),
                expected: (*expected).clone(),
                path: path.clone(),
                version: version.version.clone(),
                replaces: replaces.clone(),
            }
        } else {
            continue;
        };
        replaced.insert(i, reuse);
    }
    actions
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !gone.contains(i))
        .map(|(i, a)| replaced.remove(&i).unwrap_or(a))
        .collect()
}
