//! Tests of the indexer on real folders: the initial index, rescans written by
//! size, refreshes of a few folders and the watcher's write policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use uuid::Uuid;

use super::*;
use crate::hlc::SystemClock;
use crate::model::FileEntry;
use crate::query;
use crate::sync::txn::Library;

fn lib(dir: &Path) -> Library {
    let dev = Uuid::now_v7();
    Library::create(dir, Uuid::now_v7(), "t", dev, Box::new(SystemClock)).unwrap()
}

fn log_len(l: &Library) -> u64 {
    l.with_log(|log| log.count()).unwrap()
}

fn no_progress() -> impl FnMut(u64, Option<u64>) {
    |_, _| {}
}

#[test]
fn index_then_rescan_by_size() {
    let tmp = tempfile::tempdir().unwrap();
    let l = lib(&tmp.path().join("lib"));
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/f.txt"), "hello").unwrap();
    std::fs::write(root.join("top.txt"), "x").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("..", root.join("a/loop")).unwrap();

    let before = log_len(&l);
    let idx = add_location(&l, &root, &mut no_progress()).unwrap();
    assert_eq!(idx.entries, if cfg!(unix) { 5 } else { 4 });
    // volume + location + one bulk entry
    assert_eq!(log_len(&l) - before, 3);
    let entries = query::location_entries(&l, idx.location.id).unwrap();
    let f = entries.iter().find(|e| e.path == "a/b/f.txt").unwrap();
    let b = entries.iter().find(|e| e.path == "a/b").unwrap();
    assert_eq!(f.parent, Some(b.id));
    assert_eq!(f.size, 5);
    assert_eq!(entries.iter().find(|e| e.path == "a").unwrap().parent, None);

    // Nothing changed: nothing written.
    let before = log_len(&l);
    let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
    assert_eq!(r.mode, WriteMode::None);
    assert_eq!(log_len(&l), before);

    // A few changes: single commits.
    std::fs::write(root.join("a/b/f.txt"), "hello world").unwrap();
    std::fs::remove_file(root.join("top.txt")).unwrap();
    std::fs::write(root.join("new.txt"), "n").unwrap();
    let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
    assert_eq!(r.mode, WriteMode::Single);
    assert_eq!((r.inserted, r.deleted), (1, 1));
    assert!(r.updated >= 1);

    // Twenty new files: one batch.
    std::fs::create_dir(root.join("many")).unwrap();
    for i in 0..20 {
        std::fs::write(root.join(format!("many/{i}")), "m").unwrap();
    }
    let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
    assert_eq!(r.mode, WriteMode::Batch);
    assert_eq!(r.inserted, 21);

    // Removing the folder deletes its contents through the folder's delete.
    std::fs::remove_dir_all(root.join("many")).unwrap();
    let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
    assert_eq!(r.deleted, 21);
    assert!(query::location_entries(&l, idx.location.id)
        .unwrap()
        .iter()
        .all(|e| !e.path.starts_with("many")));

    // Over a thousand new files: one bulk entry for the inserts.
    std::fs::create_dir(root.join("bulk")).unwrap();
    for i in 0..1100 {
        std::fs::write(root.join(format!("bulk/{i}")), "").unwrap();
    }
    let before = log_len(&l);
    let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
    assert_eq!(r.mode, WriteMode::Bulk);
    assert_eq!(r.inserted, 1101);
    // The root's mtime changed: one update batch, then one bulk entry.
    assert!(log_len(&l) - before <= 1 + r.updated);
    assert_eq!(
        query::location_entries(&l, idx.location.id).unwrap().len(),
        1101 + if cfg!(unix) { 5 } else { 4 }
    );
}

#[test]
fn a_locations_own_concord_folder_is_never_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join(".concord/trash/2026-12-01")).unwrap();
    std::fs::create_dir_all(root.join(".concord/incoming")).unwrap();
    std::fs::write(root.join(".concord/trash/2026-12-01/old.txt"), "x").unwrap();
    std::fs::write(root.join(".concord/incoming/abc"), "y").unwrap();
    std::fs::create_dir_all(root.join("docs/.concord")).unwrap();
    std::fs::write(root.join("docs/.concord/mine.txt"), "z").unwrap();
    std::fs::write(root.join(".concordignore"), "").unwrap();
    let scan = walk::scan(&root, &mut |_, _| {}).unwrap();
    let mut paths: Vec<&str> = scan.entries.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    // Only the root's `.concord` is Concord's; one deeper is the user's.
    assert_eq!(
        paths,
        [
            ".concordignore",
            "docs",
            "docs/.concord",
            "docs/.concord/mine.txt"
        ]
    );
    // A refresh of a folder inside it finds nothing either.
    let inside = walk::scan_at(
        &root.join(".concord/trash"),
        ".concord/trash",
        true,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(inside.entries.is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn skips_non_utf8_names_and_reports_progress() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let l = lib(&tmp.path().join("lib"));
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("ok.txt"), "").unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
    std::fs::write(root.join(bad), "").unwrap();
    let mut calls = Vec::new();
    let idx = add_location(&l, &root, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!((idx.entries, idx.skipped), (1, 1));
    assert_eq!(calls.last(), Some(&(1, Some(1))));
    assert!(calls.contains(&(1, None)), "walk progress: {calls:?}");
}

#[test]
fn refuses_nested_and_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let l = lib(&tmp.path().join("lib"));
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("inner")).unwrap();
    std::fs::write(root.join("file"), "").unwrap();
    add_location(&l, &root.join("inner"), &mut no_progress()).unwrap();
    assert!(add_location(&l, &root, &mut no_progress()).is_err());
    assert!(add_location(&l, &root.join("inner"), &mut no_progress()).is_err());
    assert!(add_location(&l, &root.join("missing"), &mut no_progress()).is_err());
    assert!(add_location(&l, &root.join("file"), &mut no_progress()).is_err());
}

/// The stored entries of a location are exactly what a walk finds now: same
/// paths, kinds, sizes and times, and every parent is the entry of the
/// containing folder.
fn assert_matches_disk(l: &Library, location: Uuid, root: &Path) {
    let stored = query::location_entries(l, location).unwrap();
    let by_id: HashMap<Uuid, &FileEntry> = stored.iter().map(|e| (e.id, e)).collect();
    let mut have: Vec<(String, i64, i64, Option<i64>, String)> = stored
        .iter()
        .map(|e| {
            let parent = e.parent.map_or(String::new(), |p| by_id[&p].path.clone());
            (e.path.clone(), e.kind, e.size, e.modified, parent)
        })
        .collect();
    have.sort();
    let walked = scan(root, &mut no_progress()).unwrap();
    let mut want: Vec<(String, i64, i64, Option<i64>, String)> = walked
        .entries
        .iter()
        .map(|s| {
            let parent = s
                .parent
                .map_or(String::new(), |i| walked.entries[i].path.clone());
            (s.path.clone(), s.kind, s.size, s.modified, parent)
        })
        .collect();
    want.sort();
    assert_eq!(have, want);
}

#[test]
fn refresh_dirs_reads_only_the_given_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let l = lib(&tmp.path().join("lib"));
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/f.txt"), "hello").unwrap();
    std::fs::write(root.join("a/g.txt"), "g").unwrap();
    std::fs::write(root.join("top.txt"), "x").unwrap();
    let id = add_location(&l, &root, &mut no_progress())
        .unwrap()
        .location
        .id;
    let opts = RescanOptions::default();
    let refresh = |dirs: &[&str]| {
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        refresh_dirs(&l, id, &dirs, opts, &mut no_progress()).unwrap()
    };

    // Nothing changed: nothing written.
    let before = log_len(&l);
    assert_eq!(refresh(&["", "a", "a/b"]).mode, WriteMode::None);
    assert_eq!(log_len(&l), before);

    // A change in a folder not given is not seen; given, it is.
    std::fs::write(root.join("a/b/f.txt"), "hello, world").unwrap();
    assert_eq!(refresh(&["a"]).updated, 0);
    let r = refresh(&["a/b"]);
    assert_eq!((r.inserted, r.updated, r.deleted), (0, 1, 0));
    assert_matches_disk(&l, id, &root);

    // A new folder with contents, given by a path inside it that is not
    // stored yet: its nearest stored ancestor is read, the folder walked.
    std::fs::create_dir_all(root.join("a/new/deeper")).unwrap();
    std::fs::write(root.join("a/new/deeper/x"), "1").unwrap();
    std::fs::write(root.join("a/new/y"), "22").unwrap();
    std::fs::remove_file(root.join("top.txt")).unwrap();
    let r = refresh(&["a/new/deeper", ""]);
    assert_eq!((r.inserted, r.deleted), (4, 1));
    assert_matches_disk(&l, id, &root);

    // A renamed folder: it and its contents keep their identities.
    let ids = |l: &Library| -> Vec<Uuid> {
        let mut v: Vec<Uuid> = query::location_entries(l, id)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        v.sort();
        v
    };
    let before = ids(&l);
    std::fs::rename(root.join("a/new"), root.join("a/renamed")).unwrap();
    let r = refresh(&["a", "a/new"]);
    assert_eq!((r.inserted, r.deleted), (0, 0));
    assert!(r.updated >= 4, "{r:?}");
    assert_matches_disk(&l, id, &root);
    assert_eq!(ids(&l), before);

    // A file replaced by a folder of the same name, and a folder by a file.
    std::fs::remove_file(root.join("a/g.txt")).unwrap();
    std::fs::create_dir(root.join("a/g.txt")).unwrap();
    std::fs::write(root.join("a/g.txt/inside"), "i").unwrap();
    std::fs::remove_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b"), "now a file").unwrap();
    refresh(&["a/b", "a/g.txt"]);
    assert_matches_disk(&l, id, &root);

    // A path that leaves the location is read as the root.
    std::fs::write(root.join("late.txt"), "l").unwrap();
    assert_eq!(refresh(&["../elsewhere"]).inserted, 1);
    assert_matches_disk(&l, id, &root);
}

#[test]
fn windows_policy_never_writes_bulk() {
    let tmp = tempfile::tempdir().unwrap();
    let l = lib(&tmp.path().join("lib"));
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(&root).unwrap();
    let id = add_location(&l, &root, &mut no_progress())
        .unwrap()
        .location
        .id;
    std::fs::create_dir(root.join("many")).unwrap();
    for i in 0..2500 {
        std::fs::write(root.join(format!("many/{i}")), "").unwrap();
    }
    let mut events = l.subscribe();
    let before = log_len(&l);
    let opts = RescanOptions {
        policy: WritePolicy::Windows,
        cancel: None,
    };
    let r = refresh_dirs(&l, id, &[String::new()], opts, &mut no_progress()).unwrap();
    assert_eq!((r.inserted, r.mode), (2501, WriteMode::Batches));
    // Every entry through the log, in three commits of at most a thousand.
    assert_eq!(log_len(&l) - before, 2501);
    let mut commits = Vec::new();
    while let Ok(e) = events.try_recv() {
        commits.push(e.entries);
    }
    assert_eq!(commits, vec![1000, 1000, 501]);
    assert_matches_disk(&l, id, &root);

    // The same through a full rescan, and a cancelled one writes nothing.
    std::fs::remove_dir_all(root.join("many")).unwrap();
    let cancel = AtomicBool::new(true);
    let stopped = RescanOptions {
        policy: WritePolicy::Windows,
        cancel: Some(&cancel),
    };
    assert!(rescan_location_with(&l, id, stopped, &mut no_progress()).is_err());
    assert_eq!(query::location_entries(&l, id).unwrap().len(), 2501);
    let r = rescan_location_with(&l, id, opts, &mut no_progress()).unwrap();
    assert_eq!((r.deleted, r.mode), (2501, WriteMode::Batches));
    assert_matches_disk(&l, id, &root);
}

#[test]
fn volume_identity_is_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let a = volume_identity(tmp.path()).unwrap();
    let b = volume_identity(tmp.path()).unwrap();
    assert_eq!(a, b);
    assert!(!a.fingerprint.is_empty());
}

#[test]
fn renamed_and_moved_entries_keep_their_identity_and_tags() {
    use crate::model::{Tag, TagAssignment};
    use crate::sync::txn::Change;
    let tmp = tempfile::tempdir().unwrap();
    let l = lib(&tmp.path().join("lib"));
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("docs/x")).unwrap();
    std::fs::write(root.join("a/photo.jpg"), "jpeg").unwrap();
    std::fs::write(root.join("docs/x/y.txt"), "text").unwrap();
    std::fs::write(root.join("stays.txt"), "s").unwrap();
    let loc = add_location(&l, &root, &mut no_progress())
        .unwrap()
        .location
        .id;
    let entry = |path: &str| query::file_entry_by_path(&l, loc, path).unwrap();
    let tag = Tag {
        id: Uuid::now_v7(),
        name: "keep".into(),
        color: None,
    };
    l.commit(Change::insert(&tag)).unwrap();
    let (photo, y) = (
        entry("a/photo.jpg").unwrap().id,
        entry("docs/x/y.txt").unwrap().id,
    );
    for e in [photo, y] {
        l.commit(Change::insert(&TagAssignment::new(tag.id, e)))
            .unwrap();
    }
    let tagged = |e: Uuid| -> i64 {
        l.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM tag_assignments WHERE entry = ?1 AND present = 1",
                [e],
                |r| r.get(0),
            )?)
        })
        .unwrap()
    };

    // Rescan: a file renamed into a new folder, a folder renamed.
    std::fs::create_dir(root.join("b")).unwrap();
    std::fs::rename(root.join("a/photo.jpg"), root.join("b/renamed.jpg")).unwrap();
    std::fs::rename(root.join("docs"), root.join("archive")).unwrap();
    let r = rescan_location(&l, loc, &mut no_progress()).unwrap();
    assert_eq!(
        (r.inserted, r.deleted),
        (1, 0),
        "only the new folder b is new: {r:?}"
    );
    assert_eq!(entry("b/renamed.jpg").unwrap().id, photo);
    assert_eq!(
        entry("b/renamed.jpg").unwrap().parent,
        Some(entry("b").unwrap().id)
    );
    assert_eq!(entry("archive/x/y.txt").unwrap().id, y);
    assert!(entry("a/photo.jpg").is_none() && entry("docs").is_none());
    assert_eq!(
        (tagged(photo), tagged(y)),
        (1, 1),
        "tags follow their files"
    );
    assert_matches_disk(&l, loc, &root);

    // Refresh (the watcher's path): moved back across folders, and out of a
    // folder that is deleted in the same refresh.
    std::fs::rename(root.join("b/renamed.jpg"), root.join("a/again.jpg")).unwrap();
    std::fs::rename(root.join("archive/x/y.txt"), root.join("y.txt")).unwrap();
    std::fs::remove_dir_all(root.join("archive")).unwrap();
    let dirs: Vec<String> = ["a", "b", ""].iter().map(|d| d.to_string()).collect();
    let r = refresh_dirs(&l, loc, &dirs, RescanOptions::default(), &mut no_progress()).unwrap();
    assert_eq!(r.inserted, 0, "{r:?}");
    assert_eq!(entry("a/again.jpg").unwrap().id, photo);
    assert_eq!(entry("y.txt").unwrap().id, y);
    assert!(entry("archive").is_none());
    assert_eq!((tagged(photo), tagged(y)), (1, 1));
    assert_matches_disk(&l, loc, &root);

    // A file replaced by another of a different size is a new file.
    std::fs::remove_file(root.join("stays.txt")).unwrap();
    std::fs::write(root.join("other.txt"), "different").unwrap();
    let r = rescan_location(&l, loc, &mut no_progress()).unwrap();
    assert_eq!((r.inserted, r.deleted), (1, 1));
}
