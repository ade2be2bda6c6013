//! F1: replicating large files between two nodes on loopback.
//!
//! Eight files of 256 MiB (small scale: 16 MiB) of seeded bytes. Concord's
//! figure is the transfer engine a conduit cycle uses for its copies, driven
//! directly (no planning or agreed state around it): B lists the source end
//! (A scans and hashes it as a first cycle's listing does), then fetches
//! every file over real Iroh, verified, from the first connection on.
//! Baselines in the same run: the same bytes through one bare Iroh stream,
//! `rsync -a` to another local folder, and two Syncthing instances on
//! loopback (`syncthing.rs`). The page cache is warm for every side.

use crate::common::Scale;
use crate::files::{large_files, temp};
use crate::replicate::{self, Extra};
use crate::report::Row;

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let (count, mib) = (8, scale.pick(16, 256) as u64);
    let work = temp("concord-f1-")?;
    let src = work.path().join("src");
    let bytes = large_files(&src, count, mib << 20, 0xF1)?;
    let t = replicate::run(
        "F1",
        &src,
        count,
        bytes,
        Extra {
            bare_iroh: true,
            rsync_fsync: false,
        },
    )?;
    let rate = |secs: f64| bytes as f64 / 1e6 / secs;
    let ours = rate(t.concord);
    let metric = format!("replicate {count} x {mib} MiB, rate");
    let bare = t.bare_iroh_rate.map(|r| r / 1e6);
    let rsync = t.rsync.map(rate);
    let mut rows = Vec::new();
    let floor = [bare, rsync].into_iter().flatten().reduce(f64::min);
    if let Some(floor) = floor {
        let name = if Some(floor) == bare {
            "min(bare Iroh, rsync): bare Iroh"
        } else {
            "min(bare Iroh, rsync): rsync -a"
        };
        rows.push(Row::at_least("F1", &metric, ours, "MB/s", name, floor, 0.5));
    }
    if let Some(b) = bare {
        rows.push(Row::info(
            "F1",
            &metric,
            ours,
            "MB/s",
            "bare Iroh stream",
            b,
        ));
    }
    if let Some(r) = rsync {
        rows.push(Row::info(
            "F1",
            &metric,
            ours,
            "MB/s",
            "rsync -a (local)",
            r,
        ));
    }
    if let Some(s) = t.syncthing.map(rate) {
        rows.push(Row::at_least(
            "F1",
            &metric,
            ours,
            "MB/s",
            "Syncthing (loopback)",
            s,
            2.0,
        ));
    }
    Ok(rows)
}
