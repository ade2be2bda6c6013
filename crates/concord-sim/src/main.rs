//! `concord-sim`: run seeds of the deterministic simulation.
//!
//! ```text
//! cargo run --release -p concord-sim -- --seeds 200
//! cargo run --release -p concord-sim -- --seed 42 --seeds 1 --devices 5 --faults all
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use concord_sim::{run, Faults, Options, Report};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of Concord devices syncing a library")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed (seeds run are SEED, SEED+1, ...).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Devices per run (3-7); drawn from the seed when omitted.
    #[arg(long)]
    devices: Option<usize>,
    /// Faults to inject: all, none, a list (drop,dup,delay,partition,crash,clock,leader-kill,prune,rollback,lost-fsync,byzantine)
    /// or all but some (-clock,-prune).
    #[arg(long, default_value = "all", allow_hyphen_values = true)]
    faults: String,
    /// Parallel runs (each seed is single-threaded and deterministic on its own).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Print one line per seed, not only failures.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Stop at the first failure.
    #[arg(long)]
    fail_fast: bool,
    /// Print a progress line (to stderr) every N seeds; 0: never.
    #[arg(long, default_value_t = 0)]
    progress: u64,
}

/// The command that replays one seed exactly (the device count is part of
/// the seed's draw, but naming it keeps the command self-explanatory).
fn replay(r: &Report, faults: &Faults) -> String {
    format!(
        "cargo run --release -p concord-sim -- --seed {} --seeds 1 --devices {} --faults {} -v",
        r.seed,
        r.devices,
        faults.arg()
    )
}

fn line(r: &Report) -> String {
    format!(
        "seed {:>6} devices {} trace {} events {:>6} | commits {:>4} acked {:>4} crashes {} leader-kills {} rollbacks {} lost-fsync {} lost-writes {} partitions {} clock {} snapshots {} rejected {} forged {}/{} conflicts {} vv {} epoch {} jump {}s | msgs {} dropped {} dup {} | sim {:.1}s",
        r.seed,
        r.devices,
        r.trace,
        r.events,
        r.commits,
        r.acked_entries,
        r.crashes,
        r.leader_kills,
        r.rollbacks,
        r.lost_fsyncs,
        r.lost_writes,
        r.partitions,
        r.clock_faults,
        r.snapshots,
        r.rejected,
        r.forged_sent,
        r.forged_refused,
        r.position_conflicts,
        r.max_vv,
        r.max_epoch,
        r.time_jump_s,
        r.net.delivered,
        r.net.dropped,
        r.net.duplicated,
        r.sim_ms as f64 / 1000.0
    )
}

fn main() {
    let args = Args::parse();
    // `CONCORD_SIM_LOG=debug` shows the services' own logs (to stderr).
    if let Ok(filter) = std::env::var("CONCORD_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let faults = match Faults::parse(&args.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("concord-sim: {e}");
            std::process::exit(2);
        }
    };
    if let Some(d) = args.devices {
        if !(2..=16).contains(&d) {
            eprintln!("concord-sim: --devices must be between 2 and 16");
            std::process::exit(2);
        }
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    let done = AtomicU64::new(0);
    // The largest version vector (replicas) any run ended with.
    let widest = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= args.seeds {
                    return;
                }
                let opts = Options {
                    seed: args.seed + k,
                    devices: args.devices,
                    faults,
                    chaos: None,
                };
                let r = run(&opts);
                widest.fetch_max(r.max_vv as u64, Ordering::SeqCst);
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                if args.progress > 0 && n.is_multiple_of(args.progress) {
                    eprintln!(
                        "progress: {n}/{} seeds, {} failed, {:.0}s",
                        args.seeds,
                        failures.lock().unwrap().len(),
                        started.elapsed().as_secs_f64()
                    );
                }
                if args.verbose || r.failure.is_some() {
                    println!("{}", line(&r));
                }
                if let Some(f) = &r.failure {
                    println!("FAILED seed {}: {f}", r.seed);
                    println!("  replay: {}", replay(&r, &faults));
                    failures.lock().unwrap().push(r);
                    if args.fail_fast {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let ran = done.load(Ordering::SeqCst);
    println!(
        "concord-sim: {ran} seeds ({}..{}), faults {}, {} failed, widest vector {} replicas, wall time {:.1}s",
        args.seed,
        args.seed + ran,
        faults.arg(),
        failures.len(),
        widest.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let mut seeds: Vec<u64> = failures.iter().map(|r| r.seed).collect();
        seeds.sort_unstable();
        println!("failing seeds: {seeds:?}");
        std::process::exit(1);
    }
}
