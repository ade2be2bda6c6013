//! B3: change propagation latency between two real nodes on 127.0.0.1.
//!
//! Node A creates a library (and is its leader), node B pairs and joins it. Then
//! A commits one tag every 5 ms (an absolute schedule, from a plain thread); a
//! plain thread on B blocks on B's `Library` events and, on each remote event
//! that touched tags, notes the time and how many tags B now holds. Latency of
//! commit `k` = arrival of the first event after which B holds tag `k`, minus
//! the moment A's `commit` returned.
//!
//! Baseline, same process: a bare Iroh request/response (a fresh bidirectional
//! stream on an open connection, as the sync transport makes them) between two
//! endpoints built like the node's, with a message of the size of a
//! `NewEntries` envelope, the same count and spacing.
//!
//! Sync settings are the production defaults (heartbeat 30 s): only the push
//! path moves the changes.
//!
//! Development aid: `B3_DEBUG=1` prints every commit slower than 3 ms.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::model::Syncable;
use concord::model::Tag;
use concord::sync::txn::Source;
use concord::{Change, Library};

use crate::common::progress;
use crate::common::{Scale, UuidGen};
use crate::net::{self, BareIroh};
use crate::report::Row;

const GAP: Duration = Duration::from_millis(5);
const WARMUP: usize = 20;

fn tag(ids: &mut UuidGen, i: usize) -> Tag {
    Tag {
        id: ids.next_id(),
        name: format!("b3 tag {i}"),
        color: None,
    }
}

/// Commit `WARMUP + n` tags on `la` 5 ms apart (absolute schedule) and
/// return the latency in ms of each of the last `n` to `lb` (a library of
/// another node that syncs with it), unsorted. Blocks: call it from a plain
/// thread or `spawn_blocking`.
pub fn measure(la: Arc<Library>, lb: Arc<Library>, n: usize) -> anyhow::Result<Vec<f64>> {
    // Observer on B: (arrival, tags held) per remote event touching tags.
    let total = WARMUP + n;
    let mut events = lb.subscribe();
    let lb2 = lb.clone();
    let (obs_tx, obs_rx) = mpsc::channel::<(Instant, usize)>();
    let observer = std::thread::spawn(move || -> anyhow::Result<()> {
        loop {
            let ev = match events.blocking_recv() {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    anyhow::bail!("observer lagged by {k} events")
                }
                Err(_) => return Ok(()),
            };
            let at = Instant::now();
            if ev.source != Source::Remote || !ev.models.contains(&Tag::INFO.name) {
                continue;
            }
            let held: i64 =
                lb2.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM tags", [], |r| r.get(0))?))?;
            let held = held as usize;
            if obs_tx.send((at, held)).is_err() || held >= total {
                return Ok(());
            }
        }
    });

    // Driver on A: commits on an absolute 5 ms schedule.
    let la2 = la.clone();
    let driver = std::thread::spawn(move || -> anyhow::Result<Vec<Instant>> {
        let mut ids = UuidGen::new(0xB3);
        let mut done = Vec::with_capacity(total);
        let start = Instant::now();
        for i in 0..total {
            la2.commit(Change::insert(&tag(&mut ids, i)))?;
            done.push(Instant::now());
            let next = start + GAP * (i as u32 + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(done)
    });
    let committed = driver
        .join()
        .map_err(|_| anyhow::anyhow!("driver panicked"))??;
    let arrivals = (move || -> anyhow::Result<Vec<(Instant, usize)>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.last().is_none_or(|(_, h)| *h < total) {
            let left = deadline.saturating_duration_since(Instant::now());
            match obs_rx.recv_timeout(left) {
                Ok(x) => out.push(x),
                Err(_) => anyhow::bail!(
                    "B received {} of {total} tags",
                    out.last().map_or(0, |(_, h)| *h)
                ),
            }
        }
        Ok(out)
    })()?;
    observer
        .join()
        .map_err(|_| anyhow::anyhow!("observer panicked"))??;

    // Latency of each measured commit (warm-up ones left out).
    let mut lat = Vec::with_capacity(n);
    let mut ev = arrivals.iter();
    let mut cur = ev.next();
    for (k, done) in committed.iter().enumerate() {
        while let Some((_, held)) = cur {
            if *held > k {
                break;
            }
            cur = ev.next();
        }
        let (at, _) = cur.ok_or_else(|| anyhow::anyhow!("no arrival for tag {k}"))?;
        if k >= WARMUP {
            let ms = at.saturating_duration_since(*done).as_secs_f64() * 1e3;
            if std::env::var_os("B3_DEBUG").is_some() && ms > 3.0 {
                eprintln!("slow {k}: {ms:.2} ms");
            }
            lat.push(ms);
        }
    }
    Ok(lat)
}

/// Run B3 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let n = scale.pick(200, 1_000);
    let rt = net::runtime()?;
    let tmp = tempfile::tempdir()?;
    let (lat, stats) = rt.block_on(async {
        let a = net::start(&tmp.path().join("a"), net::node_config("alpha")).await?;
        let b = net::start(&tmp.path().join("b"), net::node_config("beta")).await?;
        net::pair(&a, &b).await?;
        let lib_id = a.state.data.create_library("b3")?.id();
        a.host.start(lib_id)?;
        let pa = b.state.resolve_peer(&a.device_id().to_string())?;
        b.setup.join_library(lib_id, &pa).await?;
        let la = a.state.library(lib_id)?;
        let lb = b.state.library(lib_id)?;

        let (la2, lb2) = (la.clone(), lb.clone());
        let mut lat = tokio::task::spawn_blocking(move || measure(la2, lb2, n)).await??;
        lat.sort_by(f64::total_cmp);
        let (sa, _, ra) = net::traffic(&a);
        let (sb, _, rb) = net::traffic(&b);
        progress!("sync traffic: A sent {sa} B in {ra} requests, B sent {sb} B in {rb} requests");
        for (name, t) in a.traffic().by_msg() {
            progress!("  A {name}: {} frames, {} B", t.frames, t.wire);
        }
        for (name, t) in b.traffic().by_msg() {
            progress!("  B {name}: {} frames, {} B", t.frames, t.wire);
        }
        drop((la, lb));
        a.shutdown().await;
        b.shutdown().await;

        // Baseline: bare Iroh round trips of a NewEntries-sized message.
        let bare = BareIroh::connect().await?;
        let stats = bare.round_trips(n, GAP, &[7u8; 80]).await?;
        bare.close().await;
        anyhow::Ok((lat, stats))
    })?;
    let p50 = net::percentile(&lat, 50.0);
    let p99 = net::percentile(&lat, 99.0);
    let max = lat.last().copied().unwrap_or(0.0);
    let b50 = net::percentile(&stats, 50.0);
    let b99 = net::percentile(&stats, 99.0);
    progress!(
        "commit on A -> event on B: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms; \
         bare Iroh round trip p50 {b50:.3} ms, p99 {b99:.3} ms"
    );
    Ok(vec![
        Row::at_most("B3", "latency_p50", p50, "ms", 5.0, true),
        Row::at_most("B3", "latency_p99", p99, "ms", 25.0, true),
        Row::info("B3", "latency_p50", p50, "ms", "bare_iroh_rtt_p50", b50),
        Row::info("B3", "latency_p99", p99, "ms", "bare_iroh_rtt_p99", b99),
    ])
}
