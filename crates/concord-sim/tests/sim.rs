//! The simulation's own guarantees: a seed replays exactly, and a fixed set of
//! seeds with every fault enabled ends converged with every invariant held.

use concord_sim::{run, Faults, Options};

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17] {
        let a = run(&Options::new(seed));
        let b = run(&Options::new(seed));
        assert!(a.events > 100, "seed {seed} did too little: {a:?}");
        assert_eq!(a.trace, b.trace, "seed {seed} did not replay");
        assert_eq!(a.events, b.events);
        assert_eq!(a.failure, b.failure);
    }
}

#[test]
fn different_seeds_differ() {
    assert_ne!(run(&Options::new(1)).trace, run(&Options::new(2)).trace);
}

#[test]
fn twenty_seeds_converge_with_every_fault() {
    let seeds: Vec<u64> = (1000..1020).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .chunks(10)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|&seed| {
                            let r = run(&Options::new(seed));
                            r.failure.map(|f| format!("seed {seed}: {f}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn faults_parse_and_print() {
    assert_eq!(Faults::parse("all").unwrap(), Faults::all());
    assert_eq!(Faults::parse("none").unwrap(), Faults::none());
    let f = Faults::parse("drop,crash").unwrap();
    assert!(f.drop && f.crash && !f.clock);
    assert_eq!(Faults::parse(&f.arg()).unwrap(), f);
    let g = Faults::parse("-clock,-prune").unwrap();
    assert!(!g.clock && !g.prune && g.drop);
    assert_eq!(Faults::parse(&g.arg()).unwrap(), g);
    assert!(Faults::parse("nonsense").is_err());
}
