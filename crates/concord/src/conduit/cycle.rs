//! One cycle of a conduit whose two ends are folders on this machine:
//! guards, scan, plan, guards again, execute, advance the agreed state.
//! The network engine runs the same steps with its own content sources.

use std::path::PathBuf;

use super::agreed::Agreed;
use super::content::LocalSource;
use super::error::Result;
use super::execute::{End, ExecReport, Executor};
use super::guard::{has_room, is_mass_delete, root_present};
use super::ignore::IgnoreRules;
use super::path::{RelPath, SafeRoot};
use super::plan::{Plan, Side};
use super::planner::{plan, PlanInput};
use super::settings::{PauseReason, Policy, Settings};
use super::trash::{Trash, RETENTION_MS};
use super::tree::{scan, Tree};

/// One end of a local conduit.
#[derive(Debug, Clone)]
pub struct EndSpec {
    /// The location's root.
    pub location: PathBuf,
    /// The conduit's subfolder inside it.
    pub dir: Option<RelPath>,
    /// The location's volume fingerprint when it was added, if known.
    pub fingerprint: Option<String>,
    /// The device's name (conflict copies, audit records).
    pub device: String,
}

/// A conduit between two folders of this machine.
#[derive(Debug, Clone)]
pub struct LocalConduit {
    pub settings: Settings,
    pub source: EndSpec,
    pub destination: EndSpec,
}

/// What a conduit's working device keeps between cycles: the agreed state
/// (persist it after every cycle, [`Agreed::save`]) and each end's last scan
/// (a stat cache, so unchanged files are not hashed again).
#[derive(Debug, Clone, Default)]
pub struct CycleMemory {
    pub agreed: Agreed,
    pub scans: [Tree; 2],
}

impl CycleMemory {
    /// Remember a cycle that ran `plan` on the ends scanned as `source`
    /// and `destination`: the agreed state moves to the ends as the plan
    /// left them (but for the `unsettled` paths), and the scans are kept
    /// for the next cycle's stat cache. An empty plan left both ends as
    /// scanned: no simulated copies of the trees.
    pub fn record(
        &mut self,
        plan: &Plan,
        [source, destination]: [Tree; 2],
        unsettled: &std::collections::BTreeSet<RelPath>,
    ) {
        if plan.actions.is_empty() {
            self.agreed
                .advance_in_place(&source, &destination, unsettled);
        } else {
            let (after_src, after_dst) = plan.simulate(&source, &destination);
            self.agreed
                .advance_in_place(&after_src, &after_dst, unsettled);
        }
        self.scans = [source, destination];
    }
}

/// What a cycle planned and did.
#[derive(Debug, Default)]
pub struct CycleReport {
    pub plan: Plan,
    pub exec: ExecReport,
}

/// How a cycle ended.
#[derive(Debug)]
pub enum CycleOutcome {
    Done(CycleReport),
    /// The conduit must pause with this reason (record it in the conduit's
    /// `paused` field); the report says what was done before, if anything.
    Paused(PauseReason, CycleReport),
}

fn paused(reason: PauseReason) -> Result<CycleOutcome> {
    Ok(CycleOutcome::Paused(reason, CycleReport::default()))
}

/// Open an end's root, or say why the conduit must pause. `reads`: this end
/// is read as a source (its absence must never look like deletions);
/// `first`: nothing was ever agreed, so a missing subfolder may be created.
fn open_end(end: &EndSpec, reads: bool, first: bool) -> std::result::Result<SafeRoot, PauseReason> {
    let missing = if reads {
        PauseReason::SourceMissing
    } else {
        PauseReason::DestinationUnreachable
    };
    if !root_present(&end.location, end.fingerprint.as_deref()) {
        return Err(missing);
    }
    SafeRoot::open(&end.location, end.dir.as_ref(), !reads || first).map_err(|_| missing)
}

/// Run one cycle at `now_ms`.
pub fn run_local_cycle(
    c: &LocalConduit,
    memory: &mut CycleMemory,
    now_ms: i64,
) -> Result<CycleOutcome> {
    if let Some(reason) = c.settings.paused {
        return paused(reason);
    }
    let two_way = c.settings.policy == Policy::Synchronize;
    let first = memory.agreed.files.is_empty();
    let src_root = match open_end(&c.source, true, first) {
        Ok(r) => r,
        Err(reason) => return paused(reason),
    };
    let dst_root = match open_end(&c.destination, two_way, first) {
        Ok(r) => r,
        Err(reason) => return paused(reason),
    };
    let rules = IgnoreRules::load(&src_root)?.merged(IgnoreRules::load(&dst_root)?);
    let [src_cache, dst_cache] = &memory.scans;
    let src_tree = scan(&src_root, &rules, Some(src_cache), now_ms)?;
    let dst_tree = scan(&dst_root, &rules, Some(dst_cache), now_ms)?;
    let plan = plan(&PlanInput {
        policy: c.settings.policy,
        propagate_deletes: c.settings.propagate_deletes,
        source: &src_tree,
        destination: &dst_tree,
        agreed: &memory.agreed,
        source_device: &c.source.device,
        destination_device: &c.destination.device,
    })?;
    let report = |plan| CycleReport {
        plan,
        exec: ExecReport::default(),
    };
    if !c.settings.allow_deletes && is_mass_delete(&plan, &src_tree, &dst_tree) {
        return Ok(CycleOutcome::Paused(PauseReason::MassDelete, report(plan)));
    }
    let room = has_room(&plan, Side::Source, &c.source.location)
        && has_room(&plan, Side::Destination, &c.destination.location);
    if !room {
        return Ok(CycleOutcome::Paused(PauseReason::DiskFull, report(plan)));
    }
    let src_end = End {
        root: src_root.clone(),
        device: c.source.device.clone(),
    };
    let dst_end = End {
        root: dst_root.clone(),
        device: c.destination.device.clone(),
    };
    let mut into_src = LocalSource::new(dst_root);
    let mut into_dst = LocalSource::new(src_root);
    let exec = Executor::new(&src_end, &dst_end, &mut into_src, &mut into_dst, now_ms).run(&plan);
    memory.record(&plan, [src_tree, dst_tree], &exec.unsettled);
    for end in [&c.source, &c.destination] {
        Trash::for_location(&end.location).purge(now_ms, RETENTION_MS)?;
        let tmp = end.location.join(super::path::RESERVED_DIR).join("tmp");
        super::content::purge_stale_temps(&tmp, now_ms);
    }
    let disk_full = exec.disk_full;
    let report = CycleReport { plan, exec };
    Ok(if disk_full {
        CycleOutcome::Paused(PauseReason::DiskFull, report)
    } else {
        CycleOutcome::Done(report)
    })
}
