//! P1: remote browsing throughput (issue 6 / DESIGN §7): another device's
//! location pulled over real Iroh on 127.0.0.1, in full and then incrementally.
//!
//! A holds a location of `files` bulk-written file entries (B4's population);
//! B joins the library and pulls the location from scratch (`pull_location`
//! with no cached position: every row travels), then A changes 50 entries and B
//! refreshes: only the changed rows may travel.
//!
//! Baseline, same run: bytes per second of one plain Iroh stream on 127.0.0.1.

use std::time::Instant;

use concord::model::FileEntry;
use concord::{Change, Uuid};

use crate::common::Scale;
use crate::net::{self, BareIroh, Cluster};
use crate::report::Row;

/// Run P1 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(50_000, 1_000_000);
    let rt = net::runtime()?;
    let tmp = tempfile::tempdir()?;
    let config = net::node_config("p1");
    rt.block_on(async {
        let raw = {
            let bare = BareIroh::connect().await?;
            let bps = bare.throughput(256 << 20).await?;
            bare.close().await;
            bps
        };
        let c = Cluster::new(tmp.path(), config, |lib, dev| {
            crate::fixture::populate(lib, dev, files, 10)
        })
        .await?;
        let lb = c.lb()?;
        let location: Uuid =
            c.la.read(|x| Ok(x.query_row("SELECT uuid FROM locations", [], |r| r.get(0))?))?;
        let svc = c
            .b()?
            .host
            .service(c.lib_id)
            .ok_or_else(|| anyhow::anyhow!("B has no sync service"))?;
        // Full pull: B has no position yet, so every row of the location travels.
        let (_, rx0, _) = net::traffic(c.b()?);
        let t = Instant::now();
        let full = svc.pull_location(location).await?;
        let secs = t.elapsed().as_secs_f64();
        let (_, rx1, _) = net::traffic(c.b()?);
        let bytes = rx1.saturating_sub(rx0) as f64;
        anyhow::ensure!(
            full.rows as usize == files,
            "pulled {} of {files} rows",
            full.rows
        );
        // Incremental: 50 entries change on A.
        let ids: Vec<Uuid> = c.la.read(|x| {
            let mut st =
                x.prepare("SELECT uuid FROM file_entries WHERE kind = 0 ORDER BY uuid LIMIT 50")?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<Uuid>, _>>()?;
            Ok(v)
        })?;
        let changes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Change::update::<FileEntry>(*id).set("size", 1_000_000 + i as i64))
            .collect();
        c.la.commit_batch(changes)?;
        let t = Instant::now();
        let inc = svc.pull_location(location).await?;
        let inc_secs = t.elapsed().as_secs_f64();
        drop(lb);
        c.shutdown().await;
        Ok(vec![
            Row::info(
                "P1",
                "pull_rows_per_s",
                files as f64 / secs,
                "rows/s",
                "none",
                0.0,
            ),
            Row::info(
                "P1",
                "pull_bytes_per_s",
                bytes / secs,
                "B/s",
                "bare_iroh_stream",
                raw,
            ),
            Row::at_most(
                "P1",
                "incremental_rows_for_50_changes",
                inc.rows as f64,
                "rows",
                50.0,
                true,
            ),
            Row::info(
                "P1",
                "incremental_pull_s",
                inc_secs,
                "s",
                "full_pull_s",
                secs,
            ),
        ])
    })
}
