//! Offloaded entries stay (issue "Offload", DESIGN §12): an entry whose
//! content an Offload conduit moved away keeps its UUID and tags while its
//! file is absent, through rescans and watcher refreshes; a file reappearing
//! at its path makes it local again; the offload fields are synced (in the
//! log and the digest); an older `library.db` gets their columns on open.

use std::path::Path;

use concord::hlc::SystemClock;
use concord::index::{
    add_location, commit_local, commit_offloaded, refresh_dirs, rescan_location, OffloadedTo,
    RescanOptions,
};
use concord::model::{FileEntry, Tag, TagAssignment};
use concord::{query, Change, Library, Uuid};

mod support;

fn lib(dir: &Path) -> Library {
    Library::create(
        dir,
        Uuid::now_v7(),
        "t",
        Uuid::now_v7(),
        Box::new(SystemClock),
    )
    .unwrap()
}

fn entry(lib: &Library, location: Uuid, path: &str) -> Option<FileEntry> {
    query::file_entry_by_path(lib, location, path).unwrap()
}

fn tags_of(lib: &Library, id: Uuid) -> Vec<String> {
    let all = query::file_entries(lib, Default::default()).unwrap();
    all.into_iter()
        .find(|e| e.entry.id == id)
        .map(|e| e.tags)
        .unwrap_or_default()
}

fn to(path: &str) -> OffloadedTo {
    OffloadedTo {
        location: Uuid::now_v7(),
        path: format!("nas/{path}"),
        hash: blake3::hash(b"x").to_hex().to_string(),
    }
}

/// Offload `path` (record it, then remove the file as the conduit would).
fn offload(lib: &Library, root: &Path, location: Uuid, path: &str) -> (FileEntry, OffloadedTo) {
    let e = entry(lib, location, path).unwrap();
    let dest = to(path);
    commit_offloaded(lib, e.id, &dest, || {
        std::fs::remove_file(root.join(path))?;
        Ok(())
    })
    .unwrap();
    (e, dest)
}

/// A library with one indexed location: `a/old.txt`, `a/keep.txt`, `b/x.txt`,
/// `top.txt`; `a/old.txt` tagged `Work`.
fn setup(tmp: &Path) -> (Library, std::path::PathBuf, Uuid, Uuid) {
    let l = lib(&tmp.join("lib"));
    let root = tmp.join("tree");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    for (p, body) in [
        ("a/old.txt", "old"),
        ("a/keep.txt", "keep"),
        ("b/x.txt", "x"),
        ("top.txt", "t"),
    ] {
        std::fs::write(root.join(p), body).unwrap();
    }
    let loc = add_location(&l, &root, &mut |_, _| {}).unwrap().location.id;
    let tag = Tag {
        id: Uuid::now_v7(),
        name: "Work".into(),
        color: None,
    };
    let old = entry(&l, loc, "a/old.txt").unwrap();
    l.commit_batch(vec![
        Change::insert(&tag),
        Change::insert(&TagAssignment::new(tag.id, old.id)),
    ])
    .unwrap();
    (l, root, loc, old.id)
}

#[test]
fn a_rescan_keeps_an_offloaded_entry_and_a_returning_file_makes_it_local() {
    let tmp = support::scratch("offload-entries");
    let (l, root, loc, old_id) = setup(tmp.path());
    let (_, dest) = offload(&l, &root, loc, "a/old.txt");
    let e = entry(&l, loc, "a/old.txt").unwrap();
    assert_eq!(OffloadedTo::of(&e), Some(dest.clone()));

    // Absent on disk, yet kept: same UUID, same tags.
    let r = rescan_location(&l, loc, &mut |_, _| {}).unwrap();
    assert_eq!(r.deleted, 0, "{r:?}");
    let e = entry(&l, loc, "a/old.txt").unwrap();
    assert_eq!((e.id, OffloadedTo::of(&e)), (old_id, Some(dest)));
    assert_eq!(tags_of(&l, old_id), ["Work"]);

    // A file deleted the ordinary way still goes.
    std::fs::remove_file(root.join("top.txt")).unwrap();
    let r = rescan_location(&l, loc, &mut |_, _| {}).unwrap();
    assert_eq!(r.deleted, 1);
    assert!(entry(&l, loc, "top.txt").is_none());

    // The file comes back (fetched, or a new one written): local again.
    std::fs::write(root.join("a/old.txt"), "back again").unwrap();
    let r = rescan_location(&l, loc, &mut |_, _| {}).unwrap();
    // The entry (and its folder's time, unless it kept the same millisecond);
    // nothing inserted, nothing deleted.
    assert!(r.inserted == 0 && r.deleted == 0 && r.updated >= 1, "{r:?}");
    let e = entry(&l, loc, "a/old.txt").unwrap();
    assert_eq!(e.id, old_id);
    assert_eq!(
        (e.offloaded_to, e.offloaded_path, e.offloaded_hash, e.size),
        (None, None, None, 10)
    );
    assert_eq!(tags_of(&l, old_id), ["Work"]);
}

#[test]
fn the_pinned_set_is_the_tagged_files_and_folders() {
    use concord::conduit::offload::Pinned;
    let tmp = support::scratch("offload-entries");
    let (l, _root, loc, _) = setup(tmp.path());
    let pin = Tag {
        id: Uuid::now_v7(),
        name: "Pinned".into(),
        color: None,
    };
    let b = entry(&l, loc, "b").unwrap();
    let keep = entry(&l, loc, "a/keep.txt").unwrap();
    l.commit_batch(vec![
        Change::insert(&pin),
        Change::insert(&TagAssignment::new(pin.id, b.id)),
        Change::insert(&TagAssignment::new(pin.id, keep.id)),
    ])
    .unwrap();
    let paths = query::tagged_paths(&l, loc, pin.id).unwrap();
    assert_eq!(paths, ["a/keep.txt", "b"]);
    let pinned = Pinned::new(paths);
    assert!(pinned.covers("b/x.txt") && pinned.covers("a/keep.txt"));
    assert!(!pinned.covers("a/old.txt") && !pinned.covers("top.txt"));
    // Untagged: no longer pinned.
    l.commit(Change::delete::<TagAssignment>(
        TagAssignment::new(pin.id, b.id).id,
    ))
    .unwrap();
    assert_eq!(
        query::tagged_paths(&l, loc, pin.id).unwrap(),
        ["a/keep.txt"]
    );
}

#[test]
fn a_vanished_folder_keeps_its_offloaded_entries_and_drops_the_rest() {
    let tmp = support::scratch("offload-entries");
    let (l, root, loc, old_id) = setup(tmp.path());
    offload(&l, &root, loc, "a/old.txt");
    let folder = entry(&l, loc, "a").unwrap();
    std::fs::remove_dir_all(root.join("a")).unwrap();
    std::fs::remove_dir_all(root.join("b")).unwrap();
    let r = rescan_location(&l, loc, &mut |_, _| {}).unwrap();
    // b and b/x.txt, a/keep.txt; a stays as the folder of a/old.txt.
    assert_eq!(r.deleted, 3, "{r:?}");
    assert_eq!(entry(&l, loc, "a").map(|e| e.id), Some(folder.id));
    assert_eq!(entry(&l, loc, "a/old.txt").unwrap().parent, Some(folder.id));
    assert!(entry(&l, loc, "a/keep.txt").is_none());
    assert!(entry(&l, loc, "b").is_none() && entry(&l, loc, "b/x.txt").is_none());
    assert_eq!(tags_of(&l, old_id), ["Work"]);
    // Another rescan changes nothing.
    let r = rescan_location(&l, loc, &mut |_, _| {}).unwrap();
    assert_eq!((r.inserted, r.updated, r.deleted), (0, 0, 0), "{r:?}");
}

#[test]
fn a_watcher_refresh_keeps_offloaded_entries_too() {
    let tmp = support::scratch("offload-entries");
    let (l, root, loc, old_id) = setup(tmp.path());
    offload(&l, &root, loc, "a/old.txt");
    let refresh = |dirs: &[&str]| {
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        refresh_dirs(&l, loc, &dirs, RescanOptions::default(), &mut |_, _| {}).unwrap()
    };
    // The file's folder refreshed: the offloaded entry stays.
    let r = refresh(&["a"]);
    assert_eq!(r.deleted, 0, "{r:?}");
    assert!(entry(&l, loc, "a/old.txt").is_some());

    // Its whole folder removed: the folder and the offloaded entry stay,
    // the folder's other contents go.
    std::fs::remove_dir_all(root.join("a")).unwrap();
    let r = refresh(&["", "a"]);
    assert_eq!(r.deleted, 1, "{r:?}");
    assert!(entry(&l, loc, "a").is_some());
    assert!(entry(&l, loc, "a/keep.txt").is_none());
    let e = entry(&l, loc, "a/old.txt").unwrap();
    assert_eq!((e.id, e.offloaded_to.is_some()), (old_id, true));

    // Fetched back: local again, same UUID and tags.
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/old.txt"), "old").unwrap();
    refresh(&["", "a"]);
    let e = entry(&l, loc, "a/old.txt").unwrap();
    assert_eq!((e.id, e.offloaded_to), (old_id, None));
    assert_eq!(tags_of(&l, old_id), ["Work"]);
}

#[test]
fn commit_local_returns_an_entry_and_only_the_owner_switches_one() {
    let tmp = support::scratch("offload-entries");
    let (l, root, loc, old_id) = setup(tmp.path());
    offload(&l, &root, loc, "a/old.txt");
    std::fs::write(root.join("a/old.txt"), "old").unwrap();
    commit_local(&l, old_id).unwrap();
    assert_eq!(entry(&l, loc, "a/old.txt").unwrap().offloaded_to, None);
    // Local already: nothing written.
    let before = support::all_entries(&l).len();
    commit_local(&l, old_id).unwrap();
    assert_eq!(support::all_entries(&l).len(), before);
    // A failed removal leaves the entry offloaded and the file; the next
    // rescan sees the file and makes it local again (never lost).
    let err = commit_offloaded(&l, old_id, &to("a/old.txt"), || {
        Err(concord::Error::Other("disk busy".into()))
    });
    assert!(err.is_err());
    assert!(entry(&l, loc, "a/old.txt").unwrap().offloaded_to.is_some());
    rescan_location(&l, loc, &mut |_, _| {}).unwrap();
    assert_eq!(entry(&l, loc, "a/old.txt").unwrap().offloaded_to, None);
    // A destination path or hash peers could not use is refused before
    // anything is written or removed.
    for (path, hash) in [
        ("../up", to("x").hash),
        ("a//b", to("x").hash),
        ("", to("x").hash),
        ("ok", "ABC".to_string()),
    ] {
        let bad = OffloadedTo {
            location: Uuid::now_v7(),
            path: path.into(),
            hash,
        };
        let e = commit_offloaded(&l, old_id, &bad, || panic!("removed")).unwrap_err();
        assert!(e.to_string().contains("offload"), "{e}");
    }
    assert_eq!(entry(&l, loc, "a/old.txt").unwrap().offloaded_to, None);
    // Folders are not offloaded; unknown entries are refused with a message.
    let dir = entry(&l, loc, "a").unwrap();
    let e = commit_offloaded(&l, dir.id, &to("a"), || Ok(())).unwrap_err();
    assert!(e.to_string().contains("not a file"), "{e}");
    assert!(commit_local(&l, Uuid::now_v7()).is_err());
}

#[test]
fn the_offload_fields_are_synced_and_part_of_the_digest() {
    let tmp = support::scratch("offload-entries");
    let lib_id = Uuid::now_v7();
    let (da, db) = (Uuid::now_v7(), Uuid::now_v7());
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
    let loc = support::location(Uuid::now_v7(), da, vol.id, "/p", "photos");
    let file = support::file(Uuid::now_v7(), da, loc.id, "f.jpg", 3, Some(1), None);
    a.commit_batch(vec![
        Change::insert(&vol),
        Change::insert(&loc),
        Change::insert(&file),
    ])
    .unwrap();
    b.apply_remote(&support::all_entries(&a)).unwrap();
    let before = support::digest_all(&a);
    assert_eq!(support::digest_all(&b), before);

    let dest = to("f.jpg");
    commit_offloaded(&a, file.id, &dest, || Ok(())).unwrap();
    assert_ne!(
        support::digest_all(&a),
        before,
        "the field is in the digest"
    );
    b.apply_remote(&support::all_entries(&a)).unwrap();
    assert_eq!(support::digest_all(&b), support::digest_all(&a));
    let seen = query::file_entry(&b, file.id).unwrap().unwrap();
    assert_eq!(OffloadedTo::of(&seen), Some(dest));
    // Only the three fields differ from the entry as it was.
    assert_eq!(
        FileEntry {
            offloaded_to: None,
            offloaded_path: None,
            offloaded_hash: None,
            ..seen
        },
        file
    );
    // Another device cannot switch an entry it does not own.
    let e = commit_local(&b, file.id).unwrap_err();
    assert!(e.to_string().contains("only its owner"), "{e}");

    commit_local(&a, file.id).unwrap();
    b.apply_remote(&support::all_entries(&a)).unwrap();
    assert_eq!(query::file_entry(&b, file.id).unwrap().unwrap(), file);
    assert_eq!(support::digest_all(&b), support::digest_all(&a));
}

#[test]
fn a_library_older_than_offload_gets_the_columns_on_open() {
    let tmp = support::scratch("offload-entries");
    let dev = Uuid::now_v7();
    let dir = tmp.path().join("lib");
    let l = Library::create(&dir, Uuid::now_v7(), "t", dev, Box::new(SystemClock)).unwrap();
    let vol = support::volume(Uuid::now_v7(), dev, "disk", "uuid:1");
    let loc = support::location(Uuid::now_v7(), dev, vol.id, "/p", "photos");
    let file = support::file(Uuid::now_v7(), dev, loc.id, "f.jpg", 3, Some(1), None);
    l.commit_batch(vec![
        Change::insert(&vol),
        Change::insert(&loc),
        Change::insert(&file),
    ])
    .unwrap();
    drop(l);
    // The table as a build before offload left it.
    let conn = concord::rusqlite::Connection::open(dir.join("library.db")).unwrap();
    for f in ["offloaded_to", "offloaded_path", "offloaded_hash"] {
        for c in [f.to_string(), format!("{f}__hlc"), format!("{f}__dev")] {
            conn.execute_batch(&format!("ALTER TABLE file_entries DROP COLUMN {c};"))
                .unwrap();
        }
    }
    drop(conn);
    let l = Library::open(&dir, dev, Box::new(SystemClock)).unwrap();
    assert_eq!(query::file_entry(&l, file.id).unwrap().unwrap(), file);
    commit_offloaded(&l, file.id, &to("f.jpg"), || Ok(())).unwrap();
    let e = query::file_entry(&l, file.id).unwrap().unwrap();
    assert!(e.offloaded_to.is_some());
}
