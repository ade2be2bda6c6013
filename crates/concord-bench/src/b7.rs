//! B7: a follower that was offline while the leader took many changes catches up.
//!
//! A (leader) and B (follower) share a library of `tags` tags, synced. B's node
//! is shut down (data kept); A renames tags `changes` times (1,000 renames per
//! `commit_batch`, tag `k % tags` in round `k`). B's node starts again; the time
//! from `Node::start` returning until both version vectors and shared digests
//! are equal is the catch-up time, reported per 100k changes (the node's start,
//! tens of milliseconds, is printed apart: at small scale it would weigh as
//! much as the catch-up itself).
//!
//! Baseline, same run: the follower's raw `apply_remote` rate on the same
//! entries, in 1,000-entry calls (the sync batch size), on a copy of B's library
//! files taken while it was offline (no network, no log fetching).
//!
//! Development aid: `B7_DEBUG=1` prints how far B got over time.

use std::path::Path;
use std::time::{Duration, Instant};

use concord::digest::Scope;
use concord::hlc::SystemClock;
use concord::model::Tag;
use concord::{Change, Library, Uuid};

use crate::common::progress;
use crate::common::{Scale, UuidGen};
use crate::net::{self, Cluster};
use crate::report::Row;

const BATCH: usize = 1_000;

fn tag_ids(tags: usize) -> Vec<Uuid> {
    let mut g = UuidGen::new(0xB7);
    (0..tags).map(|_| g.next_id()).collect()
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        if item.file_type()?.is_file() {
            std::fs::copy(item.path(), to.join(item.file_name()))?;
        }
    }
    Ok(())
}

/// Run B7 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let tags = scale.pick(1_000, 10_000);
    let changes = scale.pick(10_000, 100_000);
    let rt = net::runtime()?;
    let tmp = tempfile::tempdir()?;
    let mut config = net::node_config("b7");
    // Short, so the leader's attempts to reach the absent B end quickly.
    config.request_timeout = Duration::from_secs(1);
    let ids = tag_ids(tags);
    let (secs, entries, b_dev, copy, same) = rt.block_on(async {
        let ids2 = ids.clone();
        let mut c = Cluster::new(tmp.path(), config.clone(), move |lib, _| {
            for (n, chunk) in ids2.chunks(BATCH).enumerate() {
                let batch = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        Change::insert(&Tag {
                            id: *id,
                            name: format!("tag {}", n * BATCH + i),
                            color: None,
                        })
                    })
                    .collect();
                lib.commit_batch(batch)?;
            }
            Ok(())
        })
        .await?;
        c.wait_quiet(Duration::from_millis(500), Duration::from_secs(60))
            .await?;
        c.stop_b().await?;
        let copy = tmp.path().join("b-copy");
        copy_dir(&c.b_dir.join("libraries").join(c.lib_id.to_string()), &copy)?;
        let vv0 = net::version_vector(&c.la)?;
        let t = Instant::now();
        for start in (0..changes).step_by(BATCH) {
            let batch = (start..(start + BATCH).min(changes))
                .map(|k| Change::update::<Tag>(ids[k % tags]).set("name", format!("r{k}")))
                .collect();
            c.la.commit_batch(batch)?;
        }
        c.la.flush()?;
        progress!(
            "leader took {changes} changes in {:.2} s while B was offline",
            t.elapsed().as_secs_f64()
        );
        let entries = c.la.with_log(|l| l.fetch_missing(&vv0, usize::MAX))?;
        anyhow::ensure!(entries.len() == changes, "{} new entries", entries.len());
        // Let A's attempts to notify the absent B run out (one at a time, each
        // up to `request_timeout`; the commits above coalesce into two): a
        // notification still in flight when B returns is not part of healing.
        tokio::time::sleep(config.request_timeout * 3).await;

        // Timed from the moment B's node is up (its sync service starts inside
        // `Node::start`, so catching up may begin a little earlier).
        let t0 = Instant::now();
        c.start_b().await?;
        let start_s = t0.elapsed().as_secs_f64();
        let t = Instant::now();
        if std::env::var_os("B7_DEBUG").is_some() {
            let a_dev = c.a.device_id();
            let mut last = u64::MAX;
            while !c.converged()? {
                let got = net::version_vector(&*c.lb()?)?
                    .get(&a_dev)
                    .copied()
                    .unwrap_or(0);
                if got != last {
                    eprintln!(
                        "{:>8.3} s: B holds A up to {got}; B requests {}",
                        t.elapsed().as_secs_f64(),
                        net::traffic(c.b()?).2
                    );
                    last = got;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        c.wait_converged(Duration::from_secs(300)).await?;
        let secs = t.elapsed().as_secs_f64();
        let b = c.b()?;
        let (sb, rxb, rb) = net::traffic(b);
        progress!(
            "B's node started in {start_s:.3} s, then caught up in {secs:.3} s: \
             {rb} requests, sent {sb} B, received {rxb} B"
        );
        for (name, t) in net::frames_since(b, &Default::default()) {
            progress!("  B sent {name}: {} frames, {} B wire", t.frames, t.wire);
        }
        let lb = c.lb()?;
        let same = net::digest_of(&c.la, Scope::All)? == net::digest_of(&lb, Scope::All)?;
        drop(lb);
        let b_dev = c.b_device;
        c.shutdown().await;
        anyhow::Ok((secs, entries, b_dev, copy, same))
    })?;

    // Baseline: raw apply_remote on a copy of the offline follower.
    let lib = Library::open(&copy, b_dev, Box::new(SystemClock))?;
    let mut entries = entries;
    for e in &mut entries {
        e.lib_seq = None;
        e.epoch = None;
    }
    let t = Instant::now();
    let mut applied = 0;
    for chunk in entries.chunks(BATCH) {
        applied += lib.apply_remote(chunk)?.applied;
    }
    let apply_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(applied == changes, "baseline applied {applied}");
    drop(lib);
    let base_rate = changes as f64 / apply_s;
    let rate = changes as f64 / secs;
    let per_100k = secs * 100_000.0 / changes as f64;
    progress!(
        "catch-up {rate:.0} changes/s ({per_100k:.3} s per 100k); raw apply_remote {base_rate:.0} changes/s; digests {}",
        if same { "equal" } else { "DIFFER" }
    );
    Ok(vec![
        Row::at_most("B7", "catch_up_per_100k", per_100k, "s", 1.0, same),
        Row::info(
            "B7",
            "catch_up_rate",
            rate,
            "changes/s",
            "apply_remote_in_process",
            base_rate,
        ),
    ])
}
