//! F3: a rename and a folder move at the source, carried by a conduit.
//!
//! A holds a 1 GiB file (small scale: 64 MiB) and a folder of 1,000 small
//! files (small: 100); B runs a Replicate conduit (`--delete`) from A's location to one
//! of its own, through the node's real conduit runner (`ConduitRunner::run`:
//! B lists A over `concord/content/1`, plans, fetches, moves). After a first
//! cycle copied everything, A renames the large file and moves the folder
//! into another; the next cycle must move them on B instead of sending them
//! again. Figures: the file content A sent for that cycle (limit 1 MB) and
//! the time from the change on disk to the cycle's end with both on B at
//! their new paths (limit 2 s). Cycles are run right after the change until
//! B matches (at most 3; the count is in the metric), so the time is theirs
//! (listing A, whose scan hashes the renamed files again, as their paths are
//! new to it; planning; the moves).

use std::path::Path;
use std::time::{Duration, Instant};

use concord::model::Conduit;
use concord::{index, query, Change, Uuid};

use crate::common::{progress, Scale};
use crate::content::ContentPair;
use crate::files::{assert_same, small_tree, temp, write_seeded};
use crate::net::{runtime, wait_until};
use crate::report::Row;

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let (mib, files) = (scale.pick(64, 1024) as u64, scale.pick(100, 1000));
    let work = temp("concord-f3-")?;
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    write_seeded(&src.join("big.bin"), mib << 20, 0xF3)?;
    small_tree(&src.join("docs"), files, 1, (512, 2048), 0xF3)?;
    std::fs::create_dir_all(&dst)?;
    let rt = runtime()?;
    let (sent, secs, cycles) = rt.block_on(async {
        let pair = ContentPair::new(&work.path().join("nodes"), &src).await?;
        let conduit = replicate_to(&pair, &dst).await?;
        let report = pair.b.conduits.run(pair.lib, conduit).await?;
        anyhow::ensure!(report.outcome == "done", "first cycle: {report:?}");
        assert_same(&src, &dst, &[".concord"])?;
        progress!("F3 first cycle copied {} bytes", report.bytes);

        let before = pair.a.content.sent_from(pair.location);
        let t = Instant::now();
        std::fs::rename(src.join("big.bin"), src.join("big-renamed.bin"))?;
        std::fs::create_dir_all(src.join("archive"))?;
        std::fs::rename(src.join("docs"), src.join("archive/docs"))?;
        // Cycles until B holds both at their new paths (at most 3).
        let moved = || dst.join("big-renamed.bin").is_file() && !dst.join("big.bin").exists();
        let mut cycles = 0;
        while cycles < 3 && !moved() {
            let report = pair.b.conduits.run(pair.lib, conduit).await?;
            cycles += 1;
            anyhow::ensure!(
                report.outcome == "done",
                "cycle after the change: {report:?}"
            );
            progress!(
                "F3 cycle {cycles} after the change: {} actions, {} bytes copied, failed {:?}",
                report.actions,
                report.bytes,
                report.failed
            );
        }
        let secs = t.elapsed().as_secs_f64();
        let sent = pair.a.content.sent_from(pair.location) - before;
        anyhow::ensure!(moved(), "the file was not moved on B");
        anyhow::ensure!(dst.join("archive/docs").is_dir() && !dst.join("docs").exists());
        assert_same(&src, &dst, &[".concord"])?;
        progress!("F3 rename and move: {sent} bytes sent, {secs:.2} s, {cycles} cycles");
        pair.shutdown().await;
        anyhow::Ok((sent, secs, cycles))
    })?;
    let metric = format!("rename a {mib} MiB file and move a folder of {files} files");
    Ok(vec![
        Row::at_most(
            "F3",
            &format!("{metric}: content sent"),
            sent as f64,
            "bytes",
            1e6,
            true,
        ),
        Row::at_most(
            "F3",
            &format!("{metric}: change to done on the destination ({cycles} cycles)"),
            secs,
            "s",
            2.0,
            true,
        ),
    ])
}

/// B adds `dst` as a location of its own and creates a manual Replicate
/// conduit with deletes (a rename is a move only when the old name may go)
/// from A's location to it, once B knows A's location (F1R and F2R too).
pub async fn replicate_to(pair: &ContentPair, dst: &Path) -> anyhow::Result<Uuid> {
    let lb = pair.b.state.library(pair.lib)?;
    let (lib, path) = (lb.clone(), dst.to_path_buf());
    let dest = tokio::task::spawn_blocking(move || {
        index::add_location(&lib, &path, &mut |_, _| {}).map(|i| i.location.id)
    })
    .await??;
    let source = pair.location;
    wait_until(
        "B knows A's location",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || Ok(query::location(&lb, source)?.is_some()),
    )
    .await?;
    let c = Conduit {
        id: Uuid::now_v7(),
        source,
        source_dir: String::new(),
        destination: dest,
        destination_dir: String::new(),
        policy: "replicate".into(),
        propagate_deletes: true,
        cadence: "manual".into(),
        min_free: None,
        pin_tag: None,
        paused: None,
        allow_deletes: false,
        last_run: None,
        last_error: None,
    };
    lb.commit(Change::insert(&c))?;
    Ok(c.id)
}
