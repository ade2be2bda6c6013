//! A profiling harness for an idle conduit cycle (benchmark F5): two trees
//! of small files in folders of 100 as the two ends of a local Replicate
//! conduit; one hashing cycle, then idle cycles in a loop, each timed
//! against a plain `stat` walk of both trees (what F5 compares it with).
//! Built without the network, so a release build is quick:
//!
//!     cargo build --release -p concord --example idle_cycle
//!     ./target/release/examples/idle_cycle [--dir DIR] [--files N] [--cycles K] [--walks] [--phases]
//!     perf record -g ./target/release/examples/idle_cycle --dir DIR --cycles 30
//!
//! `--dir DIR` keeps the trees in `DIR/src` and `DIR/dst` and reuses them on
//! later runs (they take a minute to write); without it they go to a fresh
//! temp folder removed at the end. `--walks` times only the walk;
//! `--phases` times the steps of each idle cycle.

use std::path::{Path, PathBuf};
use std::time::Instant;

use concord::conduit::cycle::{run_local_cycle, CycleMemory, CycleOutcome, EndSpec, LocalConduit};
use concord::conduit::settings::{Cadence, Policy, Settings};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// F5's tree: `files` files of 0–1 KiB in folders of 100, old fixed mtimes.
fn write_tree(dir: &Path, files: usize) -> std::io::Result<()> {
    let folders = (files / 100).max(1);
    let mut x: u64 = 0xF5;
    for i in 0..files {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let size = (x >> 33) as usize % 1025;
        let path = dir
            .join(format!("d{:03}", i % folders))
            .join(format!("f{i:05}.dat"));
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let bytes: Vec<u8> = (0..size).map(|j| (j as u64 ^ x) as u8).collect();
        std::fs::write(&path, bytes)?;
        let mtime =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_times(std::fs::FileTimes::new().set_modified(mtime))?;
    }
    Ok(())
}

/// Entries seen by a plain stat walk of `roots` (F5's baseline, verbatim).
fn stat_walk(roots: &[PathBuf]) -> std::io::Result<usize> {
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

fn idle(c: &LocalConduit, memory: &mut CycleMemory) -> Result<(), String> {
    match run_local_cycle(c, memory, now_ms()).map_err(|e| e.to_string())? {
        CycleOutcome::Done(r) if r.plan.actions.is_empty() => Ok(()),
        CycleOutcome::Done(r) => Err(format!("{} actions planned", r.plan.actions.len())),
        CycleOutcome::Paused(reason, _) => Err(format!("paused: {reason:?}")),
    }
}

/// The steps of an idle cycle one by one (as `run_local_cycle` runs them),
/// each timed: where a cycle's time goes without a profiler.
fn phases(c: &LocalConduit, memory: &mut CycleMemory) -> Result<(), String> {
    use concord::conduit::ignore::IgnoreRules;
    use concord::conduit::path::SafeRoot;
    use concord::conduit::planner::{plan, PlanInput};
    use concord::conduit::tree::scan;
    let err = |e: concord::conduit::error::ConduitError| e.to_string();
    let mut t = Instant::now();
    let mut lap = |what: &str| {
        eprint!("{what} {:.3}  ", t.elapsed().as_secs_f64());
        t = Instant::now();
    };
    let now = now_ms();
    let src_root = SafeRoot::open(&c.source.location, None, false).map_err(err)?;
    let dst_root = SafeRoot::open(&c.destination.location, None, false).map_err(err)?;
    let rules = IgnoreRules::load(&src_root)
        .map_err(err)?
        .merged(IgnoreRules::load(&dst_root).map_err(err)?);
    lap("open");
    let src = scan(&src_root, &rules, Some(&memory.scans[0]), now).map_err(err)?;
    lap("scan-src");
    let dst = scan(&dst_root, &rules, Some(&memory.scans[1]), now).map_err(err)?;
    lap("scan-dst");
    let p = plan(&PlanInput {
        policy: c.settings.policy,
        propagate_deletes: false,
        source: &src,
        destination: &dst,
        agreed: &memory.agreed,
        source_device: "alpha",
        destination_device: "beta",
    })
    .map_err(err)?;
    lap("plan");
    if !p.actions.is_empty() {
        return Err(format!("{} actions planned", p.actions.len()));
    }
    memory
        .agreed
        .advance_in_place(&src, &dst, &Default::default());
    lap("advance");
    memory.scans = [src, dst];
    lap("drop");
    eprintln!();
    Ok(())
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut files, mut cycles) = (None, 100_000usize, 10usize);
    let (mut walks_only, mut show_phases) = (false, false);
    while let Some(a) = args.next() {
        let mut num = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(format!("{what} takes a number"))
        };
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--files" => files = num("--files")?,
            "--cycles" => cycles = num("--cycles")?,
            "--walks" => walks_only = true,
            "--phases" => show_phases = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let temp = match &dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| e.to_string())?),
    };
    let work = dir.unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    let (src, dst) = (work.join("src"), work.join("dst"));
    for end in [&src, &dst] {
        if !end.exists() {
            let t = Instant::now();
            write_tree(end, files).map_err(|e| e.to_string())?;
            eprintln!(
                "wrote {} in {:.1} s",
                end.display(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let roots = [src.clone(), dst.clone()];
    let time_walk = || -> Result<f64, String> {
        let t = Instant::now();
        stat_walk(&roots).map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f64())
    };
    if walks_only {
        for _ in 0..cycles {
            eprintln!("walk {:.3} s", time_walk()?);
        }
        return Ok(());
    }
    let c = conduit(&src, &dst);
    let mut memory = CycleMemory::default();
    let t = Instant::now();
    idle(&c, &mut memory)?;
    eprintln!(
        "first cycle (hashing) {:.2} s, {} files agreed",
        t.elapsed().as_secs_f64(),
        memory.agreed.files.len()
    );
    if show_phases {
        for _ in 0..cycles {
            phases(&c, &mut memory)?;
        }
        return Ok(());
    }
    let (mut best_cycle, mut best_walk) = (f64::MAX, f64::MAX);
    for i in 0..cycles {
        let t = Instant::now();
        idle(&c, &mut memory)?;
        let cycle = t.elapsed().as_secs_f64();
        let walk = if i % 5 == 0 { time_walk()? } else { f64::MAX };
        best_cycle = best_cycle.min(cycle);
        best_walk = best_walk.min(walk);
        eprintln!("idle cycle {cycle:.3} s");
    }
    let walk = best_walk.min(time_walk()?);
    println!(
        "best idle cycle {best_cycle:.3} s, best walk {walk:.3} s, ratio walk/cycle {:.2}",
        walk / best_cycle
    );
    Ok(())
}
