//! B4: backfilling a large library to a newly joined device over real Iroh.
//!
//! The owner (node A, in this process) holds a library with `files` file entries
//! (1,000 folders and the rest files grouped by folder, ids in walk order,
//! written with one `commit_bulk`) and `tags`
//! tags (`commit_batch`, 1,000 per batch). Its sync service runs alone first, so
//! it prunes its log (every registered device has everything) and a joiner must
//! take a snapshot. The joiner runs in a child process (this binary re-executed
//! in joiner mode) so its peak RSS (`VmHWM`) is its own: it pairs with A, then
//! `LibrarySetup::join_library` is timed. Afterwards this process opens the joiner's
//! library and compares full digests.
//!
//! Baseline, same run: bytes per second of one plain Iroh stream on 127.0.0.1
//! (endpoints built like the node's).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use concord::datadir::DataDir;
use concord::digest::Scope;
use concord::Uuid;
use serde::{Deserialize, Serialize};

use crate::common::progress;
use crate::common::{timed, Scale};
use crate::fixture;
use crate::net::{self, BareIroh};
use crate::report::Row;

/// First argument that switches the binary into joiner mode.
pub const JOINER_ARG: &str = "__b4-joiner";

/// What the joiner process reports (one JSON line on its stdout).
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinerReport {
    pub join_s: f64,
    pub peak_rss_mb: f64,
    pub received: u64,
    pub sent: u64,
    pub requests: u64,
    pub frames: Vec<(String, u64, u64, u64)>,
}

/// Run B4 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(50_000, 1_000_000);
    let tags = scale.pick(1_000, 10_000);
    let stream_bytes = scale.pick(64, 256) as u64 * 1024 * 1024;
    let rt = net::runtime()?;
    let tmp = tempfile::tempdir()?;
    let joiner_dir = tmp.path().join("joiner");
    let (report, lib_id, owner_digest, base_rate) = rt.block_on(async {
        let a = net::start(&tmp.path().join("owner"), net::node_config("owner")).await?;
        let lib_id = a.state.data.create_library("b4")?.id();
        let la = a.state.library(lib_id)?;
        let (_, fill_s) = timed(|| fixture::populate(&la, a.device_id(), files, tags))?;
        progress!("owner: {files} file entries and {tags} tags in {fill_s:.1} s");
        net::prune_alone(&a, &la).await?;
        let ticket = a.pairing.invite(None).encode();
        let exe = std::env::current_exe()?;
        let dir = joiner_dir.clone();
        let report = tokio::task::spawn_blocking(move || spawn_joiner(&exe, &dir, &ticket, lib_id))
            .await??;
        let owner_digest = net::digest_of(&la, Scope::All)?;
        drop(la);
        a.shutdown().await;
        let bare = BareIroh::connect().await?;
        bare.throughput(16 * 1024 * 1024).await?; // warm-up
        let base_rate = bare.throughput(stream_bytes).await?;
        bare.close().await;
        anyhow::Ok((report, lib_id, owner_digest, base_rate))
    })?;

    let joined = DataDir::open(&joiner_dir)?.open_library(lib_id)?;
    let joiner_digest = net::digest_of(&joined, Scope::All)?;
    let stored: i64 =
        joined.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM file_entries", [], |r| r.get(0))?))?;
    drop(joined);
    let same = joiner_digest == owner_digest;
    progress!(
        "joiner: join {:.2} s, peak RSS {:.1} MB, {} requests, received {:.1} MB; {stored} file entries; digests {}",
        report.join_s,
        report.peak_rss_mb,
        report.requests,
        report.received as f64 / 1e6,
        if same { "equal" } else { "DIFFER" }
    );
    for (name, frames, wire, raw) in &report.frames {
        progress!("  joiner sent {name}: {frames} frames, {wire} B wire, {raw} B raw");
    }
    anyhow::ensure!(
        stored as usize == files,
        "joiner holds {stored} file entries"
    );
    let rate = report.received as f64 / report.join_s;
    progress!(
        "backfill {:.1} MB/s on the wire; bare Iroh stream {:.1} MB/s",
        rate / 1e6,
        base_rate / 1e6
    );
    Ok(vec![
        Row::at_most("B4", "backfill_time", report.join_s, "s", 20.0, same),
        Row::at_most(
            "B4",
            "joiner_peak_rss",
            report.peak_rss_mb,
            "MB",
            200.0,
            same,
        ),
        Row::info(
            "B4",
            "backfill_wire_rate",
            rate / 1e6,
            "MB/s",
            "bare_iroh_stream",
            base_rate / 1e6,
        ),
    ])
}

fn spawn_joiner(exe: &Path, dir: &Path, ticket: &str, lib: Uuid) -> anyhow::Result<JoinerReport> {
    let mut child = Command::new(exe)
        .arg(JOINER_ARG)
        .arg(dir)
        .arg(ticket)
        .arg(lib.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut report = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Ok(r) = serde_json::from_str::<JoinerReport>(&line) {
            report = Some(r);
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "joiner exited with {status}");
    report.ok_or_else(|| anyhow::anyhow!("joiner printed no report"))
}

/// Joiner mode: `JOINER_ARG DIR TICKET LIBRARY`. Pairs, joins, prints a report.
pub fn joiner(args: Vec<String>) -> anyhow::Result<()> {
    let [dir, ticket, lib] = args.as_slice() else {
        anyhow::bail!("usage: {JOINER_ARG} DIR TICKET LIBRARY");
    };
    let dir = PathBuf::from(dir);
    let lib: Uuid = lib.parse()?;
    let rt = net::runtime()?;
    let report = rt.block_on(async {
        let node = net::start(&dir, net::node_config("joiner")).await?;
        let owner = node.pairing.join(ticket).await?;
        let t = Instant::now();
        node.setup.join_library(lib, &owner).await?;
        let join_s = t.elapsed().as_secs_f64();
        let (sent, received, requests) = net::traffic(&node);
        let frames = node
            .traffic()
            .by_msg()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.frames, v.wire, v.raw))
            .collect();
        node.shutdown().await;
        anyhow::Ok(JoinerReport {
            join_s,
            peak_rss_mb: 0.0,
            received,
            sent,
            requests,
            frames,
        })
    })?;
    drop(rt);
    let report = JoinerReport {
        peak_rss_mb: crate::common::peak_rss_mb().unwrap_or(0.0),
        ..report
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
