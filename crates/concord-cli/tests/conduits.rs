//! Conduits between two devices: real `concord` nodes on 127.0.0.1 with
//! real Iroh; the destination's device runs each cycle (`conduit run
//! --wait`), listing the source over `concord/content/1` and fetching what
//! the plan copies. Small trees, a 200 MB file (killed receiver, rename)
//! and 10,000 small files. Every wait is on a condition with a deadline.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod support;
use support::node::*;

/// Every regular file below `root` (not `.concord/`): path → (BLAKE3, mtime, mode).
fn tree(root: &Path) -> BTreeMap<String, (String, std::time::SystemTime, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if rel == ".concord" {
                continue;
            }
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                let hash = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                out.insert(
                    rel,
                    (
                        hash,
                        md.modified().unwrap(),
                        md.permissions().mode() & 0o111,
                    ),
                );
            }
        }
    }
    out
}

/// Two paired nodes sharing library `lib`; `src` a location of A and
/// `dst` one of B, both known to B. Returns (A, B, A's location id, B's).
fn two_devices(tmp: &Path, src: &Path, dst: &Path) -> (Node, Node, String, String) {
    two_devices_with(tmp, src, dst, &[])
}

fn create(b: &Node, from: &str, to: &str, extra: &[&str]) -> String {
    let mut args = vec!["conduit", "create", "lib", "--from", from, "--to", to];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--cadence", "manual"]);
    b.json(&args)["id"].as_str().unwrap().to_string()
}

fn run(b: &Node, id: &str) -> Value {
    b.json(&["conduit", "run", "lib", id, "--wait"])
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Files in the trash of `location` whose path ends with `suffix`.
fn trashed(location: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(days) = std::fs::read_dir(location.join(".concord/trash")) else {
        return out;
    };
    for d in days {
        let p = d.unwrap().path().join(suffix);
        if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[test]
fn replicate_between_two_devices_with_deletes_and_its_guards() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let long = format!("{}.txt", "ł".repeat(120)); // 240 bytes of name
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 31 + i / 977) as u8)
        .collect();
    write(&src.join("empty"), b"");
    write(&src.join("docs/café ✓/日本語.txt"), "こんにちは".as_bytes());
    write(&src.join(format!("docs/{long}")), b"long name");
    write(&src.join("big.bin"), &big);
    write(&src.join("run.sh"), b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..12 {
        write(
            &src.join(format!("many/{i}.txt")),
            format!("file {i}").as_bytes(),
        );
    }
    let (a, b, la, lb) = two_devices(tmp.path(), &src, &dst);
    let keep = create(&b, &la, &format!("{lb}:keep"), &["--policy", "replicate"]);
    let mirror = create(
        &b,
        &la,
        &format!("{lb}:mirror"),
        &["--policy", "replicate", "--delete"],
    );
    // Every member sees the conduits.
    wait_until("A lists both conduits", || {
        a.json(&["conduit", "list", "lib"])
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    // Only the destination's device runs a cycle.
    assert!(a
        .fails(&["conduit", "run", "lib", &keep, "--wait"])
        .contains("destination's device"));

    // First cycle: bytes, mtimes and the exec bit equal.
    for id in [&keep, &mirror] {
        let r = run(&b, id);
        assert_eq!(r["outcome"], "done", "{r}");
    }
    let want = tree(&src);
    assert_eq!(want.len(), 17);
    assert_eq!(tree(&dst.join("keep")), want);
    assert_eq!(tree(&dst.join("mirror")), want);
    let status = b.json(&["conduit", "status", "lib", &keep]);
    assert_eq!(status["state"], "idle", "{status}");
    assert!(status["last_run"].as_i64().is_some(), "{status}");
    assert!(status["bytes_received"].as_u64().unwrap() >= big.len() as u64);

    // A modification propagates.
    write(
        &src.join("docs/café ✓/日本語.txt"),
        "さようなら, changed".as_bytes(),
    );
    run(&b, &keep);
    assert_eq!(tree(&dst.join("keep")), tree(&src));

    // A delete follows only with --delete, and lands in the trash.
    std::fs::remove_file(src.join("run.sh")).unwrap();
    run(&b, &keep);
    run(&b, &mirror);
    assert!(dst.join("keep/run.sh").is_file());
    assert!(!dst.join("mirror/run.sh").exists());
    assert_eq!(trashed(&dst, "mirror/run.sh").len(), 1);
    assert_eq!(tree(&dst.join("mirror")), tree(&src));

    // A mass delete pauses with its reason; --allow-deletes lets it through.
    std::fs::remove_dir_all(src.join("many")).unwrap();
    std::fs::remove_file(src.join("big.bin")).unwrap();
    let err = b.fails(&["conduit", "run", "lib", &mirror, "--wait"]);
    assert!(err.contains("mass-delete"), "{err}");
    assert!(dst.join("mirror/many/0.txt").is_file(), "nothing deleted");
    let status = b.json(&["conduit", "status", "lib", &mirror]);
    assert_eq!(
        (status["state"].as_str(), status["reason"].as_str()),
        (Some("paused"), Some("mass-delete"))
    );
    wait_until("A sees the pause", || {
        a.json(&["conduit", "list", "lib"])
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == mirror.as_str() && c["reason"] == "mass-delete")
    });
    b.json(&["conduit", "resume", "lib", &mirror, "--allow-deletes"]);
    run(&b, &mirror);
    assert_eq!(tree(&dst.join("mirror")), tree(&src));
    assert_eq!(trashed(&dst, "mirror/many/11.txt").len(), 1);

    // A missing source root pauses with source-missing, never "all deleted".
    std::fs::rename(&src, tmp.path().join("unmounted")).unwrap();
    let err = b.fails(&["conduit", "run", "lib", &mirror, "--wait"]);
    assert!(err.contains("source-missing"), "{err}");
    assert!(dst.join("mirror/empty").is_file(), "nothing deleted");
    let status = b.json(&["conduit", "status", "lib", &mirror]);
    assert_eq!(status["reason"], "source-missing");
    drop(a);
}

#[test]
fn archive_removes_the_source_only_after_the_verified_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("outbox"), tmp.path().join("archive"));
    std::fs::create_dir_all(&dst).unwrap();
    write(&src.join("a.txt"), b"first");
    write(&src.join("sub/b.bin"), &vec![7u8; 200_000]);
    write(&src.join("zero"), b"");
    let before = tree(&src);
    let (_a, b, la, lb) = two_devices(tmp.path(), &src, &dst);
    let id = create(&b, &la, &lb, &["--policy", "archive"]);
    run(&b, &id);
    // The copies are here, equal; the source files are gone, each recorded.
    assert_eq!(tree(&dst), before);
    assert!(tree(&src).is_empty(), "{:?}", tree(&src));
    let audit = std::fs::read_to_string(src.join(".concord/audit/archive.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{audit}");
    for l in &lines {
        let path = l["path"].as_str().unwrap();
        assert_eq!(l["blake3"].as_str().unwrap(), before[path].0, "{l}");
        assert_eq!(l["archived_to_device"], "beta");
    }
    // A new file is archived by the next cycle; the archive keeps the old ones.
    write(&src.join("later.txt"), b"later");
    run(&b, &id);
    assert!(!src.join("later.txt").exists());
    assert_eq!(std::fs::read(dst.join("later.txt")).unwrap(), b"later");
    assert!(dst.join("a.txt").is_file());
}

#[test]
fn an_instant_conduit_follows_changes_without_conduit_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write(&src.join("first.txt"), b"one");
    // The safety rescan is an hour away: only the source's changes, indexed
    // by its watcher and synced here, can trigger the cycles below.
    let (_a, b, la, lb) = two_devices_with(
        tmp.path(),
        &src,
        &dst,
        &[("CONCORD_CONDUIT_RESCAN_MS", "3600000")],
    );
    // The default cadence is instant.
    let id = b.json(&[
        "conduit",
        "create",
        "lib",
        "--from",
        &la,
        "--to",
        &lb,
        "--policy",
        "replicate",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("the first file is replicated", || {
        std::fs::read(dst.join("first.txt")).ok().as_deref() == Some(b"one".as_slice())
    });
    write(&src.join("sub/second.txt"), b"two");
    write(&src.join("first.txt"), b"one, edited");
    wait_until("the changes are replicated", || tree(&dst) == tree(&src));
    // And again: each change, not a poll, starts a cycle.
    write(&src.join("sub/third.txt"), b"three");
    write(&src.join("sub/second.txt"), b"two, edited");
    wait_until("the next changes are replicated", || {
        tree(&dst) == tree(&src)
    });
    let status = b.json(&["conduit", "status", "lib", &id]);
    assert_eq!(status["reason"], Value::Null, "{status}");
    assert!(status["last_run"].as_i64().is_some(), "{status}");
}

#[test]
fn sync_between_two_devices_carries_both_ways_and_keeps_both_versions_of_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src.join("a.txt"), b"from alpha");
    write(&src.join("shared.txt"), b"agreed");
    write(&dst.join("docs/b.txt"), b"from beta");
    let (_a, b, la, lb) = two_devices(tmp.path(), &src, &dst);
    let id = create(&b, &la, &lb, &["--policy", "sync"]);
    run(&b, &id);
    assert_eq!(tree(&src), tree(&dst));
    assert_eq!(tree(&src).len(), 3);

    // One-sided changes go the other way, deletions to the other's trash.
    write(&dst.join("docs/b.txt"), b"from beta, edited");
    write(&src.join("new.txt"), b"new on alpha");
    std::fs::remove_file(dst.join("a.txt")).unwrap();
    run(&b, &id);
    assert_eq!(tree(&src), tree(&dst));
    assert_eq!(
        std::fs::read(src.join("docs/b.txt")).unwrap(),
        b"from beta, edited"
    );
    assert!(dst.join("new.txt").is_file());
    assert!(!src.join("a.txt").exists());
    assert_eq!(trashed(&src, "a.txt").len(), 1);

    // Both edit the same file: both versions stay on both devices.
    write(&src.join("shared.txt"), b"alpha's edit");
    write(&dst.join("shared.txt"), b"beta's edit, longer");
    run(&b, &id);
    let (s, d) = (tree(&src), tree(&dst));
    assert_eq!(s, d);
    let contents: Vec<Vec<u8>> = s
        .keys()
        .filter(|p| p.starts_with("shared"))
        .map(|p| std::fs::read(src.join(p)).unwrap())
        .collect();
    assert_eq!(contents.len(), 2, "{s:?}");
    assert!(contents.contains(&b"alpha's edit".to_vec()));
    assert!(contents.contains(&b"beta's edit, longer".to_vec()));
    assert!(s.keys().any(|p| p.starts_with("shared.conflict-")), "{s:?}");
    let status = b.json(&["conduit", "status", "lib", &id]);
    assert_eq!(status["conflicts"].as_array().unwrap().len(), 1, "{status}");

    // Another cycle changes nothing: no copy of a copy.
    run(&b, &id);
    assert_eq!(tree(&src), s);
    assert_eq!(tree(&dst), s);
}

/// `size` bytes that differ from chunk to chunk, written quickly.
fn write_large(p: &Path, size: usize) {
    use std::io::Write;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(p).unwrap());
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

fn status_u64(n: &Node, id: &str, key: &str) -> u64 {
    let s = n.json(&["conduit", "status", "lib", id]);
    s[key].as_u64().unwrap_or_else(|| panic!("{key} in {s}"))
}

/// The file entry named `name` in location `loc`, as `entry list` shows it.
fn entry_named(n: &Node, loc: &str, name: &str) -> Option<Value> {
    n.json(&["entry", "list", "lib", "--location", loc])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

const LARGE: usize = 200 * 1024 * 1024;

#[test]
fn a_large_file_resumes_after_kill_9_of_the_receiver_and_a_rename_moves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write_large(&src.join("big.bin"), LARGE);
    write(&src.join("small.txt"), b"small");
    let (a, mut b, la, lb) = two_devices(tmp.path(), &src, &dst);
    let id = create(&b, &la, &lb, &["--policy", "replicate", "--delete"]);

    // The receiver is killed halfway through the large file...
    b.json(&["conduit", "run", "lib", &id]);
    wait_until("half of the large file received", || {
        status_u64(&b, &id, "bytes_received") >= LARGE as u64 / 2
    });
    b.kill();
    assert!(!dst.join("big.bin").exists(), "killed before the end");
    // ...and after its restart the next cycle resumes it.
    b.start();
    wait_until("B sees A again", || online(&b, "alpha"));
    let r = run(&b, &id);
    assert_eq!(r["outcome"], "done", "{r}");
    let want = tree(&src);
    assert_eq!(tree(&dst), want);
    let sent = status_u64(&a, &id, "bytes_sent");
    assert!(
        sent < LARGE as u64 * 11 / 10,
        "{sent} bytes sent for a {LARGE}-byte file"
    );
    let received = status_u64(&b, &id, "bytes_received");
    assert!(received < LARGE as u64 * 6 / 10, "resumed: {received}");

    // Tags on both ends; then a rename at the source moves the file on
    // the destination, sends (almost) nothing, and the tags follow.
    b.json(&["tag", "create", "lib", "keep"]);
    let on_a = entry_named(&a, &la, "big.bin").expect("A indexed big.bin");
    wait_until("B indexed its copy", || {
        entry_named(&b, &lb, "big.bin").is_some()
    });
    let on_b = entry_named(&b, &lb, "big.bin").unwrap();
    for e in [&on_a, &on_b] {
        b.json(&["tag", "apply", "lib", "keep", e["id"].as_str().unwrap()]);
    }
    std::fs::create_dir_all(src.join("moved")).unwrap();
    std::fs::rename(src.join("big.bin"), src.join("moved/big renamed.bin")).unwrap();
    let r = run(&b, &id);
    assert_eq!(r["outcome"], "done", "{r}");
    assert_eq!(tree(&dst), tree(&src));
    assert!(!dst.join("big.bin").exists());
    let moved = status_u64(&a, &id, "bytes_sent") - sent;
    assert!(moved < 1 << 20, "{moved} bytes sent for a rename");
    assert!(status_u64(&b, &id, "bytes_received") < 1 << 20);
    assert!(trashed(&dst, "big.bin").is_empty(), "moved, not deleted");
    for (n, loc, e) in [(&a, &la, &on_a), (&b, &lb, &on_b)] {
        wait_until("the renamed entry keeps its id and tag", || {
            entry_named(n, loc, "big renamed.bin").is_some_and(|now| {
                now["id"] == e["id"] && now["tags"].as_array().unwrap().contains(&"keep".into())
            })
        });
    }
}

/// A tree of `count` small files in folders of 100, a 0-byte file, unicode
/// and long (255-byte) names.
fn write_many(root: &Path, count: usize) {
    for i in 0..count {
        write(
            &root.join(format!("many/{:03}/{i}.txt", i / 100)),
            format!("small file {i}\n").repeat(i % 7 + 1).as_bytes(),
        );
    }
    write(&root.join("zero"), b"");
    write(
        &root.join("ünïcödé/Ωμέγα 🚀/файл.txt"),
        "données".as_bytes(),
    );
    let long = format!("{}.bin", "x".repeat(251)); // 255 bytes, the limit
    write(&root.join(&long), b"long");
    write(
        &root.join(format!("{}/{}", "é".repeat(127), "名".repeat(85))),
        b"deep",
    );
}

#[test]
fn ten_thousand_small_files_with_odd_names_arrive_equal_by_replicate_and_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    write_many(&src, 10_000);
    let (_a, b, la, lb) = two_devices(tmp.path(), &src, &dst);
    let id = create(&b, &la, &lb, &["--policy", "replicate"]);
    let r = run(&b, &id);
    assert_eq!(r["outcome"], "done", "{r}");
    let want = tree(&src);
    assert_eq!(want.len(), 10_004);
    assert_eq!(tree(&dst), want, "bytes and mtimes equal");
    assert_eq!(std::fs::metadata(dst.join("zero")).unwrap().len(), 0);

    // Synchronize the same tree into another folder of B, then an edit
    // made there goes back.
    let both = tmp.path().join("both");
    std::fs::create_dir_all(&both).unwrap();
    let lb2 = b.json(&["location", "add", "lib", both.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sync = create(&b, &la, &lb2, &["--policy", "sync"]);
    let r = run(&b, &sync);
    assert_eq!(r["outcome"], "done", "{r}");
    assert_eq!(tree(&both), want);
    write(&both.join("many/042/4242.txt"), b"edited on beta");
    let r = run(&b, &sync);
    assert_eq!(r["outcome"], "done", "{r}");
    assert_eq!(
        std::fs::read(src.join("many/042/4242.txt")).unwrap(),
        b"edited on beta"
    );
    assert_eq!(tree(&both), tree(&src));
}
