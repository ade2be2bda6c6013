//! F7: an Offload conduit moving 1 GiB (small scale: 64 MiB) off its
//! source, and the files fetched back, against F1's transfer rate measured
//! in the same run on the same files.
//!
//! Two nodes on 127.0.0.1 (`ContentPair`): A owns the source location, B
//! the destination. First the F1 path: B fetches every file from A with the
//! transfer engine (the rate an offload cannot beat: it moves the same
//! bytes, plus hashing on both sides). Then one Offload cycle on A, driven
//! directly as the runner drives it (`OffloadCycle`), with a threshold above
//! the volume's free space so every file leaves: each file hashed on A,
//! fetched and verified by B through one `Hold` call, hashed again on A,
//! recorded offloaded and removed. Then each file fetched back to its path
//! as `entry fetch` does it, verified; the bytes are compared with the
//! originals. The runner's clock is set an hour and five minutes ahead (a
//! file's change time, just written, cannot be set back).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use concord::conduit::settings::Settings;
use concord::model::{Conduit, FileEntry};
use concord::{index, query, Change, Library, Uuid};
use concord_node::conduits::offload::OffloadLive;
use concord_node::conduits::offload_cycle::{fetch_back_many, OffloadCycle};
use concord_node::transfer::TransferProgress;

use crate::common::{progress, Scale};
use crate::content::{now_ms, ContentPair};
use crate::files::{hash_file, large_files, temp};
use crate::net::runtime;
use crate::report::Row;

/// PERFORMANCE.md (F7): offload and fetch back at ≥ 0.8 of F1's rate.
const TARGET: f64 = 0.8;
/// How far ahead of the wall clock the cycle judges "used within the hour".
const AHEAD_MS: i64 = 65 * 60 * 1000;

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let (count, mib) = (4, scale.pick(16, 256) as u64);
    let work = temp("concord-f7-")?;
    let (src, dst) = (work.path().join("src"), work.path().join("dst"));
    let bytes = large_files(&src, count, mib << 20, 0xF7)?;
    std::fs::create_dir_all(&dst)?;
    let originals = crate::files::list(&src, &[])?
        .into_iter()
        .map(|(rel, path)| Ok((rel, hash_file(&path)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Last used two hours ago (by the wall clock).
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    for (rel, _) in &originals {
        let f = std::fs::File::options().write(true).open(src.join(rel))?;
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(old)
                .set_modified(old),
        )?;
    }
    let rt = runtime()?;
    let (f1, offload, back) = rt.block_on(async {
        let pair = ContentPair::new(&work.path().join("nodes"), &src).await?;
        // F1's path, same run, same files.
        let t = Instant::now();
        let scanned = pair.scan_source().await?;
        let f1_dest = work.path().join("f1");
        pair.fetch_all(&scanned, &f1_dest).await?;
        let f1 = t.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&f1_dest)?;
        progress!("F7 transfer engine (F1's path): {f1:.2} s");
        let cycle = prepare(&pair, &dst).await?;
        let lib = cycle.lib.clone();
        let t = Instant::now();
        let report = cycle.run().await?;
        let offload = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            report.offloaded == count,
            "F7: {} of {count} files offloaded: {report:?}",
            report.offloaded
        );
        progress!("F7 offload: {offload:.2} s");
        let t = Instant::now();
        fetch_all_back(&pair, &lib).await?;
        let back = t.elapsed().as_secs_f64();
        progress!("F7 fetch back: {back:.2} s");
        pair.shutdown().await;
        anyhow::Ok((f1, offload, back))
    })?;
    for (rel, hash) in &originals {
        anyhow::ensure!(
            hash_file(&src.join(rel))? == *hash,
            "F7: {rel} came back different"
        );
    }
    let rate = |secs: f64| bytes as f64 / 1e6 / secs;
    let f1_name = "F1 transfer engine (same run, same files)";
    Ok(vec![
        Row::at_least(
            "F7",
            &format!("offload {count} x {mib} MiB, rate"),
            rate(offload),
            "MB/s",
            f1_name,
            rate(f1),
            TARGET,
        ),
        Row::at_least(
            "F7",
            &format!("fetch back {count} x {mib} MiB, rate"),
            rate(back),
            "MB/s",
            f1_name,
            rate(f1),
            TARGET,
        ),
    ])
}

async fn until(what: &str, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let t = Instant::now();
    while !f()? {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "F7: {what} timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// B's destination location and A's Offload conduit to it, known to both;
/// the cycle as A's runner would build it, its threshold above free space.
async fn prepare(pair: &ContentPair, dst: &std::path::Path) -> anyhow::Result<OffloadCycle> {
    let (la, lb) = (
        pair.a.state.library(pair.lib)?,
        pair.b.state.library(pair.lib)?,
    );
    let (lib_b, path) = (lb.clone(), dst.to_path_buf());
    let dst_loc = tokio::task::spawn_blocking(move || {
        index::add_location(&lib_b, &path, &mut |_, _| {}).map(|i| i.location.id)
    })
    .await??;
    until("A sees B's location", || {
        Ok(query::location(&la, dst_loc)?.is_some())
    })
    .await?;
    let free = concord_node::conduits::offload::space(&pair.src)?.0.free;
    let conduit = Conduit {
        id: Uuid::now_v7(),
        source: pair.location,
        source_dir: String::new(),
        destination: dst_loc,
        destination_dir: String::new(),
        policy: "offload".into(),
        propagate_deletes: false,
        cadence: "manual".into(),
        min_free: Some(free.saturating_mul(2).max(1 << 30).to_string()),
        pin_tag: None,
        paused: None,
        allow_deletes: false,
        last_run: None,
        last_error: None,
    };
    la.commit(Change::insert(&conduit))?;
    until("B sees the conduit", || {
        Ok(query::conduit(&lb, conduit.id)?.is_some())
    })
    .await?;
    Ok(OffloadCycle {
        state: pair.a.state.clone(),
        client: pair.a.fetcher.clone(),
        settings: Settings::from_record(&conduit)?,
        source: query::location(&la, pair.location)?
            .ok_or_else(|| anyhow::anyhow!("F7: the source location is gone"))?,
        destination: query::location(&la, dst_loc)?
            .ok_or_else(|| anyhow::anyhow!("F7: the destination location is gone"))?,
        lib: la,
        conduit,
        live: Arc::new(OffloadLive::default()),
        progress: Arc::new(TransferProgress::default()),
        now_ms: now_ms() + AHEAD_MS,
    })
}

/// Every offloaded entry of A back to its path, several at once, as
/// `entry fetch` brings back a folder.
async fn fetch_all_back(pair: &ContentPair, lib: &Arc<Library>) -> anyhow::Result<()> {
    let entries: Vec<FileEntry> = query::location_entries(lib, pair.location)?
        .into_iter()
        .filter(|e| e.offloaded_to.is_some())
        .collect();
    let peer = pair.a.state.resolve_peer(&pair.b.device_id().to_string())?;
    let progress = Arc::new(TransferProgress::default());
    let files = entries.into_iter().map(|e| (peer.clone(), e)).collect();
    for result in fetch_back_many(&pair.a.fetcher, lib, files, &progress).await {
        result?;
    }
    Ok(())
}
