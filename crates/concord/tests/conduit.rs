//! Conduits on real folders: the local executor and cycle for each policy,
//! the guards (mass delete, missing source, full disk), the trash, path
//! safety, and the synced `Conduit` record in real libraries.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use concord::conduit::content::{ContentSource, LocalSource};
use concord::conduit::cycle::{
    run_local_cycle, CycleMemory, CycleOutcome, CycleReport, EndSpec, LocalConduit,
};
use concord::conduit::error::ConduitError;
use concord::conduit::execute::{End, Executor};
use concord::conduit::path::{RelPath, SafeRoot};
use concord::conduit::plan::{Action, Plan, Side};
use concord::conduit::settings::{Cadence, PauseReason, Policy, Settings};
use concord::conduit::tree::{FileState, Version};

mod support;

/// 2026-12-01 17:15:00 UTC: the cycles' clock.
const NOW: i64 = 1_796_145_300_000;

struct Pair {
    _tmp: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    conduit: LocalConduit,
    memory: CycleMemory,
    now: i64,
}

impl Pair {
    fn new(policy: Policy, delete: bool) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("alpha"), tmp.path().join("beta"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
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
                propagate_deletes: delete,
                cadence: Cadence::Manual,
                min_free: None,
                paused: None,
                allow_deletes: false,
            },
            source: end(&a, "alpha"),
            destination: end(&b, "beta"),
        };
        Pair {
            _tmp: tmp,
            a,
            b,
            conduit,
            memory: CycleMemory::default(),
            now: NOW,
        }
    }

    fn cycle(&mut self) -> CycleOutcome {
        self.now += 60_000;
        run_local_cycle(&self.conduit, &mut self.memory, self.now).unwrap()
    }

    fn done(&mut self) -> CycleReport {
        match self.cycle() {
            CycleOutcome::Done(r) => {
                assert!(r.exec.failed.is_empty(), "{:?}", r.exec.failed);
                r
            }
            CycleOutcome::Paused(reason, _) => panic!("paused: {reason:?}"),
        }
    }
}

/// Write `bytes` at `root/rel` with modification time `secs` after 2020.
fn put(root: &Path, rel: &str, bytes: &[u8], secs: u64) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800 + secs))
        .unwrap();
}

/// Every file below `root` outside `.concord/`: content hash, mtime, exec.
fn files(root: &Path) -> BTreeMap<String, (String, SystemTime, bool)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel == ".concord" {
                continue;
            }
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                let hash = blake3::hash(&std::fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string();
                let exec = md.permissions().mode() & 0o100 != 0;
                out.insert(rel, (hash, md.modified().unwrap(), exec));
            }
        }
    }
    out
}

/// The contents of every file in `root`'s trash.
fn trashed(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(".concord/trash")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn tmp_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join(".concord/tmp")).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn replicate_copies_bytes_mtimes_and_modes_and_moves_renames() {
    let mut p = Pair::new(Policy::Replicate, true);
    let long = format!("{}.txt", "l".repeat(251));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    put(&p.a, "empty", b"", 1);
    put(&p.a, "a/b/c.txt", b"first", 2);
    put(&p.a, "日本/файл é.txt", "ü".as_bytes(), 3);
    put(&p.a, &long, b"long", 4);
    put(&p.a, "big.bin", &big, 5);
    put(&p.a, "run.sh", b"#!/bin/sh\n", 6);
    std::fs::set_permissions(p.a.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = p.done();
    assert_eq!(r.exec.done, 6);
    assert_eq!(
        files(&p.a),
        files(&p.b),
        "bytes, mtimes and exec bits equal"
    );
    assert!(tmp_is_empty(&p.b));

    // A modification propagates; the old version is in the trash.
    put(&p.a, "a/b/c.txt", b"second", 7);
    p.done();
    assert_eq!(std::fs::read(p.b.join("a/b/c.txt")).unwrap(), b"second");
    assert_eq!(trashed(&p.b), vec![b"first".to_vec()]);

    // A rename (of a file and of a folder) is a move: no byte is sent.
    std::fs::rename(p.a.join("big.bin"), p.a.join("moved.bin")).unwrap();
    std::fs::rename(p.a.join("日本"), p.a.join("日本2")).unwrap();
    let r = p.done();
    assert!(
        r.plan
            .actions
            .iter()
            .all(|a| matches!(a, Action::Move { .. })),
        "{:?}",
        r.plan.actions
    );
    assert_eq!(r.exec.bytes_copied, 0);
    assert_eq!(files(&p.a), files(&p.b));
    assert!(!p.b.join("日本").exists(), "the emptied folder is removed");

    // Nothing left to do.
    assert!(p.done().plan.actions.is_empty());

    // Only the executable bit changes: the content already there is reused.
    std::fs::set_permissions(p.a.join("empty"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = p.done();
    assert!(
        matches!(r.plan.actions[..], [Action::CopyLocal { .. }]),
        "{:?}",
        r.plan.actions
    );
    assert_eq!(files(&p.a), files(&p.b));
}

/// A folder move parks every moved file in `.concord/tmp/` during one cycle:
/// more than a thousand of them must still finish in that one cycle (temp
/// names never run out, F3's folder of 1,000 files plus a large file).
#[test]
fn a_folder_move_of_more_than_a_thousand_files_finishes_in_one_cycle() {
    let mut p = Pair::new(Policy::Replicate, true);
    for i in 0..1_200 {
        put(&p.a, &format!("many/{i:04}"), format!("{i}").as_bytes(), 1);
    }
    put(&p.a, "big.bin", &[7u8; 100_000], 2);
    p.done();
    std::fs::rename(p.a.join("many"), p.a.join("moved")).unwrap();
    std::fs::rename(p.a.join("big.bin"), p.a.join("moved/big.bin")).unwrap();
    let r = p.done();
    assert_eq!(r.exec.bytes_copied, 0, "moves, not copies");
    assert_eq!(files(&p.a), files(&p.b));
    assert!(tmp_is_empty(&p.b));
    assert!(p.done().plan.actions.is_empty());
}

#[test]
fn trash_and_crash_leftovers_are_purged_after_their_time() {
    let mut p = Pair::new(Policy::Replicate, true);
    put(&p.a, "x", b"1", 1);
    p.done();
    put(&p.a, "x", b"2", 2);
    p.done();
    assert_eq!(trashed(&p.b).len(), 1);
    let tmp = p.b.join(".concord/tmp");
    std::fs::write(tmp.join(format!("{}-1-0.part", p.now)), b"left by a crash").unwrap();
    std::fs::write(tmp.join("not-ours"), b"kept").unwrap();
    p.now += 31 * 24 * 3600 * 1000;
    p.done();
    assert!(trashed(&p.b).is_empty(), "older than 30 days");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["not-ours"]);
}

#[test]
fn replicate_deletes_only_with_the_flag_and_into_the_trash() {
    let mut keep = Pair::new(Policy::Replicate, false);
    put(&keep.a, "x", b"x", 1);
    put(&keep.a, "y", b"y", 1);
    keep.done();
    std::fs::remove_file(keep.a.join("x")).unwrap();
    std::fs::rename(keep.a.join("y"), keep.a.join("z")).unwrap();
    let r = keep.done();
    assert!(
        matches!(r.plan.actions[..], [Action::CopyLocal { .. }]),
        "{:?}",
        r.plan.actions
    );
    assert_eq!(
        std::fs::read(keep.b.join("x")).unwrap(),
        b"x",
        "kept without --delete"
    );
    assert!(keep.b.join("y").exists() && keep.b.join("z").exists());

    let mut del = Pair::new(Policy::Replicate, true);
    put(&del.a, "x", b"x", 1);
    del.done();
    std::fs::remove_file(del.a.join("x")).unwrap();
    del.done();
    assert!(!del.b.join("x").exists());
    assert_eq!(trashed(&del.b), vec![b"x".to_vec()]);
}

#[test]
fn a_burst_of_changes_compresses_to_its_final_state() {
    let mut p = Pair::new(Policy::Synchronize, false);
    put(&p.a, "draft.txt", b"1", 1);
    put(&p.a, "draft.txt", b"12", 2);
    put(&p.a, "draft.txt", b"123", 3);
    std::fs::rename(p.a.join("draft.txt"), p.a.join("final.txt")).unwrap();
    put(&p.a, "final.txt", b"1234", 4);
    let r = p.done();
    assert_eq!(r.plan.actions.len(), 1, "{:?}", r.plan.actions);
    assert_eq!(r.exec.bytes_copied, 4);
    assert_eq!(files(&p.a), files(&p.b));
}

#[test]
fn synchronize_keeps_both_versions_of_a_conflict_on_both_ends() {
    let mut p = Pair::new(Policy::Synchronize, false);
    put(&p.a, "notes/report.txt", b"base", 1);
    p.done();
    put(&p.a, "notes/report.txt", b"alpha's edit", 10);
    put(&p.b, "notes/report.txt", b"beta's later edit", 20);
    let r = p.done();
    assert_eq!(r.plan.conflicts.len(), 1);
    let copy = "notes/report.conflict-alpha-20200101-000010.txt";
    assert_eq!(r.plan.conflicts[0].copy.as_str(), copy);
    assert_eq!(
        r.plan.conflicts[0].kept,
        Side::Destination,
        "the later edit keeps the name"
    );
    for root in [&p.a, &p.b] {
        assert_eq!(
            std::fs::read(root.join("notes/report.txt")).unwrap(),
            b"beta's later edit"
        );
        assert_eq!(std::fs::read(root.join(copy)).unwrap(), b"alpha's edit");
    }
    assert_eq!(files(&p.a), files(&p.b));
    assert!(p.done().plan.actions.is_empty(), "agreed: nothing to do");

    // Both ends edit the conflict copy: no conflict copy of a conflict copy;
    // the losing version is in its end's trash.
    put(&p.a, copy, b"alpha again", 30);
    put(&p.b, copy, b"beta again", 31);
    let r = p.done();
    assert!(r.plan.conflicts.is_empty());
    assert_eq!(files(&p.a).len(), 2);
    assert_eq!(files(&p.a), files(&p.b));
    assert_eq!(std::fs::read(p.a.join(copy)).unwrap(), b"beta again");
    assert_eq!(trashed(&p.a), vec![b"alpha again".to_vec()]);

    // An edit against a deletion: the edit wins, nothing is lost.
    std::fs::remove_file(p.a.join("notes/report.txt")).unwrap();
    put(&p.b, "notes/report.txt", b"edited meanwhile", 40);
    p.done();
    assert_eq!(
        std::fs::read(p.a.join("notes/report.txt")).unwrap(),
        b"edited meanwhile"
    );
}

#[test]
fn synchronize_propagates_renames_and_deletions_both_ways() {
    let mut p = Pair::new(Policy::Synchronize, false);
    put(&p.a, "one", b"1", 1);
    put(&p.b, "two", b"2", 2);
    p.done();
    assert_eq!(files(&p.a), files(&p.b));
    std::fs::rename(p.b.join("one"), p.b.join("uno")).unwrap();
    std::fs::remove_file(p.a.join("two")).unwrap();
    let r = p.done();
    assert!(matches!(
        &r.plan.actions[0],
        Action::Move {
            side: Side::Source,
            ..
        }
    ));
    assert_eq!(r.exec.bytes_copied, 0);
    assert_eq!(files(&p.a).keys().collect::<Vec<_>>(), ["uno"]);
    assert_eq!(files(&p.a), files(&p.b));
    assert_eq!(trashed(&p.b), vec![b"2".to_vec()]);
}

#[test]
fn archive_removes_the_source_only_after_the_verified_copy() {
    let mut p = Pair::new(Policy::Archive, false);
    put(&p.a, "2019/a.jpg", b"photo a", 1);
    put(&p.a, "2019/b.jpg", b"photo b", 2);
    let before = files(&p.a);
    p.done();
    assert!(files(&p.a).is_empty(), "sources released");
    assert_eq!(files(&p.b), before);
    let audit = std::fs::read_to_string(p.a.join(".concord/audit/archive.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 2);
    let rec: serde_json::Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(rec["path"], "2019/a.jpg");
    assert_eq!(rec["blake3"], blake3::hash(b"photo a").to_hex().as_str());
    assert_eq!(rec["archived_to_device"], "beta");

    // A copy that does not verify (a byte flipped on the way) never lands,
    // and the source stays.
    put(&p.a, "c.jpg", b"photo c", 3);
    let (src_root, dst_root) = roots(&p);
    let tree = concord::conduit::tree::scan(&src_root, &Default::default(), None, NOW).unwrap();
    let state = tree.files.values().next().unwrap().clone();
    let path = RelPath::parse("c.jpg").unwrap();
    let plan = Plan {
        actions: vec![
            Action::Copy {
                side: Side::Destination,
                path: path.clone(),
                from: path.clone(),
                version: state.clone(),
                replaces: None,
            },
            Action::Release {
                path: path.clone(),
                expected: state.clone(),
                hash: state.version.hash.unwrap(),
            },
        ],
        ..Plan::default()
    };
    let mut flip = Flipping(LocalSource::new(src_root.clone()));
    let mut unused = LocalSource::new(dst_root.clone());
    let (src, dst) = ends(&src_root, &dst_root);
    let r = Executor::new(&src, &dst, &mut unused, &mut flip, NOW).run(&plan);
    assert!(r.failed[0].1.contains("does not match"), "{:?}", r.failed);
    assert!(r.unsettled.contains(&path));
    assert!(p.a.join("c.jpg").exists());
    assert!(!p.b.join("c.jpg").exists());
    assert!(tmp_is_empty(&p.b));
}

/// A source that flips one byte of what it copies (a corrupted transfer).
struct Flipping(LocalSource);

impl ContentSource for Flipping {
    fn fetch(
        &mut self,
        from: &RelPath,
        version: &Version,
        out: &mut std::fs::File,
    ) -> Result<u64, ConduitError> {
        let mut scratch = tempfile::tempfile().unwrap();
        let unchecked = Version {
            hash: None,
            ..version.clone()
        };
        self.0.fetch(from, &unchecked, &mut scratch)?;
        use std::io::{Read, Seek};
        scratch.rewind().unwrap();
        let mut bytes = Vec::new();
        scratch.read_to_end(&mut bytes).unwrap();
        bytes[0] ^= 1;
        concord::conduit::content::copy_verified(
            &mut &bytes[..],
            out,
            version,
            Path::new(from.as_str()),
        )
    }
}

fn roots(p: &Pair) -> (SafeRoot, SafeRoot) {
    (
        SafeRoot::open(&p.a, None, false).unwrap(),
        SafeRoot::open(&p.b, None, false).unwrap(),
    )
}

fn ends(a: &SafeRoot, b: &SafeRoot) -> (End, End) {
    (
        End {
            root: a.clone(),
            device: "alpha".into(),
        },
        End {
            root: b.clone(),
            device: "beta".into(),
        },
    )
}

#[test]
fn a_mass_delete_pauses_until_deletes_are_allowed() {
    let mut p = Pair::new(Policy::Synchronize, false);
    for i in 0..20 {
        put(&p.a, &format!("f{i}"), format!("{i}").as_bytes(), i);
    }
    p.done();
    for i in 0..11 {
        std::fs::remove_file(p.a.join(format!("f{i}"))).unwrap();
    }
    let CycleOutcome::Paused(PauseReason::MassDelete, r) = p.cycle() else {
        panic!("expected a mass-delete pause");
    };
    assert_eq!(r.plan.deletes(Side::Destination), 11);
    assert_eq!(files(&p.b).len(), 20, "nothing deleted");
    p.conduit.settings.allow_deletes = true;
    p.done();
    assert_eq!(files(&p.b).len(), 9);
    assert_eq!(trashed(&p.b).len(), 11);
}

#[test]
fn a_missing_source_pauses_and_is_never_read_as_deleted() {
    let mut p = Pair::new(Policy::Synchronize, false);
    p.conduit.destination.dir = Some(RelPath::parse("sub").unwrap());
    put(&p.a, "x", b"x", 1);
    p.done();
    assert!(p.b.join("sub/x").exists());
    // The subfolder vanished (a disk unmounted below the location).
    std::fs::rename(p.b.join("sub"), p.b.join("elsewhere")).unwrap();
    assert!(matches!(
        p.cycle(),
        CycleOutcome::Paused(PauseReason::SourceMissing, _)
    ));
    assert!(p.a.join("x").exists());
    std::fs::rename(p.b.join("elsewhere"), p.b.join("sub")).unwrap();
    // The source root is gone.
    let moved = p.a.with_extension("away");
    std::fs::rename(&p.a, &moved).unwrap();
    assert!(matches!(
        p.cycle(),
        CycleOutcome::Paused(PauseReason::SourceMissing, _)
    ));
    assert!(p.b.join("sub/x").exists());
    std::fs::rename(&moved, &p.a).unwrap();
    // On another volume than when it was added.
    p.conduit.source.fingerprint = Some("uuid:some-other-disk".into());
    assert!(matches!(
        p.cycle(),
        CycleOutcome::Paused(PauseReason::SourceMissing, _)
    ));
    p.conduit.source.fingerprint = None;
    p.done();
    assert!(p.b.join("sub/x").exists());
    // A one-way conduit whose destination root vanished never recreates it.
    let mut r = Pair::new(Policy::Replicate, false);
    put(&r.a, "x", b"x", 1);
    std::fs::remove_dir(&r.b).unwrap();
    assert!(matches!(
        r.cycle(),
        CycleOutcome::Paused(PauseReason::DestinationUnreachable, _)
    ));
    assert!(!r.b.exists());
}

#[test]
fn links_are_never_followed_on_either_end() {
    let mut p = Pair::new(Policy::Replicate, false);
    let outside = tempfile::tempdir().unwrap();
    put(outside.path(), "secret", b"secret", 1);
    std::os::unix::fs::symlink(outside.path(), p.a.join("linked-dir")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), p.a.join("linked-file")).unwrap();
    put(&p.a, "in/x.txt", b"x", 1);
    put(&p.a, "ok.txt", b"ok", 1);
    // The destination's `in` is a link out of the location.
    std::os::unix::fs::symlink(outside.path(), p.b.join("in")).unwrap();
    let CycleOutcome::Done(r) = p.cycle() else {
        panic!("paused")
    };
    assert_eq!(r.exec.done, 1, "{:?}", r.exec);
    assert!(
        r.exec.failed[0].1.contains("symbolic link"),
        "{:?}",
        r.exec.failed
    );
    assert!(
        !outside.path().join("x.txt").exists(),
        "nothing written through the link"
    );
    assert_eq!(files(&p.b).keys().collect::<Vec<_>>(), ["ok.txt"]);
}

#[test]
fn ignored_paths_stay_where_they_are() {
    let mut p = Pair::new(Policy::Synchronize, false);
    put(&p.a, ".concordignore", b"*.tmp\n/build/\n", 1);
    put(&p.a, "a.tmp", b"t", 1);
    put(&p.a, "build/out", b"o", 1);
    put(&p.a, "src/build/kept", b"k", 1);
    put(&p.b, "b.tmp", b"t", 1);
    p.done();
    assert_eq!(
        files(&p.b).keys().collect::<Vec<_>>(),
        ["b.tmp", "src/build/kept"]
    );
    assert!(!p.a.join("b.tmp").exists());
}

#[test]
fn a_full_disk_pauses_and_leaves_no_partial_file() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let mut p = Pair::new(Policy::Replicate, false);
    let mount = Mount::tmpfs(&p.b, "1m");
    put(&p.a, "small", b"fits", 1);
    put(&p.a, "big", &vec![7u8; 3 << 20], 2);
    // The cycle sees there is no room before writing anything.
    let CycleOutcome::Paused(PauseReason::DiskFull, r) = p.cycle() else {
        panic!("expected a disk-full pause");
    };
    assert_eq!(r.exec.done, 0);
    assert!(files(&p.b).is_empty());
    // Writing anyway (free space can shrink during a cycle): the write that
    // hits the full disk is removed and the cycle stops there.
    let (src_root, dst_root) = roots(&p);
    let tree = concord::conduit::tree::scan(&src_root, &Default::default(), None, NOW).unwrap();
    let actions = tree
        .files
        .iter()
        .map(|(path, state)| Action::Copy {
            side: Side::Destination,
            path: path.clone(),
            from: path.clone(),
            version: state.clone(),
            replaces: None,
        })
        .collect();
    let plan = Plan {
        actions,
        ..Plan::default()
    };
    let (src, dst) = ends(&src_root, &dst_root);
    let mut into_dst = LocalSource::new(src_root.clone());
    let mut into_src = LocalSource::new(dst_root.clone());
    let r = Executor::new(&src, &dst, &mut into_src, &mut into_dst, NOW).run(&plan);
    assert!(r.disk_full, "{r:?}");
    assert_eq!(r.done, 0, "the copy after the full disk did not run");
    assert!(files(&p.b).is_empty(), "no partial file");
    assert!(tmp_is_empty(&p.b));
    drop(mount);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn the_executor_never_overwrites_a_file_it_has_not_seen() {
    let mut p = Pair::new(Policy::Replicate, false);
    put(&p.a, "f", b"new", 2);
    put(&p.b, "f", b"old", 1);
    let (src_root, dst_root) = roots(&p);
    let scan =
        |r: &SafeRoot| concord::conduit::tree::scan(r, &Default::default(), None, NOW).unwrap();
    let (ta, tb) = (scan(&src_root), scan(&dst_root));
    let path = RelPath::parse("f").unwrap();
    let plan = concord::conduit::planner::plan(&concord::conduit::planner::PlanInput {
        policy: Policy::Replicate,
        propagate_deletes: false,
        source: &ta,
        destination: &tb,
        agreed: &Default::default(),
        source_device: "alpha",
        destination_device: "beta",
    })
    .unwrap();
    // Someone writes the destination file after the scan.
    put(&p.b, "f", b"written meanwhile", 3);
    let (src, dst) = ends(&src_root, &dst_root);
    let mut into_dst = LocalSource::new(src_root.clone());
    let mut into_src = LocalSource::new(dst_root.clone());
    let r = Executor::new(&src, &dst, &mut into_src, &mut into_dst, NOW).run(&plan);
    assert!(r.unsettled.contains(&path));
    assert_eq!(std::fs::read(p.b.join("f")).unwrap(), b"written meanwhile");
    assert!(tmp_is_empty(&p.b));
    // The next cycle sees it and keeps the destination's version in the trash.
    p.done();
    assert_eq!(std::fs::read(p.b.join("f")).unwrap(), b"new");
    assert_eq!(trashed(&p.b), vec![b"written meanwhile".to_vec()]);
    let _: Option<FileState> = None;
}

#[test]
fn conduit_records_sync_and_go_with_their_locations() {
    use concord::hlc::SystemClock;
    use concord::model::{Conduit, Location};
    use concord::{Change, Library, Uuid};
    let tmp = tempfile::tempdir().unwrap();
    let (lib_id, da, db) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let a = Library::create(
        &tmp.path().join("a"),
        lib_id,
        "t",
        da,
        Box::new(SystemClock),
    )
    .unwrap();
    let b = Library::create(
        &tmp.path().join("b"),
        lib_id,
        "t",
        db,
        Box::new(SystemClock),
    )
    .unwrap();
    let vol = support::volume(Uuid::now_v7(), da, "disk", "uuid:1");
    let (l1, l2) = (Uuid::now_v7(), Uuid::now_v7());
    a.commit(Change::insert(&vol)).unwrap();
    a.commit(Change::insert(&support::location(
        l1, da, vol.id, "/p", "photos",
    )))
    .unwrap();
    a.commit(Change::insert(&support::location(
        l2, da, vol.id, "/b", "backup",
    )))
    .unwrap();
    let c = Conduit {
        id: Uuid::now_v7(),
        source: l1,
        source_dir: String::new(),
        destination: l2,
        destination_dir: "2026".into(),
        policy: "replicate".into(),
        propagate_deletes: true,
        cadence: "instant".into(),
        min_free: None,
        pin_tag: None,
        paused: None,
        allow_deletes: false,
        last_run: None,
        last_error: None,
    };
    Settings::from_record(&c).unwrap();
    a.commit(Change::insert(&c)).unwrap();
    b.apply_remote(&support::all_entries(&a)).unwrap();
    assert_eq!(concord::query::conduit(&b, c.id).unwrap(), Some(c.clone()));
    // Any member pauses it; every member sees why.
    b.commit(Change::update::<Conduit>(c.id).set("paused", "mass-delete"))
        .unwrap();
    a.apply_remote(&support::all_entries(&b)).unwrap();
    let seen = concord::query::conduit(&a, c.id).unwrap().unwrap();
    assert_eq!(seen.paused.as_deref(), Some("mass-delete"));
    // Removing a location removes the conduit (never a file).
    a.commit(Change::delete::<Location>(l2)).unwrap();
    assert_eq!(concord::query::conduit(&a, c.id).unwrap(), None);
    b.apply_remote(&support::all_entries(&a)).unwrap();
    assert!(concord::query::conduits(&b).unwrap().is_empty());
    assert_eq!(support::digest_all(&a), support::digest_all(&b));
}

#[test]
fn a_library_older_than_conduits_gets_their_table_on_open() {
    use concord::hlc::SystemClock;
    use concord::{Library, Uuid};
    let tmp = tempfile::tempdir().unwrap();
    let dev = Uuid::now_v7();
    let dir = tmp.path().join("lib");
    drop(Library::create(&dir, Uuid::now_v7(), "t", dev, Box::new(SystemClock)).unwrap());
    let conn = concord::rusqlite::Connection::open(dir.join("library.db")).unwrap();
    conn.execute_batch("DROP TABLE conduits;").unwrap();
    drop(conn);
    let lib = Library::open(&dir, dev, Box::new(SystemClock)).unwrap();
    assert!(concord::query::conduits(&lib).unwrap().is_empty());
}
