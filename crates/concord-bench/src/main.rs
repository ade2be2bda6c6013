//! The Concord benchmark harness (PERFORMANCE.md):
//!
//!     cargo run --release -p concord-bench -- [WORKLOAD...] [--scale small|full] [--json]
//!         [--durability normal|full]
//!
//! No workload named runs every implemented one. Results go to stdout (a table,
//! or one JSON object per line with `--json`); progress goes to stderr.

mod b1;
mod b2;
mod b3;
mod b3r;
mod b4;
mod b5;
mod b6;
mod b7;
mod b8;
mod common;
mod content;
mod f1;
mod f2;
mod f3;
mod f4;
mod f5;
mod f6;
mod f7;
mod files;
mod fixture;
mod net;
mod p1;
mod replicate;
mod report;
mod runner;
mod s1;
mod syncthing;
mod tools;

use common::Scale;
use report::Row;

type Workload = fn(Scale) -> anyhow::Result<Vec<Row>>;

const WORKLOADS: &[(&str, &str, Workload)] = &[
    (
        "B1",
        "single commits and 1k batches vs plain rusqlite",
        b1::run,
    ),
    ("B2", "applying a peer's renames (LWW merge)", b2::run),
    ("B3", "commit-to-event latency between two nodes", b3::run),
    (
        "B3R",
        "B3 through a relay beside direct, on namespace networks (root)",
        b3r::run,
    ),
    ("B4", "backfilling a large library to a new device", b4::run),
    ("B5", "healing a partition: round trips and bytes", b5::run),
    ("B6", "indexing a file tree with commit_bulk", b6::run),
    ("B7", "an offline follower catching up", b7::run),
    (
        "B8",
        "a killed leader: a follower's change reaching every member",
        b8::run,
    ),
    (
        "F1",
        "replicating 8 large files between two nodes vs bare Iroh, rsync, Syncthing",
        f1::run,
    ),
    (
        "F1R",
        "F1's files through the conduit runner vs the engine direct",
        runner::run_f1r,
    ),
    (
        "F2",
        "replicating 20,000 small files vs rsync (--fsync), Syncthing",
        f2::run,
    ),
    (
        "F2R",
        "F2's files through the conduit runner vs the engine direct",
        runner::run_f2r,
    ),
    (
        "F3",
        "a rename and a folder move at the source through a conduit: bytes sent, time",
        f3::run,
    ),
    (
        "F4",
        "a receiver cut halfway through a large file, resumed: bytes sent",
        f4::run,
    ),
    (
        "F5",
        "a conduit cycle with nothing changed vs a stat walk",
        f5::run,
    ),
    (
        "F6",
        "hashing a file for a transfer vs BLAKE3 with rayon",
        f6::run,
    ),
    (
        "F7",
        "an Offload conduit moving large files off and back vs F1's rate",
        f7::run,
    ),
    (
        "P1",
        "pulling another device's location (remote browsing)",
        p1::run,
    ),
    (
        "S1",
        "verifying received entries (sealed chunks) vs unverified apply_remote",
        s1::run,
    ),
];

fn usage() -> String {
    let mut s = String::from(
        "usage: concord-bench [WORKLOAD...] [--scale small|full] [--json] \
         [--durability normal|full]\n\nworkloads:\n",
    );
    for (id, what, _) in WORKLOADS {
        s.push_str(&format!("  {id}  {what}\n"));
    }
    s
}

fn main() -> anyhow::Result<()> {
    // B4 runs its joiner as a child process (this binary, re-executed).
    if std::env::args().nth(1).as_deref() == Some(b4::JOINER_ARG) {
        return b4::joiner(std::env::args().skip(2).collect());
    }
    let mut scale = Scale::Full;
    let mut json = false;
    let mut chosen: Vec<&(&str, &str, Workload)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--scale" => {
                scale = match args.next().as_deref() {
                    Some("small") => Scale::Small,
                    Some("full") => Scale::Full,
                    other => anyhow::bail!("--scale takes small or full, not {other:?}"),
                }
            }
            // What B1 measures: the default, or every commit synced.
            "--durability" => match args.next().as_deref() {
                Some("normal") => b1::set_durability(concord::sync::txn::Durability::Normal),
                Some("full") => b1::set_durability(concord::sync::txn::Durability::Full),
                other => anyhow::bail!("--durability takes normal or full, not {other:?}"),
            },
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(());
            }
            name => {
                let workload = WORKLOADS
                    .iter()
                    .find(|(id, _, _)| id.eq_ignore_ascii_case(name))
                    .ok_or_else(|| anyhow::anyhow!("unknown workload {name:?}\n{}", usage()))?;
                if !chosen.iter().any(|c| c.0 == workload.0) {
                    chosen.push(workload);
                }
            }
        }
    }
    if chosen.is_empty() {
        chosen = WORKLOADS.iter().collect();
    }
    let mut all = Vec::new();
    for (id, what, run) in chosen {
        eprintln!("{id} ({what}), scale {}", scale.name());
        let t = std::time::Instant::now();
        let rows = run(scale)?;
        eprintln!("{id} done in {:.1} s", t.elapsed().as_secs_f64());
        if json {
            report::print_json(&rows);
        }
        all.extend(rows);
    }
    if !json {
        report::print_table(&all);
    }
    Ok(())
}
