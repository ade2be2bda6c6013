//! B5: healing a partition between two devices that hold the same large library.
//!
//! A and B hold the same library (`files` file entries from one `commit_bulk`,
//! 1,000 tags), synced (B joined by snapshot). B goes offline (its node is shut
//! down, its data kept). Each side renames 500 tags while apart (single commits;
//! the tags each side picks come from SplitMix64 shuffles, seeds 0xB5A and
//! 0xB5B, so some renames conflict). B's node starts again and the sync traffic
//! until both are converged and quiet is counted on both nodes: requests (each
//! one round trip), and bytes sent beyond the encoded change entries themselves.
//!
//! The heal starts once the leader has given up notifying the absent B (its
//! attempts run one at a time, each bounded by `request_timeout`, here 1 s).
//!
//! Bytes are counted before compression (`raw`, the postcard encoding of every
//! envelope sent) so that "control bytes" = raw bytes − the postcard size of the
//! 1,000 change entries as committed (before the leader gives them a library
//! sequence number and epoch: those travel as control bytes); bytes on the wire
//! (framed, zstd above 4 KiB) are shown too. Negentropy-style set reconciliation is quoted at about 4 round trips and
//! 0.6 MB for this case (PERFORMANCE.md); it is not run here.

use std::time::{Duration, Instant};

use concord::digest::Scope;
use concord::model::Tag;
use concord::sync::entry::LogEntry;
use concord::sync::log::VersionVector;
use concord::{Change, Library, Uuid};

use crate::common::progress;
use crate::common::{Scale, SplitMix64};
use crate::net::{self, Cluster};
use crate::report::Row;

const TAGS: usize = 1_000;
const CHANGES: usize = 500;

fn picks(seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..TAGS).collect();
    SplitMix64::new(seed).shuffle(&mut v);
    v.truncate(CHANGES);
    v
}

fn rename(lib: &Library, ids: &[Uuid], picks: &[usize], prefix: &str) -> anyhow::Result<()> {
    for &i in picks {
        lib.commit(Change::update::<Tag>(ids[i]).set("name", format!("{prefix}-{i}")))?;
    }
    lib.flush()?;
    Ok(())
}

/// The entries of `origin` that `lib` holds beyond `before`.
fn new_entries(
    lib: &Library,
    before: &VersionVector,
    origin: Uuid,
) -> anyhow::Result<Vec<LogEntry>> {
    let all = lib.with_log(|l| l.fetch_missing(before, usize::MAX))?;
    Ok(all.into_iter().filter(|e| e.origin == origin).collect())
}

fn encoded(entries: &[LogEntry]) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in entries {
        n += postcard::to_allocvec(e)?.len() as u64;
    }
    Ok(n)
}

/// Run B5 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(50_000, 1_000_000);
    let rt = net::runtime()?;
    let tmp = tempfile::tempdir()?;
    let mut config = net::node_config("b5");
    // Short, so the leader's attempts to reach the absent B end quickly.
    config.request_timeout = Duration::from_secs(1);
    rt.block_on(async {
        let t = Instant::now();
        let mut c = Cluster::new(tmp.path(), config.clone(), |lib, dev| {
            crate::fixture::populate(lib, dev, files, TAGS)
        })
        .await?;
        progress!(
            "{files} file entries, {TAGS} tags on both devices in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        c.wait_quiet(Duration::from_millis(500), Duration::from_secs(60))
            .await?;
        let ids = crate::fixture::tag_ids(TAGS);
        let a_dev = c.a.device_id();
        let b_dev = c.b_device;

        // Partition.
        c.stop_b().await?;
        let vv_a = net::version_vector(&c.la)?;
        rename(&c.la, &ids, &picks(0xB5A), "a")?;
        let a_new = new_entries(&c.la, &vv_a, a_dev)?;
        let offline = c.open_b_offline()?;
        let vv_b = net::version_vector(&offline)?;
        rename(&offline, &ids, &picks(0xB5B), "b")?;
        let b_new = new_entries(&offline, &vv_b, b_dev)?;
        drop(offline);
        anyhow::ensure!(
            a_new.len() == CHANGES && b_new.len() == CHANGES,
            "expected {CHANGES} new entries per side, found {} and {}",
            a_new.len(),
            b_new.len()
        );
        let change_bytes = encoded(&a_new)? + encoded(&b_new)?;
        // Let A's attempts to notify the absent B run out (one at a time, each
        // up to `request_timeout`; the commits above coalesce into two): a
        // notification still in flight when B returns is not part of healing.
        tokio::time::sleep(config.request_timeout * 3).await;

        // Heal.
        let a_before = c.a.traffic().by_msg();
        let (sa0, _, ra0) = net::traffic(&c.a);
        let t = Instant::now();
        c.start_b().await?;
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        c.wait_converged(Duration::from_secs(120)).await?;
        let heal = t.elapsed();
        c.wait_quiet(Duration::from_millis(1_000), Duration::from_secs(60))
            .await?;
        let b = c.b()?;
        let (sa, _, ra) = net::traffic(&c.a);
        let (sb, _, rb) = net::traffic(b);
        let requests = (ra - ra0) + rb;
        let wire = (sa - sa0) + sb;
        let fa = net::frames_since(&c.a, &a_before);
        let fb = net::frames_since(b, &Default::default());
        let raw: u64 = fa.iter().chain(fb.iter()).map(|(_, t)| t.raw).sum();
        for (who, frames) in [("A", &fa), ("B", &fb)] {
            for (name, t) in frames.iter() {
                progress!(
                    "  {who} sent {name}: {} frames, {} B raw, {} B wire",
                    t.frames,
                    t.raw,
                    t.wire
                );
            }
        }
        let lb = c.lb()?;
        let got = new_entries(&lb, &vv_b, a_dev)?;
        progress!(
            "B took {} entries of A ({} B encoded); A's changes: {} entries ({} B)",
            got.len(),
            encoded(&got)?,
            a_new.len(),
            encoded(&a_new)?
        );
        let same = net::digest_of(&c.la, Scope::All)? == net::digest_of(&lb, Scope::All)?;
        drop(lb);
        let control = raw as f64 - change_bytes as f64;
        progress!(
            "healed in {:.1} ms (B's node start {start_ms:.1} ms included): {requests} requests, \
             {raw} B raw / {wire} B on the wire, changes {change_bytes} B, control {control:.0} B; \
             full digests {}",
            heal.as_secs_f64() * 1e3,
            if same { "equal" } else { "DIFFER" }
        );
        c.shutdown().await;
        Ok(vec![
            Row::at_most("B5", "round_trips", requests as f64, "requests", 2.0, same),
            Row::at_most("B5", "control_bytes", control, "bytes", 4096.0, same),
            Row::info(
                "B5",
                "round_trips",
                requests as f64,
                "requests",
                "negentropy_quoted",
                4.0,
            ),
            Row::info(
                "B5",
                "control_bytes",
                control,
                "bytes",
                "negentropy_quoted",
                600_000.0,
            ),
            Row::info(
                "B5",
                "heal_time",
                heal.as_secs_f64() * 1e3,
                "ms",
                "none",
                0.0,
            ),
        ])
    })
}
