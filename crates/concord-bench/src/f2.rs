//! F2: replicating many small files between two nodes on loopback.
//!
//! 20,000 files of 1–16 KiB in 200 folders (small scale: 2,000 in 20), seeded
//! sizes and bytes. Concord's side is F1's (the transfer engine a conduit
//! cycle uses, driven directly: list the source, fetch every file verified,
//! each fsynced and renamed into place, each folder fsynced once). Baselines in the same
//! run: `rsync -a --fsync` (durable, as we are), `rsync -a`, Syncthing.

use crate::common::Scale;
use crate::files::{small_tree, temp};
use crate::replicate::{self, Extra};
use crate::report::Row;

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(2_000, 20_000);
    let folders = files / 100;
    let work = temp("concord-f2-")?;
    let src = work.path().join("src");
    let bytes = small_tree(&src, files, folders, (1024, 16 * 1024), 0xF2)?;
    let t = replicate::run(
        "F2",
        &src,
        files,
        bytes,
        Extra {
            bare_iroh: false,
            rsync_fsync: true,
        },
    )?;
    let rate = |secs: f64| files as f64 / secs;
    let ours = rate(t.concord);
    let metric = format!("replicate {files} files of 1-16 KiB, rate");
    let mut rows = Vec::new();
    if let Some(r) = t.rsync_fsync.map(rate) {
        rows.push(Row::at_least(
            "F2",
            &metric,
            ours,
            "files/s",
            "rsync -a --fsync",
            r,
            1.0,
        ));
    }
    if let Some(r) = t.rsync.map(rate) {
        rows.push(Row::info("F2", &metric, ours, "files/s", "rsync -a", r));
    }
    if let Some(s) = t.syncthing.map(rate) {
        rows.push(Row::at_least(
            "F2",
            &metric,
            ours,
            "files/s",
            "Syncthing (loopback)",
            s,
            3.0,
        ));
    }
    Ok(rows)
}
