//! Offload between two devices on a real small volume: alpha's location is
//! a 32 MiB tmpfs (so free space is real), beta's an ordinary folder; real
//! `concord` daemons with real Iroh on 127.0.0.1. The source's device runs
//! the cycles: it offloads the least recently used unpinned files until the
//! threshold is met, keeps pinned ones and a file changed between its copy
//! and its removal, every entry stays (with its tags) on both devices, and
//! files come back byte-identical by `entry fetch` and by pinning. Every
//! wait is on a condition with a deadline.

use std::fs::FileTimes;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

mod support;
use support::node::*;

const MIB: usize = 1 << 20;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (the test is skipped, saying why) when mounting is not permitted.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: mounting a tmpfs is not permitted here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes of the volume holding `p`, as `stat -f` reports them.
fn free_bytes(p: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(p)
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v[0] * v[1]
}

/// The nodes judge "used within the hour" by a clock this far ahead
/// (`CONCORD_TEST_OFFLOAD_CLOCK_AHEAD_MS`): a file's change time (ctime)
/// cannot be set back, so the files written here are made old that way.
const AHEAD: Duration = Duration::from_secs(65 * 60);

/// Set a file's access time to `used` and its modification time one second
/// before (access times stay after modification times and within a day, so
/// reading the file later does not move them).
fn set_used(p: &Path, used: SystemTime) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_times(
        FileTimes::new()
            .set_accessed(used)
            .set_modified(used - Duration::from_secs(1)),
    )
    .unwrap();
}

/// Write `size` bytes unique to `name`, last used at `used`.
fn write_used(p: &Path, name: &str, size: usize, used: SystemTime) -> Vec<u8> {
    let mut data = Vec::with_capacity(size);
    let mut n = 0u64;
    while data.len() < size {
        data.extend_from_slice(blake3::hash(format!("{name}{n}").as_bytes()).as_bytes());
        n += 1;
    }
    data.truncate(size);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, &data).unwrap();
    set_used(p, used);
    data
}

fn hours_ago(h: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(h * 3600)
}

/// Entries of `lib` as `n` lists them, by path.
fn entries(n: &Node, loc: &str) -> std::collections::BTreeMap<String, Value> {
    n.json(&["entry", "list", "lib", "--location", loc])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// Run a cycle on `a` through the pause hook: once the destination holds a
/// batch, `between` runs (the files are copied, not yet removed), then the
/// cycle goes on. Returns the cycle's report.
fn run_through_hook(a: &Node, id: &str, hook: &Path, between: impl FnOnce(&[String])) -> Value {
    std::fs::create_dir_all(hook).unwrap();
    let args = ["--json", "conduit", "run", "lib", id, "--wait"];
    let out = std::thread::scope(|s| {
        let runner = s.spawn(|| a.run(&args));
        let verified = hook.join("verified");
        wait_until("the destination holds a batch", || verified.exists());
        let paths: Vec<String> = std::fs::read_to_string(&verified)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        between(&paths);
        std::fs::write(hook.join("go"), b"").unwrap();
        runner.join().unwrap()
    });
    std::fs::remove_dir_all(hook).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn offload_frees_space_keeps_entries_and_brings_files_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, hook) = (
        tmp.path().join("laptop"),
        tmp.path().join("nas"),
        tmp.path().join("hook"),
    );
    let Some(_mounted) = Tmpfs::mount(&src, "32m") else {
        return;
    };
    std::fs::create_dir_all(&dst).unwrap();
    // 26 MiB of 32: ten old files (old0 the least recently used), a pinned
    // file, a pinned folder's file, and one used a minute ago.
    let mut content = std::collections::BTreeMap::new();
    for i in 0..10u64 {
        let name = format!("old{i}.bin");
        let data = write_used(&src.join(&name), &name, 2 * MIB, hours_ago(20 - i));
        content.insert(name, data);
    }
    // "Recent" is used half an hour ago by the nodes' clock.
    let recent = SystemTime::now() + AHEAD - Duration::from_secs(30 * 60);
    for (name, used) in [
        ("pin.bin", hours_ago(23)),
        ("keep/deep.bin", hours_ago(22)),
        ("recent.bin", recent),
    ] {
        content.insert(
            name.to_string(),
            write_used(&src.join(name), name, 2 * MIB, used),
        );
    }
    let hook_env = hook.to_str().unwrap().to_string();
    let ahead = AHEAD.as_millis().to_string();
    let env = [
        ("CONCORD_TEST_OFFLOAD_PAUSE", hook_env.as_str()),
        ("CONCORD_TEST_OFFLOAD_CLOCK_AHEAD_MS", ahead.as_str()),
    ];
    let (a, b, la, lb) = two_devices_with(tmp.path(), &src, &dst, &env);
    let id = a.json(&[
        "conduit",
        "create",
        "lib",
        "--from",
        &la,
        "--to",
        &lb,
        "--policy",
        "offload",
        "--min-free",
        "12M",
        "--cadence",
        "manual",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The default pin tag exists; pin a file and a folder, tag another file.
    assert!(a.tags("lib").contains(&"Pinned".to_string()));
    let before = entries(&a, &la);
    let id_of = |p: &str| before[p]["id"].as_str().unwrap().to_string();
    a.json(&[
        "tag",
        "apply",
        "lib",
        "Pinned",
        &id_of("pin.bin"),
        &id_of("keep"),
    ]);
    a.json(&["tag", "create", "lib", "work"]);
    a.json(&[
        "tag",
        "apply",
        "lib",
        "work",
        &id_of("old0.bin"),
        &id_of("old1.bin"),
    ]);
    assert!(free_bytes(&src) < 12 * MIB as u64);

    // First cycle: old1 changes after its copy is verified, before removal.
    let report = run_through_hook(&a, &id, &hook, |held| {
        assert!(held.contains(&"old0.bin".to_string()), "{held:?}");
        assert!(held.contains(&"old1.bin".to_string()), "{held:?}");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("old1.bin"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"changed after the copy").unwrap();
        drop(f);
        // Changed now, by the nodes' clock.
        set_used(&src.join("old1.bin"), SystemTime::now() + AHEAD);
    });
    assert!(report["actions"].as_u64().unwrap() >= 1, "{report}");
    assert!(src.join("old1.bin").exists(), "a changed file was removed");
    assert!(std::fs::read(src.join("old1.bin"))
        .unwrap()
        .ends_with(b"changed after the copy"));
    // Later cycles reach the threshold (old1, now recently used, stays).
    for _ in 0..3 {
        if free_bytes(&src) >= 12 * MIB as u64 {
            break;
        }
        run_through_hook(&a, &id, &hook, |_| {});
    }
    assert!(free_bytes(&src) >= 12 * MIB as u64, "threshold not met");
    // Oldest first: what left is a prefix of the old files (old1 aside);
    // pinned and recent files stay.
    let gone: Vec<String> = content
        .keys()
        .filter(|p| !src.join(p).exists())
        .cloned()
        .collect();
    assert!(gone.contains(&"old0.bin".to_string()), "{gone:?}");
    for stays in ["pin.bin", "keep/deep.bin", "recent.bin", "old9.bin"] {
        assert!(src.join(stays).exists(), "{stays} was offloaded");
    }
    let mut olds: Vec<u64> = gone
        .iter()
        .map(|p| p["old".len()..p.len() - 4].parse().unwrap())
        .collect();
    olds.sort();
    let expect: Vec<u64> = (0..=*olds.last().unwrap()).filter(|i| *i != 1).collect();
    assert_eq!(olds, expect, "not the least recently used first");
    for p in &gone {
        assert_eq!(std::fs::read(dst.join(p)).unwrap(), content[p], "{p}");
    }

    // Every entry stays, with its tags, on both devices.
    b.json(&["location", "pull", "lib", &la]);
    for n in [&a, &b] {
        wait_until("offloaded entries show where their bytes are", || {
            let now = entries(n, &la);
            gone.iter()
                .all(|p| now.get(p).is_some_and(|e| e["offloaded_to"] == lb.as_str()))
        });
        let now = entries(n, &la);
        for p in before.keys() {
            assert!(now.contains_key(p), "{}: entry {p} lost", n.name);
        }
        assert_eq!(now["old0.bin"]["tags"], serde_json::json!(["work"]));
        assert_eq!(now["pin.bin"]["tags"], serde_json::json!(["Pinned"]));
        assert_eq!(now["pin.bin"]["offloaded_to"], Value::Null);
    }

    // `entry fetch` brings old0 back, byte-identical; its entry is local.
    // (An offloaded file is named by its path too: its entry stays.)
    let old0 = src.join("old0.bin");
    let back = a.json(&["entry", "fetch", "lib", old0.to_str().unwrap()]);
    assert_eq!(back["bytes"], 2 * MIB as u64, "{back}");
    assert_eq!(
        std::fs::read(src.join("old0.bin")).unwrap(),
        content["old0.bin"]
    );
    wait_until("old0 is local again", || {
        entries(&a, &la)["old0.bin"]["offloaded_to"] == Value::Null
    });

    // Pinning an offloaded file brings it back by the next cycle.
    let pinned_back = gone.iter().find(|p| *p != "old0.bin").unwrap().clone();
    let by_path = src.join(&pinned_back);
    a.json(&["tag", "apply", "lib", "Pinned", by_path.to_str().unwrap()]);
    a.json(&["conduit", "run", "lib", &id, "--wait"]);
    assert_eq!(
        std::fs::read(src.join(&pinned_back)).unwrap(),
        content[&pinned_back]
    );

    // A copy deleted on the destination is lost content, its entry kept.
    let lost = gone
        .iter()
        .find(|p| *p != "old0.bin" && **p != pinned_back)
        .unwrap()
        .clone();
    std::fs::remove_file(dst.join(&lost)).unwrap();
    a.json(&["conduit", "run", "lib", &id, "--wait"]);
    let status = a.json(&["conduit", "status", "lib", &id]);
    let lost_paths: Vec<&str> = status["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(lost_paths, vec![lost.as_str()], "{status}");
    let plain = String::from_utf8(a.run(&["conduit", "status", "lib", &id]).stdout).unwrap();
    assert!(
        plain.contains("lost content") && plain.contains(&lost),
        "{plain}"
    );
    assert!(entries(&a, &la).contains_key(&lost));

    // The destination away: offloading waits and says why.
    drop(b);
    a.fails(&["conduit", "run", "lib", &id, "--wait"]);
    let status = a.json(&["conduit", "status", "lib", &id]);
    assert_eq!(status["reason"], "destination-unreachable", "{status}");
}

#[test]
fn pinning_brings_files_back_without_a_run_ignored_files_stay_and_a_folder_is_fetched_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("laptop"), tmp.path().join("nas"));
    std::fs::create_dir_all(&dst).unwrap();
    let a_data = write_used(&src.join("a.bin"), "a", 300_000, hours_ago(5));
    let b_data = write_used(&src.join("docs/b.bin"), "b", 200_000, hours_ago(6));
    let olds = [
        write_used(&src.join("old/x.bin"), "x", 150_000, hours_ago(8)),
        write_used(&src.join("old/deep/y.bin"), "y", 120_000, hours_ago(9)),
    ];
    // What `.concordignore` names never leaves.
    std::fs::write(src.join(".concordignore"), "*.keep\n").unwrap();
    write_used(&src.join("note.keep"), "n", 100_000, hours_ago(7));
    let ahead = AHEAD.as_millis().to_string();
    let env = [("CONCORD_TEST_OFFLOAD_CLOCK_AHEAD_MS", ahead.as_str())];
    let (a, _b, la, lb) = two_devices_with(tmp.path(), &src, &dst, &env);
    let before = entries(&a, &la);
    // Free space on this volume is always below 99%: an `instant` conduit
    // offloads both files by itself.
    let id = a.json(&[
        "conduit",
        "create",
        "lib",
        "--from",
        &la,
        "--to",
        &lb,
        "--policy",
        "offload",
        "--min-free",
        "99%",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("every file offloaded", || {
        let now = entries(&a, &la);
        ["a.bin", "docs/b.bin", "old/x.bin", "old/deep/y.bin"]
            .iter()
            .all(|p| now[*p]["offloaded_to"] == lb.as_str())
            && !src.join("a.bin").exists()
            && !src.join("docs/b.bin").exists()
    });
    assert_eq!(std::fs::read(dst.join("docs/b.bin")).unwrap(), b_data);
    // Pinning the folder brings its file back, verified; the other stays away.
    let docs = before["docs"]["id"].as_str().unwrap().to_string();
    a.json(&["tag", "apply", "lib", "Pinned", &docs]);
    wait_until("the pinned file is back", || {
        std::fs::read(src.join("docs/b.bin")).is_ok_and(|d| d == b_data)
            && entries(&a, &la)["docs/b.bin"]["offloaded_to"] == Value::Null
    });
    assert!(!src.join("a.bin").exists());
    assert_eq!(std::fs::read(dst.join("a.bin")).unwrap(), a_data);
    assert!(src.join("note.keep").exists() && src.join(".concordignore").exists());
    assert!(!dst.join("note.keep").exists());

    // `entry fetch` of a folder brings back every offloaded file below it,
    // verified, and each entry is local again (the conduit paused first, or
    // its next cycle would offload them once more).
    a.json(&["conduit", "pause", "lib", &id]);
    let folder = before["old"]["id"].as_str().unwrap().to_string();
    let back = a.json(&["entry", "fetch", "lib", &folder]);
    assert_eq!(back["files"], 2, "{back}");
    assert_eq!(back["bytes"], 270_000, "{back}");
    assert_eq!(std::fs::read(src.join("old/x.bin")).unwrap(), olds[0]);
    assert_eq!(std::fs::read(src.join("old/deep/y.bin")).unwrap(), olds[1]);
    wait_until("the folder's entries are local again", || {
        let now = entries(&a, &la);
        ["old/x.bin", "old/deep/y.bin"]
            .iter()
            .all(|p| now[*p]["offloaded_to"] == Value::Null)
    });
    assert!(!src.join("a.bin").exists(), "only the folder came back");
}
