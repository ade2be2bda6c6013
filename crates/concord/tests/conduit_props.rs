//! The conduit planner and local executor under random work (proptest, real
//! folders): random creates, edits, copies, renames and deletes on both ends
//! with cycles at random moments. After a last cycle both ends hold the same
//! tree, and every version ever written is still somewhere: in a file of
//! either end, in a conflict copy, or in a trash; unless the user destroyed
//! its last copy themselves (overwrote or deleted it while no other copy
//! existed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use concord::conduit::agreed::Agreed;
use concord::conduit::cycle::{run_local_cycle, CycleMemory, CycleOutcome, EndSpec, LocalConduit};
use concord::conduit::settings::{Cadence, Policy, Settings};
use proptest::prelude::*;

/// Paths users write to; no path is a folder of another, so a file never
/// meets a folder of the same name.
const POOL: [&str; 6] = ["a.txt", "b", "d/c.txt", "d/e/f", "g.md", "日本/é.txt"];

#[derive(Debug, Clone)]
enum Op {
    /// Write new content at a pool path or an existing file (by index).
    Write {
        side: bool,
        target: usize,
    },
    /// Copy an existing file's content to a pool path (same content twice).
    Duplicate {
        side: bool,
        pick: usize,
        to: usize,
    },
    Rename {
        side: bool,
        pick: usize,
        to: usize,
    },
    Delete {
        side: bool,
        pick: usize,
    },
    Cycle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0..20usize).prop_map(|(side, target)| Op::Write { side, target }),
        1 => (any::<bool>(), 0..20usize, 0..POOL.len()).prop_map(|(side, pick, to)| Op::Duplicate { side, pick, to }),
        2 => (any::<bool>(), 0..20usize, 0..POOL.len()).prop_map(|(side, pick, to)| Op::Rename { side, pick, to }),
        2 => (any::<bool>(), 0..20usize).prop_map(|(side, pick)| Op::Delete { side, pick }),
        2 => Just(Op::Cycle),
    ]
}

struct World {
    _tmp: tempfile::TempDir,
    roots: [PathBuf; 2],
    conduit: LocalConduit,
    memory: CycleMemory,
    agreed_file: PathBuf,
    now_ms: i64,
    counter: u64,
    written: Vec<String>,
    destroyed: BTreeSet<String>,
}

/// Files below `root` (outside `.concord/` unless `all`), by relative path.
fn contents(root: &Path, all: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel == ".concord" && !all {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    rel,
                    String::from_utf8(std::fs::read(e.path()).unwrap()).unwrap(),
                );
            }
        }
    }
    out
}

impl World {
    fn new(policy: Policy) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let roots = [tmp.path().join("alpha"), tmp.path().join("beta")];
        for r in &roots {
            std::fs::create_dir_all(r).unwrap();
        }
        let end = |p: &Path, device: &str| EndSpec {
            location: p.to_path_buf(),
            dir: None,
            fingerprint: None,
            device: device.into(),
        };
        let conduit = LocalConduit {
            settings: Settings {
                policy,
                source_dir: None,
                destination_dir: None,
                propagate_deletes: true,
                cadence: Cadence::Manual,
                min_free: None,
                paused: None,
                allow_deletes: true,
            },
            source: end(&roots[0], "alpha"),
            destination: end(&roots[1], "beta"),
        };
        World {
            agreed_file: tmp.path().join("agreed"),
            _tmp: tmp,
            roots,
            conduit,
            memory: CycleMemory::default(),
            now_ms: 1_796_145_300_000,
            counter: 0,
            written: Vec::new(),
            destroyed: BTreeSet::new(),
        }
    }

    fn files(&self, side: bool) -> Vec<String> {
        contents(&self.roots[side as usize], false)
            .into_keys()
            .collect()
    }

    /// Before the user overwrites or deletes `rel` on `side`: if no other
    /// copy of its content exists anywhere, the user destroyed that version.
    fn before_destroying(&mut self, side: bool, rel: &str) {
        let root = &self.roots[side as usize];
        let Ok(doomed) = std::fs::read_to_string(root.join(rel)) else {
            return;
        };
        let mut copies = 0;
        for r in &self.roots {
            copies += contents(r, true).values().filter(|c| **c == doomed).count();
        }
        if copies <= 1 {
            self.destroyed.insert(doomed);
        }
    }

    fn write(&mut self, side: bool, rel: &str, content: String) {
        self.before_destroying(side, rel);
        let p = self.roots[side as usize].join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &content).unwrap();
        self.counter += 1;
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800 + self.counter))
            .unwrap();
    }

    fn apply(&mut self, op: &Op) {
        let existing = |w: &World, side: bool, i: usize| {
            let f = w.files(side);
            (!f.is_empty()).then(|| f[i % f.len()].clone())
        };
        match *op {
            Op::Write { side, target } => {
                let f = self.files(side);
                let rel = if target < POOL.len() || f.is_empty() {
                    POOL[target % POOL.len()].to_string()
                } else {
                    f[target % f.len()].clone()
                };
                let content = format!("v{}", self.written.len());
                self.written.push(content.clone());
                self.write(side, &rel, content);
            }
            Op::Duplicate { side, pick, to } => {
                if let Some(from) = existing(self, side, pick) {
                    let root = &self.roots[side as usize];
                    let content = std::fs::read_to_string(root.join(&from)).unwrap();
                    if from != POOL[to] {
                        self.write(side, POOL[to], content);
                    }
                }
            }
            Op::Rename { side, pick, to } => {
                if let Some(from) = existing(self, side, pick) {
                    if from != POOL[to] {
                        self.before_destroying(side, POOL[to]);
                        let root = &self.roots[side as usize];
                        let dest = root.join(POOL[to]);
                        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                        std::fs::rename(root.join(&from), dest).unwrap();
                    }
                }
            }
            Op::Delete { side, pick } => {
                if let Some(rel) = existing(self, side, pick) {
                    self.before_destroying(side, &rel);
                    std::fs::remove_file(self.roots[side as usize].join(rel)).unwrap();
                }
            }
            Op::Cycle => {
                self.cycle();
            }
        }
    }

    /// One cycle; the agreed state goes through its file as it would.
    fn cycle(&mut self) {
        self.now_ms += 60_000;
        self.memory.agreed = Agreed::load(&self.agreed_file).unwrap();
        let out = run_local_cycle(&self.conduit, &mut self.memory, self.now_ms).unwrap();
        self.memory.agreed.save(&self.agreed_file).unwrap();
        match out {
            CycleOutcome::Done(r) => assert!(r.exec.failed.is_empty(), "{:?}", r.exec.failed),
            CycleOutcome::Paused(reason, _) => panic!("paused: {reason:?}"),
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let (a, b) = (
            contents(&self.roots[0], false),
            contents(&self.roots[1], false),
        );
        prop_assert_eq!(&a, &b, "both ends hold the same tree");
        let mut everywhere: BTreeSet<String> = BTreeSet::new();
        for r in &self.roots {
            everywhere.extend(contents(r, true).into_values());
        }
        for v in &self.written {
            prop_assert!(
                everywhere.contains(v) || self.destroyed.contains(v),
                "version {v} was lost"
            );
        }
        Ok(())
    }
}

fn run(policy: Policy, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(policy);
    for op in ops {
        w.apply(op);
    }
    w.cycle();
    w.check()?;
    // A settled conduit has nothing left to do.
    let before = (contents(&w.roots[0], true), contents(&w.roots[1], true));
    w.cycle();
    prop_assert_eq!(
        before,
        (contents(&w.roots[0], true), contents(&w.roots[1], true))
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn synchronize_converges_and_loses_no_version(ops in prop::collection::vec(op(), 1..40)) {
        run(Policy::Synchronize, &ops)?;
    }

    #[test]
    fn replicate_converges_and_loses_no_version(ops in prop::collection::vec(op(), 1..40)) {
        run(Policy::Replicate, &ops)?;
    }
}
