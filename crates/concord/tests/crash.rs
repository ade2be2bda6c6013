//! Invariant I1 (DESIGN §3): after `kill -9` at any moment, every change is either
//! in both the sync log and the domain tables, or in neither.
//!
//! A child process (this test binary, re-invoked as the `crash_child` test with
//! [`CHILD_ENV`] set) writes in a loop: single commits, batches, deletes, bulk
//! indexing, and remote entries from a peer. The parent kills it with SIGKILL at a
//! random moment, reopens the library (which runs recovery), checks it, commits
//! once itself, and lets the next child continue on the same files.
//!
//! The checks after each kill:
//! - the log alone rebuilds the library: a replica fed only log entries has the
//!   same shared digest, and the same non-bulk file entries and file tombstones;
//! - every bulk entry in the log has all its rows, and no bulk rows exist without
//!   their log entry;
//! - this device's (and the peer's) `origin_seq` run 1, 2, 3… without gap or
//!   duplicate;
//! - a stamp issued after reopening (with a wall clock stuck in 1970) is above
//!   every stamp in the log.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::digest::{digest, Scope};
use concord::hlc::{Clock, Hlc, ManualClock, SystemClock};
use concord::model::{
    entry_kind, Album, AlbumItem, FileEntry, Syncable, Tag, TagAssignment, UserMetadata, Value,
};
use concord::sync::entry::{BulkOperation, FieldWrite, LogEntry, Op};
use concord::{Change, Error, Library, Uuid};

mod support;
use support::{
    all_entries, count_with, file, initial_index, location, scratch, tag, uuids, volume, Rng,
};

/// Set in the child's environment: the library directory to write to.
const CHILD_ENV: &str = "CONCORD_CRASH_CHILD_DIR";
const SEED_ENV: &str = "CONCORD_CRASH_CHILD_SEED";
/// `create` makes the child create libraries instead of writing to one.
const MODE_ENV: &str = "CONCORD_CRASH_CHILD_MODE";
const READY: &str = "CONCORD-CRASH-CHILD-READY";

const LIB: Uuid = Uuid::from_u128(0x11b_c4a5);
/// The device whose library is killed.
const DEVICE: Uuid = Uuid::from_u128(0xd0_0000_0000_0000_0000_0000_0000_0001);
/// A remote device whose entries the child receives.
const PEER: Uuid = Uuid::from_u128(0xd0_0000_0000_0000_0000_0000_0000_0002);
/// The replica the parent feeds with log entries only.
const SHADOW: Uuid = Uuid::from_u128(0xd0_0000_0000_0000_0000_0000_0000_0003);

/// Copy this test binary into `dir` and return the copy's path. The target dir is
/// shared, and a concurrent build may replace the original while a test runs.
fn child_exe(dir: &Path) -> std::path::PathBuf {
    let exe = dir.join("crash-child");
    let _g = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    exe
}

/// Held while writing an executable and while spawning: a process forked while
/// another thread holds a file open for writing keeps it open until it execs, and
/// executing that file then fails with "text file busy".
static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn(cmd: &mut Command) -> std::process::Child {
    let _g = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start the child process: {e}"))
}

fn rows(lib: &Library, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
    lib.read(|c| {
        let mut stmt = c.prepare(sql)?;
        let n = stmt.column_count();
        let rows = stmt.query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect()
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
    .unwrap()
}

// ---------------------------------------------------------------------------
// The child.

/// Entry point of the child process; a no-op when run as a normal test.
#[test]
#[ignore = "the crash tests run this as their child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    if std::env::var(MODE_ENV).as_deref() == Ok("create") {
        create_child_main(Path::new(&dir));
    }
    child_main(Path::new(&dir), seed);
}

/// Create libraries one after another in `<dir>/0`, `<dir>/1`, … until killed.
fn create_child_main(dir: &Path) -> ! {
    println!("{READY}");
    for i in 0.. {
        let lib = Library::create(
            &dir.join(i.to_string()),
            LIB,
            "c",
            DEVICE,
            Box::new(SystemClock),
        )
        .expect("child: create");
        drop(lib);
    }
    unreachable!()
}

fn child_main(dir: &Path, seed: u64) -> ! {
    let lib = Library::open(dir, DEVICE, Box::new(SystemClock)).expect("child: open");
    let mut rng = Rng(seed);
    let vol = match uuids(&lib, "SELECT uuid FROM volumes LIMIT 1", &[]).first() {
        Some(v) => *v,
        None => {
            let vol = volume(Uuid::now_v7(), DEVICE, "disk", "fp");
            let loc = location(Uuid::now_v7(), DEVICE, vol.id, "/main", "main");
            lib.commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
                .expect("child: setup");
            vol.id
        }
    };
    let main_loc = uuids(&lib, "SELECT uuid FROM locations WHERE name = 'main'", &[])[0];
    let mut peer_seq = lib.with_log(|l| l.max_seq(PEER)).unwrap() + 1;
    let mut out = std::io::stdout();
    writeln!(out, "{READY}").unwrap();
    out.flush().unwrap();
    let mut n = 0u64;
    loop {
        n += 1;
        let r = match rng.below(100) {
            0..=24 => lib
                .commit(one_change(&lib, &mut rng, main_loc, n))
                .map(drop),
            25..=44 => {
                let k = rng.range(10, 50);
                let changes = (0..k).map(|i| one_change(&lib, &mut rng, main_loc, n * 100 + i));
                lib.commit_batch(changes.collect()).map(drop)
            }
            // Large batches: with their entries in the outbox too, which a
            // commit now and then fills past its threshold and moves.
            45..=54 => {
                let k = rng.range(64, 2_000);
                let changes = (0..k).map(|i| new_tag(n * 1000 + i));
                lib.commit_batch(changes.collect()).map(drop)
            }
            55..=69 => lib.commit(one_delete(&lib, &mut rng)).map(drop),
            70..=89 => {
                let entries = peer_entries(&lib, &mut rng, &mut peer_seq);
                let r = lib.apply_remote(&entries).expect("child: apply_remote");
                assert!(r.rejected.is_empty(), "child: {:?}", r.rejected);
                Ok(())
            }
            90..=92 => bulk(&lib, &mut rng, vol, n),
            _ => lib.flush(),
        };
        match r {
            Ok(())
            | Err(Error::Deleted { .. } | Error::NotFound { .. } | Error::AlreadyExists { .. }) => {
            }
            Err(e) => panic!("child: unexpected error: {e}"),
        }
    }
}

fn random_one(lib: &Library, table: &str, filter: &str) -> Option<Uuid> {
    uuids(
        lib,
        &format!("SELECT uuid FROM {table} {filter} ORDER BY random() LIMIT 1"),
        &[],
    )
    .first()
    .copied()
}

fn new_tag(n: u64) -> Change {
    Change::insert(&tag(Uuid::now_v7(), &format!("t{n}")))
}

fn one_change(lib: &Library, rng: &mut Rng, main_loc: Uuid, n: u64) -> Change {
    let files = "WHERE location IN (SELECT uuid FROM locations WHERE name = 'main')";
    match rng.below(9) {
        0 => match random_one(lib, "tags", "") {
            Some(t) => Change::update::<Tag>(t).set("name", format!("r{n}")),
            None => new_tag(n),
        },
        1 => match random_one(lib, "tags", "") {
            Some(t) => Change::update::<Tag>(t).set("color", format!("#{:06x}", n & 0xffffff)),
            None => new_tag(n),
        },
        2 => Change::insert(&Album {
            id: Uuid::now_v7(),
            name: format!("a{n}"),
            description: None,
        }),
        3 | 4 => {
            let parent = if rng.below(2) == 0 {
                random_one(lib, "file_entries", &format!("{files} AND kind = 1"))
            } else {
                None
            };
            Change::insert(&FileEntry {
                id: Uuid::now_v7(),
                device: DEVICE,
                location: main_loc,
                parent,
                name: format!("f{n}"),
                path: format!("p/f{n}"),
                kind: if rng.below(3) == 0 {
                    entry_kind::DIR
                } else {
                    entry_kind::FILE
                },
                size: n as i64,
                modified: Some(n as i64),
                offloaded_to: None,
                offloaded_path: None,
                offloaded_hash: None,
                inode: Some(n as i64),
            })
        }
        5 => match (
            random_one(lib, "tags", ""),
            random_one(lib, "file_entries", files),
        ) {
            (Some(t), Some(e)) => Change::insert(&TagAssignment::new(t, e)),
            _ => new_tag(n),
        },
        6 => match (
            random_one(lib, "albums", ""),
            random_one(lib, "file_entries", files),
        ) {
            (Some(a), Some(e)) => Change::insert(&AlbumItem::new(a, e)),
            _ => new_tag(n),
        },
        7 => match random_one(lib, "file_entries", files) {
            Some(e) => {
                let id = UserMetadata::id_for(e);
                if count_with(
                    lib,
                    "SELECT COUNT(*) FROM user_metadata WHERE uuid = ?1",
                    [id],
                ) > 0
                {
                    Change::update::<UserMetadata>(id)
                        .set("note", format!("n{n}"))
                        .set("favorite", n.is_multiple_of(2))
                } else {
                    Change::insert(&UserMetadata {
                        id,
                        entry: e,
                        note: Some(format!("n{n}")),
                        favorite: false,
                    })
                }
            }
            None => new_tag(n),
        },
        _ => match random_one(lib, "file_entries", files) {
            Some(e) => Change::update::<FileEntry>(e).set("size", n as i64),
            None => new_tag(n),
        },
    }
}

fn one_delete(lib: &Library, rng: &mut Rng) -> Change {
    let files = "WHERE location IN (SELECT uuid FROM locations WHERE name = 'main')";
    let pick = match rng.below(5) {
        0 => random_one(lib, "tags", "").map(Change::delete::<Tag>),
        1 => random_one(lib, "albums", "").map(Change::delete::<Album>),
        2 => random_one(lib, "file_entries", &format!("{files} AND kind = 1"))
            .map(Change::delete::<FileEntry>),
        3 => random_one(lib, "file_entries", files).map(Change::delete::<FileEntry>),
        _ => random_one(lib, "tag_assignments", "WHERE present = 1")
            .map(Change::delete::<TagAssignment>),
    };
    pick.unwrap_or_else(|| new_tag(rng.next()))
}

/// Entries the peer wrote: tags created, renamed and deleted, tags put on files.
/// `seq` is the peer's next `origin_seq`, kept in memory: reading it from the log
/// would first move the outbox into the log and hide the crash windows where the
/// outbox holds entries while remote ones are applied.
fn peer_entries(lib: &Library, rng: &mut Rng, seq: &mut u64) -> Vec<LogEntry> {
    let base = lib.hlc().last().max(Hlc::pack(lib.hlc().now_ms(), 0));
    let name = Tag::INFO.field_index("name").unwrap() as u16;
    let color = Tag::INFO.field_index("color").unwrap() as u16;
    let (ta_tag, ta_entry) = (
        TagAssignment::INFO.field_index("tag").unwrap() as u16,
        TagAssignment::INFO.field_index("entry").unwrap() as u16,
    );
    let fw = |field, value| FieldWrite {
        field,
        value,
        base: 0,
    };
    let k = rng.range(5, 30);
    let mut out = Vec::new();
    for i in 0..k {
        let hlc = base + i + 1; // the peer's clock ticks
        let (model, record, op) = match rng.below(4) {
            0 => (
                Tag::INFO,
                Uuid::now_v7(),
                Op::Insert(vec![
                    fw(name, Value::Text(format!("peer{}", *seq))),
                    fw(color, Value::Null),
                ]),
            ),
            1 => match random_one(lib, "tags", "") {
                Some(t) => (
                    Tag::INFO,
                    t,
                    Op::Update(vec![fw(name, Value::Text(format!("peer-r{}.{i}", *seq)))]),
                ),
                None => continue,
            },
            2 => match random_one(lib, "tags", "") {
                Some(t) => (Tag::INFO, t, Op::Delete(vec![])),
                None => continue,
            },
            _ => match (
                random_one(lib, "tags", ""),
                random_one(lib, "file_entries", ""),
            ) {
                (Some(t), Some(e)) => (
                    TagAssignment::INFO,
                    TagAssignment::new(t, e).id,
                    Op::Insert(vec![
                        fw(ta_tag, Value::Uuid(t)),
                        fw(ta_entry, Value::Uuid(e)),
                    ]),
                ),
                _ => continue,
            },
        };
        out.push(LogEntry {
            incarnation: 0,
            origin: PEER,
            origin_seq: *seq,
            hlc,
            lib_seq: None,
            epoch: None,
            model: model.name.to_string(),
            record,
            op,
            seal: None,
        });
        *seq += 1;
    }
    out
}

/// Index a new location in bulk: the location by commit, its rows by `commit_bulk`.
fn bulk(lib: &Library, rng: &mut Rng, vol: Uuid, n: u64) -> concord::Result<()> {
    let loc = location(
        Uuid::now_v7(),
        DEVICE,
        vol,
        &format!("/bulk/{n}"),
        &format!("bulk-{n}"),
    );
    lib.commit(Change::insert(&loc))?;
    let k = rng.range(200, 400);
    let rows = (0..k).map(|i| {
        file(
            Uuid::now_v7(),
            DEVICE,
            loc.id,
            &format!("b{i}"),
            i as i64,
            None,
            Some(i as i64),
        )
    });
    lib.commit_bulk(rows, initial_index(&loc, "fp"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The parent.

/// What the parent carries from one kill to the next.
#[derive(Default)]
struct Checker {
    /// Log position up to which entries went to the shadow replica.
    last_id: i64,
    /// Next expected `origin_seq` per origin.
    next_seq: HashMap<Uuid, u64>,
    max_hlc: u64,
    /// Bulk entries seen: location → row count.
    bulk: BTreeMap<Uuid, u64>,
    /// Statistics, to show the workload did what it should.
    entries: u64,
    peer_entries: u64,
    deletes: u64,
}

const NON_BULK_FILES: &str =
    "SELECT uuid, device, location, parent, name, path, kind, size, modified
     FROM file_entries
     WHERE location NOT IN (SELECT uuid FROM locations WHERE name LIKE 'bulk-%')
     ORDER BY uuid";
const FILE_TOMBSTONES: &str =
    "SELECT uuid FROM tombstones WHERE model = 'file_entry' ORDER BY uuid";

fn shared_digest(lib: &Library) -> String {
    lib.read(|c| digest(c, Scope::Shared)).unwrap().0
}

/// The library at `dir` against a replica that received only log entries.
fn check_replica(lib: &Library, replica: &Library, what: &str) {
    assert_eq!(
        shared_digest(lib),
        shared_digest(replica),
        "{what}: the library and a replica built from its log differ"
    );
    assert!(
        rows(lib, NON_BULK_FILES) == rows(replica, NON_BULK_FILES),
        "{what}: file entries written by commits differ from the log's"
    );
    assert_eq!(
        uuids(lib, FILE_TOMBSTONES, &[]),
        uuids(replica, FILE_TOMBSTONES, &[]),
        "{what}: file-entry tombstones differ from the log's"
    );
}

fn check_after_kill(dir: &Path, shadow: &Library, st: &mut Checker, round: usize, full: bool) {
    // A wall clock far in the past: stamps after reopening must come from the log.
    let clock = Arc::new(ManualClock::new(1_000));
    let lib = Library::open(dir, DEVICE, Box::new(clock)).expect("reopen after kill");
    let what = format!("after kill {round}");

    let new: Vec<(i64, LogEntry)> = lib
        .with_log(|l| l.fetch_after_id(st.last_id, usize::MAX))
        .unwrap();
    if let Some(&(id, _)) = new.last() {
        st.last_id = id;
    }
    for (_, e) in &new {
        // Positions are per replica: each open numbers from 1 again.
        let next = st.next_seq.entry(e.replica()).or_insert(1);
        assert_eq!(
            e.origin_seq,
            *next,
            "{what}: origin_seq of {} jumps (gap or duplicate)",
            e.replica()
        );
        *next += 1;
        st.max_hlc = st.max_hlc.max(e.hlc);
        st.entries += 1;
        if e.origin == PEER {
            st.peer_entries += 1;
        }
        match &e.op {
            Op::Bulk(BulkOperation::InitialIndex {
                location, count, ..
            }) => {
                assert!(
                    st.bulk.insert(*location, *count).is_none(),
                    "{what}: location indexed twice"
                );
            }
            Op::Delete(_) => st.deletes += 1,
            _ => {}
        }
    }
    let vv = lib.with_log(|l| l.version_vector()).unwrap();
    for (origin, next) in &st.next_seq {
        assert_eq!(
            vv.get(origin).copied().unwrap_or(0),
            next - 1,
            "{what}: version vector"
        );
    }

    // The log alone rebuilds the library.
    let entries: Vec<LogEntry> = new.into_iter().map(|(_, e)| e).collect();
    let r = shadow.apply_remote(&entries).unwrap();
    assert!(r.rejected.is_empty(), "{what}: {:?}", r.rejected);
    check_replica(&lib, shadow, &what);

    // Bulk rows exist exactly for bulk entries in the log.
    for loc in uuids(
        &lib,
        "SELECT uuid FROM locations WHERE name LIKE 'bulk-%'",
        &[],
    ) {
        let n = count_with(
            &lib,
            "SELECT COUNT(*) FROM file_entries WHERE location = ?1",
            [loc],
        ) as u64;
        match st.bulk.get(&loc) {
            Some(&want) => assert_eq!(n, want, "{what}: bulk rows of {loc}"),
            None => assert_eq!(n, 0, "{what}: bulk rows of {loc} without their log entry"),
        }
        let shadowed = count_with(
            shadow,
            "SELECT COUNT(*) FROM file_entries WHERE location = ?1",
            [loc],
        );
        assert_eq!(shadowed, 0, "{what}: bulk rows travelled through the log");
    }

    // Stamps after reopening are above everything logged.
    assert!(lib.hlc().last() >= st.max_hlc, "{what}: HLC not re-seeded");
    lib.commit(Change::insert(&tag(
        Uuid::now_v7(),
        &format!("probe{round}"),
    )))
    .unwrap();
    let probe = lib
        .with_log(|l| l.fetch_after_id(st.last_id, usize::MAX))
        .unwrap();
    assert_eq!(probe.len(), 1);
    assert!(
        probe[0].1.hlc > st.max_hlc,
        "{what}: new stamp {} not above logged {}",
        probe[0].1.hlc,
        st.max_hlc
    );
    assert_eq!(
        probe[0].1.origin_seq,
        st.next_seq.get(&DEVICE).copied().unwrap_or(1),
        "{what}: next seq"
    );

    if full {
        // A fresh replica from the whole log, not just the incremental one.
        let tmp = scratch("concord-crash");
        let fresh = Library::create(
            tmp.path(),
            LIB,
            "fresh",
            Uuid::now_v7(),
            Box::new(SystemClock),
        )
        .unwrap();
        let all = all_entries(&lib);
        let r = fresh.apply_remote(&all).unwrap();
        assert!(r.rejected.is_empty(), "{what}: {:?}", r.rejected);
        check_replica(&lib, &fresh, &format!("{what} (full rebuild)"));
        let mut seqs: HashMap<Uuid, Vec<u64>> = HashMap::new();
        for e in &all {
            seqs.entry(e.replica()).or_default().push(e.origin_seq);
        }
        for (origin, mut s) in seqs {
            s.sort_unstable();
            let want: Vec<u64> = (1..=s.len() as u64).collect();
            assert_eq!(s, want, "{what}: origin_seq of {origin}");
        }
    }
}

fn run_parent(kills: usize, seed: u64) {
    let start = Instant::now();
    let tmp = scratch("concord-crash");
    let dir = tmp.path().join("lib");
    drop(Library::create(&dir, LIB, "crash", DEVICE, Box::new(SystemClock)).unwrap());
    let shadow = Library::create(
        &tmp.path().join("shadow"),
        LIB,
        "shadow",
        SHADOW,
        Box::new(SystemClock),
    )
    .unwrap();
    let exe = child_exe(tmp.path());
    let mut rng = Rng(seed);
    let mut st = Checker::default();
    let mut round = 0;
    let mut early_kills = 0;
    while round < kills {
        // Now and then kill during startup and recovery rather than during writes.
        let early = rng.below(8) == 0;
        let stderr_path = tmp.path().join("child.stderr");
        let mut child = spawn(
            Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--ignored"])
                .args(["--test-threads", "1"])
                .env(CHILD_ENV, &dir)
                .env(SEED_ENV, (seed ^ round as u64).to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr_path).unwrap()),
        );
        let stdout = child.stdout.take().unwrap();
        if !early {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).unwrap() == 0 {
                    let _ = child.wait();
                    panic!(
                        "child died before it was ready:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                if line.contains(READY) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(rng.range(5, 50)));
            child.kill().unwrap();
            drop(lines);
        } else {
            std::thread::sleep(Duration::from_millis(rng.range(0, 15)));
            child.kill().unwrap();
            drop(stdout);
        }
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "child was not killed but exited ({status}):\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        if early {
            early_kills += 1;
        } else {
            round += 1;
        }
        let full = round % 50 == 0 && !early;
        check_after_kill(&dir, &shadow, &mut st, round, full);
    }
    // One last full check from the whole log.
    check_after_kill(&dir, &shadow, &mut st, round + 1, true);
    eprintln!(
        "crash: {kills} kills during writes and {early_kills} during startup in {:.1?}; \
         {} entries ({} from the peer, {} deletes), {} bulk indexings",
        start.elapsed(),
        st.entries,
        st.peer_entries,
        st.deletes,
        st.bulk.len()
    );
    assert!(st.bulk.len() >= 3, "the workload indexed in bulk");
    assert!(
        st.peer_entries >= 100,
        "the workload received remote entries"
    );
    assert!(st.deletes >= 100, "the workload deleted");
}

#[test]
fn kill_9_during_writes_keeps_log_and_library_in_step() {
    run_parent(200, 0x1c4a_5e01);
}

/// The long run: `cargo test --test crash -- --ignored kill_9_long`.
#[test]
#[ignore]
fn kill_9_long() {
    run_parent(2000, 0x1c4a_5e02);
}

// ---------------------------------------------------------------------------
// Crash states reproduced exactly (regressions for what the kill loop found).

/// Regression: `apply_remote` appends to `sync.db`, then applies in `library.db`.
/// A crash between the two while the outbox held local entries lost the remote
/// entries for good: recovery moved the outbox into the log first, which advanced
/// the "applied up to" watermark past the remote entries, so they were never
/// applied although the log held them (and the device would forward them).
#[test]
fn recovery_applies_logged_remote_entries_when_the_outbox_is_not_empty() {
    let tmp = scratch("concord-crash");
    let dir = tmp.path().join("lib");
    let lib = Library::create(&dir, LIB, "r", DEVICE, Box::new(SystemClock)).unwrap();
    let peer_tag = Uuid::now_v7();
    let remote = LogEntry {
        incarnation: 0,
        origin: PEER,
        origin_seq: 1,
        hlc: Hlc::pack(lib.hlc().now_ms(), 0),
        lib_seq: None,
        epoch: None,
        model: Tag::INFO.name.into(),
        record: peer_tag,
        op: Op::Insert(vec![
            FieldWrite {
                field: Tag::INFO.field_index("name").unwrap() as u16,
                value: Value::Text("from the peer".into()),
                base: 0,
            },
            FieldWrite {
                field: Tag::INFO.field_index("color").unwrap() as u16,
                value: Value::Null,
                base: 0,
            },
        ]),
        seal: None,
    };
    // The state a crash inside `apply_remote` leaves: the entry is in the log, not
    // applied; a local change waits in the outbox.
    lib.with_log(|l| l.append(std::slice::from_ref(&remote)))
        .unwrap();
    lib.commit(Change::insert(&tag(Uuid::now_v7(), "local")))
        .unwrap();
    lib.simulate_crash(); // no orderly close: that would flush the outbox

    let lib = Library::open(&dir, DEVICE, Box::new(SystemClock)).unwrap();
    assert_eq!(
        count_with(
            &lib,
            "SELECT COUNT(*) FROM tags WHERE uuid = ?1",
            [peer_tag]
        ),
        1,
        "the logged remote entry was applied on recovery"
    );
    assert_eq!(count_with(&lib, "SELECT COUNT(*) FROM tags", []), 2);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 2);
}

/// Regression: `Library::create` wrote the schema and then the library's id in
/// separate steps, so a kill in between left a `library.db` without an id that
/// neither `open` ("has no id") nor `create` ("already holds a library") accepted,
/// and that broke listing the data dir. Creation must be all or nothing.
#[test]
fn kill_9_during_library_creation_leaves_a_library_or_nothing() {
    let tmp = scratch("concord-crash");
    let exe = child_exe(tmp.path());
    let mut rng = Rng(0x1c4a_5e03);
    let mut opened = 0;
    let mut interrupted = 0;
    for round in 0..12 {
        let dir = tmp.path().join(format!("round{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let stderr_path = tmp.path().join("child.stderr");
        let mut child = spawn(
            Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--ignored"])
                .env(CHILD_ENV, &dir)
                .env(MODE_ENV, "create")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr_path).unwrap()),
        );
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains(READY) {
            line.clear();
            assert!(lines.read_line(&mut line).unwrap() > 0, "child died early");
        }
        std::thread::sleep(Duration::from_millis(rng.range(5, 40)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "child exited ({status}):\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        let mut i = 0;
        while dir.join(i.to_string()).exists() {
            let d = dir.join(i.to_string());
            if d.join("library.db").exists() {
                let lib = Library::open(&d, DEVICE, Box::new(SystemClock))
                    .unwrap_or_else(|e| panic!("{}: {e}", d.display()));
                assert_eq!(lib.id(), LIB);
                opened += 1;
            } else {
                // Interrupted before it existed: creating it again works.
                interrupted += 1;
                drop(Library::create(&d, LIB, "c", DEVICE, Box::new(SystemClock)).unwrap());
            }
            i += 1;
        }
    }
    eprintln!("create: {opened} libraries opened, {interrupted} interrupted and created again");
}

/// Regression: when `apply_remote` failed after appending to the log (here a
/// trigger makes `library.db` refuse the row, as a full disk would), the entries
/// stayed logged but unapplied, and the next successful `apply_remote` or outbox
/// flush moved the watermark past them: retries saw duplicates, reopening did not
/// replay them, and the device differed for good from peers it forwarded them to.
/// Replaying them must also move the clock past their stamps, or a later local
/// edit could lose to the older change it overwrote.
#[test]
fn entries_logged_by_a_failed_apply_remote_are_applied_later() {
    let tmp = scratch("concord-crash");
    let now = SystemClock.now_ms();
    // The peer's clock runs a minute ahead, so its stamps are above ours.
    let peer = Library::create(
        &tmp.path().join("peer"),
        LIB,
        "p",
        PEER,
        Box::new(ManualClock::new(now + 60_000)),
    )
    .unwrap();
    for (path, name) in [(0, "again"), (1, "more"), (2, "reopen")] {
        let dir = tmp.path().join(name);
        let clock = || Box::new(ManualClock::new(now));
        let lib = Library::create(&dir, LIB, "r", DEVICE, clock()).unwrap();
        let boom = Uuid::now_v7();
        peer.commit(Change::insert(&tag(boom, "boom"))).unwrap();
        let sent = all_entries(&peer);
        let boom_hlc = sent.last().unwrap().hlc;
        let raw = rusqlite::Connection::open(dir.join("library.db")).unwrap();
        raw.execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON tags WHEN NEW.name = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
        assert!(lib.apply_remote(&sent).is_err());
        raw.execute_batch("DROP TRIGGER fail").unwrap();
        drop(raw);

        // Life goes on: a local change moves the outbox into the log.
        lib.commit(Change::insert(&tag(Uuid::now_v7(), "local")))
            .unwrap();
        lib.flush().unwrap();
        let lib = match path {
            // The same entries are sent again.
            0 => {
                lib.apply_remote(&sent).unwrap();
                lib
            }
            // Newer entries arrive.
            1 => {
                peer.commit(Change::insert(&tag(Uuid::now_v7(), "more")))
                    .unwrap();
                lib.apply_remote(&all_entries(&peer)[sent.len()..]).unwrap();
                lib
            }
            _ => {
                drop(lib);
                Library::open(&dir, DEVICE, clock()).unwrap()
            }
        };
        assert_eq!(
            count_with(&lib, "SELECT COUNT(*) FROM tags WHERE uuid = ?1", [boom]),
            1,
            "{name}: the entry the failed apply logged was applied"
        );
        assert!(
            lib.hlc().last() >= boom_hlc,
            "{name}: the clock absorbed the replayed entry's stamp"
        );
        let replica = Library::create(
            &tmp.path().join(format!("{name}-replica")),
            LIB,
            "x",
            SHADOW,
            Box::new(SystemClock),
        )
        .unwrap();
        replica.apply_remote(&all_entries(&lib)).unwrap();
        check_replica(&lib, &replica, name);
    }
}
