//! F4: a receiver cut halfway through a large file, then resumed.
//!
//! One file of 1 GiB (small scale: 64 MiB) of seeded bytes, served by A and
//! fetched by B with the transfer engine a conduit cycle uses (driven
//! directly).
//! Once B has received more than half, the receiving task is dropped and
//! B's connection closed (in process: what is left is what a `kill -9`
//! leaves, the verified part and its checkpoint); a new fetch on a new
//! connection resumes. The figure is every byte A sent, over the file size.

use std::sync::Arc;
use std::time::Duration;

use concord_node::transfer::TransferProgress;

use crate::common::{progress, Scale};
use crate::content::ContentPair;
use crate::files::{assert_same, temp, write_seeded};
use crate::net::{runtime, wait_until};
use crate::report::Row;

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let mib = scale.pick(64, 1024) as u64;
    let size = mib << 20;
    let work = temp("concord-f4-")?;
    let src = work.path().join("src");
    let dest = work.path().join("dest");
    write_seeded(&src.join("big.bin"), size, 0xF4)?;
    std::fs::create_dir_all(&dest)?;
    let rt = runtime()?;
    let (sent, again) = rt.block_on(async {
        let pair = ContentPair::new(&work.path().join("nodes"), &src).await?;
        let scanned = pair.scan_source().await?;
        progress!("F4 source scanned; fetching");
        let request = pair.requests(&scanned, &dest).remove(0);
        let first = Arc::new(TransferProgress::default());
        let task = {
            let (fetcher, peer, req, first) = (
                pair.b.fetcher.clone(),
                pair.peer()?,
                request.clone(),
                first.clone(),
            );
            tokio::spawn(async move { fetcher.fetch(&peer, req, &first).await })
        };
        wait_until(
            "half of the file",
            Duration::from_secs(1800),
            Duration::from_millis(1),
            || Ok(first.snapshot().bytes_received > size / 2 || task.is_finished()),
        )
        .await?;
        if task.is_finished() {
            task.await??;
            anyhow::bail!("the fetch ended before half of the file");
        }
        task.abort();
        progress!(
            "F4 receiver dropped at {} bytes",
            first.snapshot().bytes_received
        );
        anyhow::ensure!(
            task.await.is_err_and(|e| e.is_cancelled()),
            "the fetch ended first"
        );
        anyhow::ensure!(
            !dest.join("big.bin").exists(),
            "an unfinished file got its name"
        );
        pair.disconnect().await?;
        let second = TransferProgress::default();
        pair.b
            .fetcher
            .fetch(&pair.peer()?, request, &second)
            .await?;
        let sent = pair.a.content.progress().snapshot().bytes_sent;
        let again = second.snapshot().bytes_received;
        pair.shutdown().await;
        anyhow::Ok((sent, again))
    })?;
    assert_same(&src, &dest, &[".concord"])?;
    progress!("F4: {sent} bytes sent in all, {again} after the resume, file {size}");
    let metric = format!("bytes sent / size, {mib} MiB cut halfway");
    Ok(vec![
        Row::at_most("F4", &metric, sent as f64 / size as f64, "x", 1.1, true),
        Row::info(
            "F4",
            "bytes received after the resume",
            again as f64,
            "B",
            "file size",
            size as f64,
        ),
    ])
}
