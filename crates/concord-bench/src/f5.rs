//! F5: a conduit cycle with nothing changed.
//!
//! Two identical trees of 100,000 files (small scale: 10,000) of 0–1 KiB in
//! folders of 100, with old mtimes, as the two ends of a local Replicate
//! conduit (`concord::conduit::cycle::run_local_cycle`). A first cycle
//! (untimed) hashes both ends and agrees on every file; the timed cycles
//! then find nothing changed: guards, both scans against the stat cache, the
//! plan (empty), the trash and temp purges. Baseline, same run: a plain
//! `stat` walk of both trees (`read_dir` and `symlink_metadata` of every
//! entry). Best of three each, page cache warm.

use std::path::{Path, PathBuf};

use concord::conduit::cycle::{run_local_cycle, CycleMemory, CycleOutcome, EndSpec, LocalConduit};
use concord::conduit::settings::{Cadence, Policy, Settings};

use crate::common::{progress, timed, Scale};
use crate::content::now_ms;
use crate::files::{small_tree, temp};
use crate::report::Row;

fn conduit(src: &Path, dst: &Path) -> LocalConduit {
    let end = |p: &Path, device: &str| EndSpec {
        location: p.to_path_buf(),
        dir: None,
        fingerprint: None,
        device: device.into(),
    };
    LocalConduit {
        settings: Settings {
            policy: Policy::Replicate,
            source_dir: None,
            destination_dir: None,
            propagate_deletes: false,
            cadence: Cadence::Manual,
            min_free: None,
            paused: None,
            allow_deletes: false,
        },
        source: end(src, "alpha"),
        destination: end(dst, "beta"),
    }
}

/// One cycle; fails unless it ran and had nothing to do.
fn idle_cycle(c: &LocalConduit, memory: &mut CycleMemory) -> anyhow::Result<()> {
    match run_local_cycle(c, memory, now_ms())? {
        CycleOutcome::Done(r) => {
            anyhow::ensure!(
                r.plan.actions.is_empty() && r.plan.conflicts.is_empty(),
                "the cycle planned {} actions on unchanged trees",
                r.plan.actions.len()
            );
            Ok(())
        }
        CycleOutcome::Paused(reason, _) => anyhow::bail!("the cycle paused: {reason:?}"),
    }
}

/// Entries seen by a plain stat walk of `roots`.
fn stat_walk(roots: &[PathBuf]) -> anyhow::Result<usize> {
    let mut seen = 0;
    let mut stack = roots.to_vec();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let md = std::fs::symlink_metadata(&path)?;
            seen += 1;
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(seen)
}

/// Best wall time of three.
fn best(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        best = best.min(timed(&mut f)?.1);
    }
    Ok(best)
}

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(10_000, 100_000);
    let work = temp("concord-f5-")?;
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    for end in [&src, &dst] {
        small_tree(end, files, files / 100, (0, 1024), 0xF5)?;
    }
    let c = conduit(&src, &dst);
    let mut memory = CycleMemory::default();
    let (_, first) = timed(|| idle_cycle(&c, &mut memory))?;
    anyhow::ensure!(
        memory.agreed.files.len() == files,
        "the first cycle agreed on {} files",
        memory.agreed.files.len()
    );
    progress!("F5 first cycle (hashing both ends): {first:.2} s");
    let roots = [src.clone(), dst.clone()];
    let mut seen = 0;
    let walk = best(|| {
        seen = stat_walk(&roots)?;
        Ok(())
    })?;
    let cycle = best(|| idle_cycle(&c, &mut memory))?;
    progress!("F5 idle cycle {cycle:.3} s, stat walk {walk:.3} s ({seen} entries)");
    let rate = |secs: f64| files as f64 / secs;
    Ok(vec![Row::at_least(
        "F5",
        &format!("idle cycle over {files} files, rate"),
        rate(cycle),
        "files/s",
        "stat walk of both ends",
        rate(walk),
        0.5,
    )])
}
