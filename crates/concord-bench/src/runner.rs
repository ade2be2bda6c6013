//! F1R and F2R: F1's and F2's trees replicated through the real conduit
//! runner, next to the transfer engine driven directly in the same run.
//!
//! F1 and F2 time the engine's `fetch_many` (16 files in flight, one
//! folder fsync per batch); what a user gets is a conduit cycle:
//! `ConduitRunner::run` on B with a manual Replicate conduit from A's
//! location (listing A, B's scan, the planner, the executor placing each
//! file with its checks, trash and agreed state). Each side runs on a
//! fresh pair of nodes (so neither finds the other's caches on A: the
//! listing hashes every file for both), on the same source tree, into an
//! empty destination checked equal to the source (BLAKE3 of every file).
//! B watches its locations, as a user's node does, so the runner's time
//! includes the destination's files being indexed as they land. The
//! figure is the runner's rate and its ratio to the engine's, each side
//! the best of two rounds run alternately, each started on a quiet disk
//! (`files::settle`); a copy of many files is kept to the end
//! (`files::done_with`).

use std::path::Path;
use std::time::Instant;

use crate::common::{progress, Scale};
use crate::content::ContentPair;
use crate::files::{assert_same, done_with, large_files, settle, small_tree, temp};
use crate::net::runtime;
use crate::report::Row;

/// F1's tree: eight large files.
pub fn run_f1r(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let (count, mib) = (8, scale.pick(16, 256) as u64);
    let work = temp("concord-f1r-")?;
    let src = work.path().join("src");
    let bytes = large_files(&src, count, mib << 20, 0xF1)?;
    let (engine, runner) = both("F1R", work.path(), &src)?;
    let rate = |secs: f64| bytes as f64 / 1e6 / secs;
    Ok(vec![Row::at_least(
        "F1R",
        &format!("replicate {count} x {mib} MiB through a conduit cycle, rate"),
        rate(runner),
        "MB/s",
        "transfer engine direct (F1's path), same run",
        rate(engine),
        0.9,
    )])
}

/// F2's tree: many small files in folders of 100.
pub fn run_f2r(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(2_000, 20_000);
    let work = temp("concord-f2r-")?;
    let src = work.path().join("src");
    small_tree(&src, files, files / 100, (1024, 16 * 1024), 0xF2)?;
    let (engine, runner) = both("F2R", work.path(), &src)?;
    let rate = |secs: f64| files as f64 / secs;
    Ok(vec![Row::at_least(
        "F2R",
        &format!("replicate {files} files of 1-16 KiB through a conduit cycle, rate"),
        rate(runner),
        "files/s",
        "transfer engine direct (F2's path), same run",
        rate(engine),
        0.9,
    )])
}

/// Rounds of each side, alternating (engine, runner, engine, runner), each
/// side's best kept: other jobs on the machine move single runs by 2x.
const ROUNDS: usize = 2;

/// Seconds (best of [`ROUNDS`]) for the engine driven directly and for one
/// conduit cycle, each round on fresh nodes into a fresh destination.
fn both(id: &str, work: &Path, src: &Path) -> anyhow::Result<(f64, f64)> {
    let rt = runtime()?;
    let (mut engine, mut runner) = (f64::MAX, f64::MAX);
    for round in 0..ROUNDS {
        let nodes = work.join(format!("nodes-engine-{round}"));
        let dest = work.join(format!("dest-engine-{round}"));
        let secs = rt.block_on(engine_once(&nodes, &dest, src))?;
        progress!("{id} engine direct: {secs:.2} s");
        engine = engine.min(secs);
        let nodes = work.join(format!("nodes-runner-{round}"));
        let dest = work.join(format!("dest-runner-{round}"));
        let secs = rt.block_on(runner_once(id, &nodes, &dest, src))?;
        progress!("{id} conduit runner: {secs:.2} s");
        runner = runner.min(secs);
    }
    Ok((engine, runner))
}

/// F1/F2's path: list the source, `fetch_many` every file into `dest`.
async fn engine_once(nodes: &Path, dest: &Path, src: &Path) -> anyhow::Result<f64> {
    let pair = ContentPair::new(nodes, src).await?;
    settle();
    let t = Instant::now();
    let scanned = pair.scan_source().await?;
    pair.fetch_all(&scanned, dest).await?;
    let secs = t.elapsed().as_secs_f64();
    pair.shutdown().await;
    assert_same(src, dest, &[".concord"])?;
    done_with(dest, scanned.len())?;
    Ok(secs)
}

/// One Replicate cycle on B (`ConduitRunner::run`) into `dest`, a location
/// of B's.
async fn runner_once(id: &str, nodes: &Path, dest: &Path, src: &Path) -> anyhow::Result<f64> {
    let pair = ContentPair::new(nodes, src).await?;
    std::fs::create_dir_all(dest)?;
    let conduit = crate::f3::replicate_to(&pair, dest).await?;
    settle();
    let t = Instant::now();
    let report = pair.b.conduits.run(pair.lib, conduit).await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(report.outcome == "done", "{id} cycle: {report:?}");
    pair.shutdown().await;
    assert_same(src, dest, &[".concord"])?;
    done_with(dest, crate::files::list(dest, &[".concord"])?.len())?;
    Ok(secs)
}
