//! One cycle of a conduit whose source is on another device, run by the
//! destination's device (Replicate, Archive): the source's listing, this
//! end's scan, the planner and its guards, the executor with a
//! [`RemoteSource`], then Archive's releases, each asked of the source only
//! after the copy here hashed to the source's hash. Blocking code.

use concord::conduit::agreed::Agreed;
use concord::conduit::cycle::{CycleMemory, CycleOutcome, CycleReport};
use concord::conduit::error::{ConduitError, Result};
use concord::conduit::execute::{End, ExecReport};
use concord::conduit::guard::{has_room, is_mass_delete, root_present};
use concord::conduit::ignore::IgnoreRules;
use concord::conduit::path::{RelPath, SafeRoot, RESERVED_DIR};
use concord::conduit::plan::{Action, Plan, Side};
use concord::conduit::planner::{plan, PlanInput};
use concord::conduit::settings::{PauseReason, Policy, Settings};
use concord::conduit::trash::{Trash, RETENTION_MS};
use concord::conduit::tree::{hash_reader, scan, Tree};
use concord::Uuid;

use crate::transfer::apply::to_wire;
use crate::transfer::remote::RemoteSource;
use crate::transfer::wire::{
    ApplyAnswer, ApplyRequest, ContentCall, ReleaseAnswer, ReleaseRequest, WireAction,
};

/// The destination end, on this device.
pub struct LocalEnd {
    /// The location's id.
    pub id: Uuid,
    pub location: std::path::PathBuf,
    pub fingerprint: Option<String>,
    pub device: String,
}

/// What a cycle plans to move, for `conduit status` while it runs.
#[derive(Debug, Default)]
pub struct Totals {
    pub files: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

impl Totals {
    /// Record what `plan` copies onto either end.
    pub fn set(&self, plan: &Plan) {
        use std::sync::atomic::Ordering::Relaxed;
        let copies = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Copy { .. }))
            .count();
        self.files.store(copies as u64, Relaxed);
        self.bytes.store(
            plan.bytes_in(Side::Destination) + plan.bytes_in(Side::Source),
            Relaxed,
        );
    }
}

/// What the cycle needs besides the trees.
pub struct RemoteCycle {
    pub totals: std::sync::Arc<Totals>,
    pub settings: Settings,
    pub source_device: String,
    pub destination: LocalEnd,
    pub source: RemoteSource,
}

fn paused(reason: PauseReason, plan: Plan) -> Result<CycleOutcome> {
    Ok(CycleOutcome::Paused(
        reason,
        CycleReport {
            plan,
            ..CycleReport::default()
        },
    ))
}

/// A file is left out when it or a folder above it is ignored here.
fn drop_ignored(tree: &mut Tree, rules: &IgnoreRules) {
    tree.files.retain(|p, _| {
        let mut dir = p.parent();
        while let Some(d) = dir {
            if rules.is_ignored(d.as_str(), true) {
                return false;
            }
            dir = d.parent();
        }
        !rules.is_ignored(p.as_str(), false)
    });
}

/// Run one cycle from `source_tree` (the source's listing) at `now_ms`.
pub fn run_remote_cycle(
    c: &mut RemoteCycle,
    mut source_tree: Tree,
    memory: &mut CycleMemory,
    now_ms: i64,
) -> Result<CycleOutcome> {
    let first = memory.agreed.files.is_empty();
    let dst = &c.destination;
    if !root_present(&dst.location, dst.fingerprint.as_deref()) {
        return paused(PauseReason::DestinationUnreachable, Plan::default());
    }
    let dst_root = match SafeRoot::open(&dst.location, c.settings.destination_dir.as_ref(), first) {
        Ok(r) => r,
        Err(_) => return paused(PauseReason::DestinationUnreachable, Plan::default()),
    };
    let rules = IgnoreRules::load(&dst_root)?;
    drop_ignored(&mut source_tree, &rules);
    let dst_tree = scan(&dst_root, &rules, Some(&memory.scans[1]), now_ms)?;
    let plan = plan(&PlanInput {
        policy: c.settings.policy,
        propagate_deletes: c.settings.propagate_deletes,
        source: &source_tree,
        destination: &dst_tree,
        agreed: &memory.agreed,
        source_device: &c.source_device,
        destination_device: &dst.device,
    })?;
    let two_way = c.settings.policy == Policy::Synchronize;
    if !two_way
        && plan
            .actions
            .iter()
            .any(|a| a.side() == Side::Source && !matches!(a, Action::Release { .. }))
    {
        return Err(ConduitError::Invalid(
            "a one-way plan changes its source; refusing to run it".into(),
        ));
    }
    c.totals.set(&plan);
    if !c.settings.allow_deletes && is_mass_delete(&plan, &source_tree, &dst_tree) {
        return paused(PauseReason::MassDelete, plan);
    }
    if !has_room(&plan, Side::Destination, &dst.location) {
        return paused(PauseReason::DiskFull, plan);
    }
    let exec = execute(c, &dst_root, &plan, now_ms);
    memory.record(&plan, [source_tree, dst_tree], &exec.unsettled);
    let dst = &c.destination;
    Trash::for_location(&dst.location).purge(now_ms, RETENTION_MS)?;
    concord::conduit::content::purge_stale_temps(
        &dst.location.join(RESERVED_DIR).join("tmp"),
        now_ms,
    );
    crate::transfer::prefetch::purge_stale_incoming(&c.source.incoming, now_ms);
    crate::transfer::partial::purge_abandoned(&dst.location.join(RESERVED_DIR).join("tmp"), now_ms);
    let disk_full = exec.disk_full;
    let report = CycleReport { plan, exec };
    Ok(if disk_full {
        CycleOutcome::Paused(PauseReason::DiskFull, report)
    } else {
        CycleOutcome::Done(report)
    })
}

/// Groups of phases run on both ends before the next group starts: local
/// copies and moves, then copies from the other end, then deletions (what
/// the core's executor does on one machine).
const PHASE_GROUPS: [std::ops::RangeInclusive<u8>; 3] = [0..=1, 2..=3, 4..=4];

/// Carry out `plan`: this end's actions here, the source end's through
/// `Apply` calls, group by group; then Archive's releases. This end's
/// copies run in batches whose content is prefetched several files at once
/// ([`RemoteSource::run_batched`]), not one round trip per file.
fn execute(c: &mut RemoteCycle, dst_root: &SafeRoot, plan: &Plan, now_ms: i64) -> ExecReport {
    let end = End {
        root: dst_root.clone(),
        device: c.destination.device.clone(),
    };
    let mut exec = ExecReport::default();
    for group in PHASE_GROUPS {
        let of = |side: Side| -> Vec<Action> {
            plan.actions
                .iter()
                .filter(|a| group.contains(&a.phase()) && a.side() == side)
                .filter(|a| !matches!(a, Action::Release { .. }))
                .cloned()
                .collect()
        };
        let here = of(Side::Destination);
        if !here.is_empty() {
            let r = c.source.run_batched(&end, Side::Destination, here, now_ms);
            exec.merge(r);
        }
        let there = of(Side::Source);
        if !exec.disk_full && !there.is_empty() {
            apply_remote(c, &there, &mut exec);
        }
    }
    let releases: Vec<Action> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Release { .. }))
        .cloned()
        .collect();
    release_all(c, dst_root, &releases, &mut exec);
    exec
}

/// Largest encoded batch of actions in one `Apply` call (under the
/// request frame limit).
const APPLY_BATCH_BYTES: usize = 24 * 1024;

/// The source end's actions, asked of its device in batches; a batch that
/// fails leaves its paths unsettled.
fn apply_remote(c: &RemoteCycle, actions: &[Action], exec: &mut ExecReport) {
    let mut batches: Vec<Vec<(&Action, WireAction)>> = vec![Vec::new()];
    let mut size = 0;
    for a in actions {
        let Some(w) = to_wire(a) else { continue };
        let n = postcard::to_allocvec(&w).map_or(usize::MAX, |b| b.len());
        if size + n > APPLY_BATCH_BYTES && !batches[batches.len() - 1].is_empty() {
            batches.push(Vec::new());
            size = 0;
        }
        size += n;
        let last = batches.len() - 1;
        batches[last].push((a, w));
    }
    let s = &c.source;
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        let call = ContentCall::Apply(ApplyRequest {
            library: s.library,
            location: s.location,
            dir: s
                .dir
                .as_ref()
                .map(|d| d.as_str().to_string())
                .unwrap_or_default(),
            peer_location: c.destination.id,
            peer_dir: c
                .settings
                .destination_dir
                .as_ref()
                .map(|d| d.as_str().to_string())
                .unwrap_or_default(),
            peer_device: c.destination.device.clone(),
            actions: batch.iter().map(|(_, w)| w.clone()).collect(),
        });
        let failed: Vec<(String, String)> = match s
            .handle
            .block_on(s.client.call::<ApplyAnswer>(&s.peer, &call))
        {
            Ok(ApplyAnswer::Applied {
                done,
                failed,
                disk_full,
            }) => {
                exec.done += done as usize;
                exec.disk_full |= disk_full;
                failed
            }
            Ok(ApplyAnswer::Refused { reason }) => all_failed(&batch, &reason),
            Err(e) => all_failed(&batch, &e.to_string()),
        };
        for (path, why) in failed {
            for (a, _) in batch
                .iter()
                .filter(|(a, _)| a.paths().iter().any(|p| p.as_str() == path))
            {
                exec.unsettled.extend(a.paths().into_iter().cloned());
                exec.failed.push((a.paths()[0].clone(), why.clone()));
            }
        }
    }
}

fn all_failed(batch: &[(&Action, WireAction)], why: &str) -> Vec<(String, String)> {
    batch
        .iter()
        .map(|(a, _)| (a.paths()[0].as_str().to_string(), why.to_string()))
        .collect()
}

/// Archive's releases, each after its copy here was settled and verified;
/// a release that fails leaves its path unsettled (kept for the next cycle).
fn release_all(c: &RemoteCycle, dst_root: &SafeRoot, releases: &[Action], exec: &mut ExecReport) {
    for a in releases {
        let Action::Release {
            path,
            expected,
            hash,
        } = a
        else {
            continue;
        };
        if exec.disk_full || exec.unsettled.contains(path) {
            exec.unsettled.insert(path.clone());
            continue;
        }
        match release(
            c,
            dst_root,
            path,
            expected.version.size,
            expected.version.mtime_ns,
            hash,
        ) {
            Ok(()) => exec.done += 1,
            Err(e) => {
                exec.unsettled.insert(path.clone());
                exec.failed.push((path.clone(), e.to_string()));
            }
        }
    }
}

/// Archive: hash the copy here, then ask the source to remove its file if
/// it is still the version copied.
fn release(
    c: &RemoteCycle,
    dst_root: &SafeRoot,
    path: &RelPath,
    size: u64,
    mtime_ns: i64,
    hash: &[u8; 32],
) -> Result<()> {
    let mut copy = dst_root.open_file(path)?;
    let (got, _) = hash_reader(&mut copy).map_err(|e| ConduitError::io(dst_root.path(), e))?;
    if got != *hash {
        return Err(ConduitError::Mismatch(dst_root.resolve(path)?));
    }
    let s = &c.source;
    let call = ContentCall::Release(ReleaseRequest {
        library: s.library,
        location: s.location,
        dir: s
            .dir
            .as_ref()
            .map(|d| d.as_str().to_string())
            .unwrap_or_default(),
        path: path.as_str().to_string(),
        size,
        mtime_ns,
        hash: *hash,
        to_device: c.destination.device.clone(),
        to_path: dst_root.in_location(path),
    });
    match s
        .handle
        .block_on(s.client.call::<ReleaseAnswer>(&s.peer, &call))
    {
        Ok(ReleaseAnswer::Released) => Ok(()),
        Ok(ReleaseAnswer::Refused { reason }) => Err(ConduitError::Invalid(format!(
            "the source kept {}: {reason}",
            path.as_str()
        ))),
        Err(e) => Err(ConduitError::Invalid(format!(
            "releasing {}: {e}",
            path.as_str()
        ))),
    }
}

/// Where a conduit's agreed state is kept on its working device.
pub fn agreed_path(library_dir: &std::path::Path, conduit: Uuid) -> std::path::PathBuf {
    library_dir.join(format!("conduit-{conduit}.agreed"))
}

/// The agreed state saved for `conduit`, or none (a first cycle).
pub fn load_agreed(library_dir: &std::path::Path, conduit: Uuid) -> Agreed {
    Agreed::load(&agreed_path(library_dir, conduit)).unwrap_or_default()
}
