//! Offload never loses a file (issue "Offload"): a seeded model of two
//! devices, the source's files and index entries and the destination's
//! files, driven through the real selection (`conduit::offload::select`) and
//! the real crash-safe steps (`conduit::offload_steps::drive`) under random
//! file activity (create, modify, touch, read, delete, pin and unpin),
//! free-space changes, crashes of either side between any two durable
//! effects, destination outages and removals, deletions and corruptions on
//! the destination. After every effect: each file's current content exists,
//! verified by hash, on at least one device (the source file, or the
//! destination copy its offloaded entry names), and every offloaded entry's
//! bytes are on the destination or reported lost. Cases: `OFFLOAD_CASES`
//! (default 3,000); a failure names its seed (`OFFLOAD_SEED` replays one).

use std::collections::{BTreeMap, BTreeSet};

use concord::conduit::offload::{select, Candidate, Pinned, Rules, Space, RECENT_MS};
use concord::conduit::offload_steps::{
    drive, DestinationCopy, Ends, EntryState, Intent, LostHow, Observed, Outcome, SourceFile, Step,
};
use concord::conduit::settings::MinFree;
use concord::conduit::tree::{FileState, Version};
use concord::index::OffloadedTo;
use concord::Uuid;

mod support;
use support::Rng;

const PATHS: &[&str] = &["a", "b", "c", "d/e", "d/f", "d/g/h", "i", "j"];
const DEST_LOCATION: Uuid = Uuid::from_u128(0xDE57);
const TOTAL: u64 = 1_000;
const DEST_CAPACITY: u64 = 600;

fn dest_path(p: &str) -> String {
    format!("off/{p}")
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[derive(Debug, Clone)]
struct SourceFileModel {
    content: Vec<u8>,
    inode: u64,
    mtime_ns: i64,
    atime_ms: i64,
    ctime_ms: i64,
}

impl SourceFileModel {
    fn state(&self) -> FileState {
        FileState {
            version: Version {
                hash: Some(hash(&self.content)),
                size: self.content.len() as u64,
                mtime_ns: self.mtime_ns,
                exec: false,
            },
            inode: self.inode,
        }
    }
}

/// Probabilities of one case, in 1/1000 per effect.
#[derive(Debug, Clone, Copy)]
struct Rates {
    crash: u64,
    dest_crash: u64,
    outage: u64,
    concurrent_write: u64,
    dest_delete: u64,
}

#[derive(Debug, Default)]
struct Counts {
    offloaded: u64,
    crashes: u64,
    returned: u64,
    changing: u64,
    lost_reported: u64,
    waited: u64,
    refused_not_member: u64,
}

/// Why a file's turn or a run ended early.
#[derive(Debug)]
enum Fail {
    /// The source device crashed: the run is over, memory lost.
    Crash,
    /// The destination went away or crashed mid-copy: next file.
    Away,
}

struct Model {
    seed: u64,
    rng: Rng,
    rates: Rates,
    noatime: bool,
    min_free: MinFree,
    now: i64,
    serial: u64,
    source: BTreeMap<String, SourceFileModel>,
    entries: BTreeMap<String, EntryState>,
    /// The content the user last wrote at each path (absent once deleted).
    current: BTreeMap<String, Vec<u8>>,
    pinned: BTreeSet<String>,
    /// Space used on the source volume by other things.
    other: u64,
    dest: BTreeMap<String, Vec<u8>>,
    dest_up: bool,
    dest_member: bool,
    /// Paths whose only copy the destination lost.
    expected_lost: BTreeSet<String>,
    /// The file an offload is driving now, and the bytes of its destination
    /// copy if the destination deleted or changed it meanwhile.
    in_flight: Option<(String, Option<Vec<u8>>)>,
    counts: Counts,
}

impl Model {
    fn new(seed: u64) -> Model {
        let mut rng = Rng(seed);
        let rate = |rng: &mut Rng, hi| *rng.pick(&[0, hi / 4, hi]);
        let rates = Rates {
            crash: rate(&mut rng, 200),
            dest_crash: rate(&mut rng, 100),
            outage: rate(&mut rng, 60),
            concurrent_write: rate(&mut rng, 150),
            dest_delete: rate(&mut rng, 40),
        };
        let noatime = rng.below(2) == 0;
        let min_free = if rng.below(2) == 0 {
            MinFree::Bytes(rng.range(200, 700))
        } else {
            MinFree::Percent(rng.range(20, 70) as u8)
        };
        Model {
            seed,
            rng,
            rates,
            noatime,
            min_free,
            now: 1_800_000_000_000,
            serial: 0,
            source: BTreeMap::new(),
            entries: BTreeMap::new(),
            current: BTreeMap::new(),
            pinned: BTreeSet::new(),
            other: 0,
            dest: BTreeMap::new(),
            dest_up: true,
            dest_member: true,
            expected_lost: BTreeSet::new(),
            in_flight: None,
            counts: Counts::default(),
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.rng.below(1000) < per_mille
    }

    fn free(&self) -> u64 {
        let used: u64 = self.source.values().map(|f| f.content.len() as u64).sum();
        TOTAL.saturating_sub(self.other + used)
    }

    fn dest_room(&self) -> u64 {
        let used: u64 = self.dest.values().map(|b| b.len() as u64).sum();
        DEST_CAPACITY.saturating_sub(used)
    }

    // --- user activity on the source -------------------------------------

    fn write(&mut self, p: &str) {
        self.serial += 1;
        let len = self.rng.range(1, 120) as usize;
        let mut content = self.serial.to_le_bytes().to_vec();
        content.resize(len.max(8), b'x');
        let mtime_ns = self.now * 1_000_000 + self.serial as i64;
        let inode = match self.source.get(p) {
            Some(f) => f.inode,
            None => 1_000 + self.serial,
        };
        self.source.insert(
            p.to_string(),
            SourceFileModel {
                content: content.clone(),
                inode,
                mtime_ns,
                atime_ms: self.now,
                ctime_ms: self.now,
            },
        );
        self.current.insert(p.to_string(), content);
        self.expected_lost.remove(p);
    }

    fn touch(&mut self, p: &str) {
        self.serial += 1;
        let (now, serial) = (self.now, self.serial as i64);
        if let Some(f) = self.source.get_mut(p) {
            f.mtime_ns = now * 1_000_000 + serial;
            f.ctime_ms = now;
        }
    }

    fn read(&mut self, p: &str) {
        let now = self.now;
        if let Some(f) = self.source.get_mut(p) {
            f.atime_ms = now;
        }
    }

    fn delete(&mut self, p: &str) {
        if self.source.remove(p).is_some() {
            self.current.remove(p);
            // Deleted inside the window between an offload's commit and its
            // removal, after the destination lost the copy: the entry is
            // offloaded with nothing behind it, which must be reported.
            if let Some(EntryState::Offloaded(o)) = self.entries.get(p) {
                if self.dest.get(&o.path).is_none_or(|b| hex(b) != o.hash) {
                    self.expected_lost.insert(p.to_string());
                }
            }
        }
    }

    // --- the destination ------------------------------------------------

    /// The destination removes or changes one of its files; an offloaded
    /// entry whose only copy that was is now expected to be reported lost.
    fn dest_loses(&mut self, corrupt: bool) {
        let keys: Vec<String> = self.dest.keys().cloned().collect();
        if keys.is_empty() {
            return;
        }
        let k = self.rng.pick(&keys).clone();
        let before = self.dest.remove(&k).unwrap_or_default();
        if corrupt {
            let mut b = before.clone();
            b.push(b'!');
            self.dest.insert(k.clone(), b);
        }
        for (p, e) in &self.entries {
            if let EntryState::Offloaded(o) = e {
                if o.path == k && o.hash == hex(&before) && !self.source.contains_key(p) {
                    self.expected_lost.insert(p.clone());
                }
            }
        }
        // The copy of a file being offloaded, verified and not yet removed
        // from the source: if the removal follows, its content is lost like
        // one deleted just after (the destination's user deleted the only
        // copy), and must be reported.
        if let Some((p, _)) = &self.in_flight {
            if dest_path(p) == k {
                self.in_flight = Some((p.clone(), Some(before)));
            }
        }
    }

    // --- the index --------------------------------------------------------

    /// A rescan: new files get local entries, a file at an offloaded entry's
    /// path makes it local, an absent local file's entry is deleted, an
    /// absent offloaded file's entry stays (`index::offloaded`).
    fn rescan(&mut self) {
        let paths: BTreeSet<String> = self
            .source
            .keys()
            .chain(self.entries.keys())
            .cloned()
            .collect();
        for p in paths {
            match (self.source.contains_key(&p), self.entries.get(&p)) {
                (true, None) | (true, Some(EntryState::Offloaded(_))) => {
                    self.entries.insert(p, EntryState::Local);
                }
                (false, Some(EntryState::Local)) => {
                    self.entries.remove(&p);
                }
                _ => {}
            }
        }
    }

    // --- the property -----------------------------------------------------

    fn check(&self, when: &str) {
        let ctx = || format!("seed {} ({when})", self.seed);
        for (p, c) in &self.current {
            if self.source.get(p).is_some_and(|f| &f.content == c) {
                continue;
            }
            let Some(EntryState::Offloaded(o)) = self.entries.get(p) else {
                panic!(
                    "{}: {p} is not on the source and its entry is not offloaded",
                    ctx()
                );
            };
            let on_dest = self.dest.get(&o.path) == Some(c) && o.hash == hex(c);
            assert!(
                on_dest || self.expected_lost.contains(p),
                "{}: the content of {p} is on no device",
                ctx()
            );
        }
        for (p, e) in &self.entries {
            if let EntryState::Offloaded(o) = e {
                if self.source.contains_key(p) {
                    continue;
                }
                let there = self.dest.get(&o.path).is_some_and(|b| hex(b) == o.hash);
                assert!(
                    there || self.expected_lost.contains(p),
                    "{}: offloaded {p} is neither on the destination nor expected lost",
                    ctx()
                );
            }
        }
    }

    // --- offload runs -----------------------------------------------------

    fn candidates(&self) -> Vec<Candidate> {
        self.source
            .iter()
            .filter(|(p, _)| self.entries.get(*p) == Some(&EntryState::Local))
            .map(|(p, f)| Candidate {
                path: p.clone(),
                size: f.content.len() as u64,
                accessed: (!self.noatime).then_some(f.atime_ms),
                modified: f.mtime_ns / 1_000_000,
                changed: f.ctime_ms,
            })
            .collect()
    }

    /// One offload run: select, then drive each chosen file. A crash of the
    /// source ends the run.
    fn run(&mut self) {
        let pinned = Pinned::new(self.pinned.iter().cloned());
        let space = Space {
            free: self.free(),
            total: TOTAL,
        };
        let rules = Rules {
            min_free: self.min_free,
            pinned: &pinned,
            now: self.now,
            destination_free: Some(self.dest_room()),
        };
        let chosen = select(&self.candidates(), space, &rules).chosen;
        for c in chosen {
            assert!(
                !pinned.covers(&c.path),
                "seed {}: pinned {}",
                self.seed,
                c.path
            );
            assert!(
                !c.is_recent(self.now),
                "seed {}: recent {}",
                self.seed,
                c.path
            );
            let intent = Intent::Offload {
                location: DEST_LOCATION,
                path: dest_path(&c.path),
                copies: 0,
            };
            self.in_flight = Some((c.path.clone(), None));
            let mut ends = ModelEnds {
                m: self,
                path: c.path.clone(),
            };
            let result = drive(intent, &mut ends);
            self.in_flight = None;
            match result {
                Ok(step) => self.tally(&c.path, &step),
                Err(Fail::Crash) => {
                    self.counts.crashes += 1;
                    return;
                }
                Err(Fail::Away) => continue,
            }
        }
    }

    fn tally(&mut self, p: &str, step: &Step) {
        match step {
            Step::Done(Outcome::Offloaded) => self.counts.offloaded += 1,
            Step::Done(Outcome::Changing) => self.counts.changing += 1,
            Step::Done(Outcome::NotMember) => self.counts.refused_not_member += 1,
            Step::Wait(_) => self.counts.waited += 1,
            Step::Lost(_) => self.counts.lost_reported += 1,
            Step::Done(_) => {}
            other => panic!("seed {}: {p} ended on {other:?}", self.seed),
        }
    }

    /// A restart: every entry is settled and checked (`Intent::Check`); an
    /// offloaded entry without its file is reported lost exactly when the
    /// destination lost its only copy.
    fn restart(&mut self) {
        let paths: Vec<String> = self.entries.keys().cloned().collect();
        for p in paths {
            let mut ends = ModelEnds {
                m: self,
                path: p.clone(),
            };
            let step = match drive(Intent::Check, &mut ends) {
                Ok(step) => step,
                Err(_) => return, // crashed again; the next restart goes on
            };
            let reachable = self.dest_up && self.dest_member;
            match &step {
                Step::Lost(l) => {
                    self.counts.lost_reported += 1;
                    assert!(
                        self.expected_lost.contains(&p) || l.found == LostHow::NotMember,
                        "seed {}: {p} reported lost: {l:?}",
                        self.seed
                    );
                }
                Step::Done(Outcome::Offloaded) => {
                    assert!(!self.expected_lost.contains(&p), "seed {}: {p}", self.seed)
                }
                Step::Wait(_) => assert!(!reachable, "seed {}: {p} waits", self.seed),
                Step::Done(Outcome::Local | Outcome::Gone) => {}
                other => panic!("seed {}: {p} settled on {other:?}", self.seed),
            }
        }
    }

    /// One random event.
    fn event(&mut self) {
        let p = *self.rng.pick(PATHS);
        let what = self.rng.below(100);
        if std::env::var_os("OFFLOAD_TRACE").is_some() {
            eprintln!("event {what} on {p}");
        }
        match what {
            0..=24 => self.write(p),
            25..=29 => self.touch(p),
            30..=34 => self.read(p),
            35..=39 => self.delete(p),
            40..=42 => {
                let pin = *self.rng.pick(&["a", "d", "d/g/h", "i"]);
                if !self.pinned.remove(pin) {
                    self.pinned.insert(pin.to_string());
                }
            }
            43..=49 => self.other = self.rng.range(0, TOTAL / 2),
            50..=59 => self.now += self.rng.range(1, 3 * RECENT_MS as u64) as i64,
            60..=62 => self.dest_up = !self.dest_up,
            63 => self.dest_member = !self.dest_member,
            64..=67 => {
                let corrupt = self.rng.below(3) == 0;
                self.dest_loses(corrupt);
            }
            68..=79 => self.rescan(),
            80..=95 => self.run(),
            _ => self.restart(),
        }
        self.check("after an event");
    }
}

/// The two devices as `drive` sees them for one file, with crashes, outages
/// and the user's writes injected between any two durable effects.
struct ModelEnds<'a> {
    m: &'a mut Model,
    path: String,
}

impl ModelEnds<'_> {
    /// Between two effects: maybe a crash, an outage, a write to the file,
    /// or the destination losing a file. The property holds at every point.
    fn between(&mut self) -> Result<(), Fail> {
        let r = self.m.rates;
        if self.m.chance(r.concurrent_write) {
            let p = self.path.clone();
            self.m.write(&p);
        }
        if self.m.chance(r.dest_delete) {
            self.m.dest_loses(false);
        }
        if self.m.chance(r.outage) {
            self.m.dest_up = false;
        }
        self.m.check("between two steps");
        if self.m.chance(r.crash) {
            return Err(Fail::Crash);
        }
        Ok(())
    }
}

impl Ends for ModelEnds<'_> {
    type Error = Fail;

    fn observe(&mut self) -> Result<Observed, Fail> {
        let entry = self.m.entries.get(&self.path).cloned().ok_or(Fail::Away)?;
        let source = match self.m.source.get(&self.path) {
            Some(f) => SourceFile::Present(f.state()),
            None => SourceFile::Absent,
        };
        let at = match &entry {
            EntryState::Offloaded(o) => o.path.clone(),
            EntryState::Local => dest_path(&self.path),
        };
        let destination = if !self.m.dest_up {
            DestinationCopy::Unreachable
        } else if !self.m.dest_member {
            DestinationCopy::NotMember
        } else {
            match self.m.dest.get(&at) {
                Some(b) => DestinationCopy::Present(hash(b)),
                None => DestinationCopy::Missing,
            }
        };
        Ok(Observed {
            entry,
            source,
            destination,
        })
    }

    fn copy(&mut self, version: &FileState) -> Result<(), Fail> {
        self.between()?;
        if !self.m.dest_up || !self.m.dest_member {
            return Err(Fail::Away);
        }
        // Streamed and verified against the version asked for: a source
        // changed since is refused and nothing lands.
        let Some(f) = self.m.source.get(&self.path) else {
            return Ok(());
        };
        if Some(hash(&f.content)) != version.version.hash {
            return Ok(());
        }
        let bytes = f.content.clone();
        if self.m.chance(self.m.rates.dest_crash) {
            // The destination crashed mid-copy: only a temp file, discarded.
            self.m.dest_up = false;
            return Err(Fail::Away);
        }
        self.m.dest.insert(dest_path(&self.path), bytes);
        self.between()
    }

    fn commit_and_remove(&mut self, to: &OffloadedTo, version: &FileState) -> Result<(), Fail> {
        self.between()?;
        self.m
            .entries
            .insert(self.path.clone(), EntryState::Offloaded(to.clone()));
        self.between()?;
        // `remove_if_unchanged`: the stat must still be the re-checked one.
        let same = self.m.source.get(&self.path).is_some_and(|f| {
            let now = f.state();
            now.inode == version.inode
                && now.version.size == version.version.size
                && now.version.mtime_ns == version.version.mtime_ns
        });
        if same {
            self.m.source.remove(&self.path);
            let lost_meanwhile = match &self.m.in_flight {
                Some((_, Some(bytes))) => hex(bytes) == to.hash,
                _ => false,
            };
            if lost_meanwhile && self.m.dest.get(&to.path).is_none_or(|b| hex(b) != to.hash) {
                self.m.expected_lost.insert(self.path.clone());
            }
        }
        self.between()
    }

    fn return_local(&mut self) -> Result<(), Fail> {
        self.between()?;
        self.m.counts.returned += 1;
        self.m.entries.insert(self.path.clone(), EntryState::Local);
        self.between()
    }
}

fn run_case(seed: u64) -> Counts {
    let mut m = Model::new(seed);
    // A full volume to start with, indexed.
    for p in PATHS {
        m.write(p);
        m.now += RECENT_MS;
    }
    m.rescan();
    m.now += 2 * RECENT_MS;
    for _ in 0..80 {
        m.event();
    }
    // Finally the destination comes back and everything settles: what is
    // offloaded is verified there or reported lost.
    m.dest_up = true;
    m.dest_member = true;
    m.rates.crash = 0;
    m.rates.outage = 0;
    m.restart();
    m.check("at the end");
    m.counts
}

#[test]
fn offload_never_loses_a_file() {
    let cases: u64 = std::env::var("OFFLOAD_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let seeds: Vec<u64> = match std::env::var("OFFLOAD_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(s) => vec![s],
        None => (0..cases).map(|i| 0x0FF_10AD ^ (i * 0x9E37_79B9)).collect(),
    };
    let mut total = Counts::default();
    for seed in seeds.iter().copied() {
        let c = run_case(seed);
        total.offloaded += c.offloaded;
        total.crashes += c.crashes;
        total.returned += c.returned;
        total.changing += c.changing;
        total.lost_reported += c.lost_reported;
        total.waited += c.waited;
        total.refused_not_member += c.refused_not_member;
    }
    eprintln!("{} cases: {total:?}", seeds.len());
    if seeds.len() >= 100 {
        // The cases reach every outcome, so the property was tested on each.
        assert!(total.offloaded > 0, "{total:?}");
        assert!(total.crashes > 0, "{total:?}");
        assert!(total.returned > 0, "{total:?}");
        assert!(total.changing > 0, "{total:?}");
        assert!(total.lost_reported > 0, "{total:?}");
        assert!(total.waited > 0, "{total:?}");
        assert!(total.refused_not_member > 0, "{total:?}");
    }
}
