//! Multi-process tests: real `concord` nodes on 127.0.0.1 with real Iroh.
//! Pairing and its refusals, library setup, restarts, SIGKILL, replication,
//! leader failover, partitions with conflicts, snapshot after retention.
//!
//! Every wait is on a condition with a generous deadline, never a fixed sleep.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod support;
use support::node::*;
use support::BIN;

#[test]
fn pairing_library_setup_refusals_restart_and_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    let mut b = Node::new(tmp.path(), "beta");
    let mut c = Node::new(tmp.path(), "gamma");
    a.start();
    b.start();
    c.start();

    // Refusals before anything is paired: nothing stored anywhere.
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let mut wrong: Vec<char> = ticket.chars().collect();
    let i = wrong.len() - 20; // inside the secret
    wrong[i] = if wrong[i] == 'a' { 'b' } else { 'a' };
    let wrong: String = wrong.into_iter().collect();
    assert!(b.fails(&["pair", "join", &wrong]).contains("wrong secret"));
    let expired = a.json(&["pair", "invite", "--ttl-ms", "1"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b.fails(&["pair", "join", &expired]).contains("expired"));
    assert!(b
        .fails(&["pair", "join", &ticket[..ticket.len() / 2]])
        .contains("invalid ticket"));
    assert!(b
        .fails(&["pair", "join", "not-a-ticket"])
        .contains("invalid ticket"));
    assert!(a.peers().is_empty() && b.peers().is_empty());

    // A invites, B joins; both list each other online.
    b.json(&["pair", "join", &ticket]);
    wait_until("A and B online", || {
        online(&a, "beta") && online(&b, "alpha")
    });
    // The ticket is used up.
    assert!(c.fails(&["pair", "join", &ticket]).contains("already used"));
    assert!(c.peers().is_empty());
    assert_eq!(a.peers().len(), 1);

    // A library with tags and albums; B lists it, joins it, same digest.
    a.json(&["library", "create", "photos"]);
    a.json(&["tag", "create", "photos", "holiday", "--color", "#ff8800"]);
    a.json(&["tag", "create", "photos", "family"]);
    a.json(&["album", "create", "photos", "summer"]);
    let remote = b.json(&["library", "remote", "alpha"]);
    assert_eq!(remote.as_array().unwrap().len(), 1);
    assert_eq!(remote[0]["name"], "photos");
    b.json(&["library", "join", "photos", "alpha"]);
    assert_eq!(a.digest("photos"), b.digest("photos"));

    // Replication both ways (issue 4's first acceptance point).
    a.json(&["tag", "create", "photos", "from-a"]);
    b.json(&["tag", "create", "photos", "from-b"]);
    wait_until("tags everywhere", || {
        a.tags("photos") == b.tags("photos") && a.tags("photos").len() == 4
    });
    wait_until("digests match", || converged(&[&a, &b], "photos"));

    // A private library is not listed to B nor joinable.
    a.json(&["library", "create", "secret", "--private"]);
    let remote = b.json(&["library", "remote", "alpha"]);
    assert!(remote
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["name"] != "secret"));
    let secret_id = a
        .json(&["library", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "secret")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b
        .fails(&["library", "join", &secret_id, "alpha"])
        .contains("not shared"));
    assert!(b
        .json(&["library", "list"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["name"] != "secret"));

    // A never-paired device that knows A's address is refused by A itself.
    let peers_b = std::fs::read(b.dir.join("peers.json")).unwrap();
    c.stop();
    std::fs::write(c.dir.join("peers.json"), &peers_b).unwrap();
    c.start();
    assert!(c
        .fails(&["library", "remote", "alpha"])
        .contains("not paired"));
    let photos_id = a
        .json(&["library", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "photos")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(c
        .fails(&["library", "join", &photos_id, "alpha"])
        .contains("not paired"));
    assert!(c.json(&["library", "list"]).as_array().unwrap().is_empty());
    let members = a
        .json(&["library", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "photos")
        .unwrap()["devices"]
        .as_u64()
        .unwrap();
    assert_eq!(members, 2, "C was not registered");

    // Both stopped and restarted: online again without a new ticket.
    a.stop();
    b.stop();
    a.start();
    b.start();
    wait_until("online after restart", || {
        online(&a, "beta") && online(&b, "alpha")
    });
    b.json(&["tag", "create", "photos", "after-restart"]);
    wait_until("sync after restart", || {
        a.tags("photos").contains(&"after-restart".to_string())
    });

    // SIGKILL, then a clean start (stale lock and socket recovered).
    a.kill();
    assert!(
        a.dir.join("concord.sock").exists(),
        "the killed node left its socket"
    );
    a.start();
    assert_eq!(a.tags("photos").len(), 5);
    wait_until("online after kill", || online(&b, "alpha"));

    // Removal: B loses access at once.
    let b_id = b.device_id();
    a.json(&["device", "remove", &b_id]);
    // The removal closes A's connections to B, so a request B had already
    // sent on the old one may see it close; a fresh one is refused.
    wait_until("B refused as not paired", || {
        b.fails(&["library", "remote", "alpha"])
            .contains("not paired")
    });
    assert!(a.peers().is_empty());
}

#[test]
fn three_devices_leader_killed_failover_and_offline_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Node::new(tmp.path(), n))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    pair(&nodes[0], &nodes[1]);
    pair(&nodes[0], &nodes[2]);
    pair(&nodes[1], &nodes[2]);
    nodes[0].json(&["library", "create", "lib"]);
    nodes[0].json(&["tag", "create", "lib", "seed"]);
    nodes[1].json(&["library", "join", "lib", "n1"]);
    nodes[2].json(&["library", "join", "lib", "n1"]);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until("initial convergence", || converged(&refs, "lib"));
    let leader0 = nodes[0].device_id();
    let st = nodes[1].json(&["sync", "status", "lib"]);
    assert_eq!(st["leader"], leader0.as_str());
    assert_eq!(st["epoch"], 1);

    // Kill the leader; the other two elect the higher device id at a higher epoch.
    nodes[0].kill();
    let ids = [nodes[1].device_id(), nodes[2].device_id()];
    let expected = ids.iter().max().unwrap().clone();
    wait_until("new leader", || {
        let s1 = nodes[1].json(&["sync", "status", "lib"]);
        let s2 = nodes[2].json(&["sync", "status", "lib"]);
        s1["leader"] == expected.as_str()
            && s2["leader"] == expected.as_str()
            && s1["epoch"].as_u64() >= Some(2)
    });

    // Writes on every side during the outage, including the dead leader's data
    // dir in direct mode (no node runs there).
    nodes[1].json(&["tag", "create", "lib", "during-n2"]);
    nodes[2].json(&["tag", "create", "lib", "during-n3"]);
    nodes[0].json(&["tag", "create", "lib", "offline-n1"]);
    wait_until("survivors converge", || {
        converged(&[&nodes[1], &nodes[2]], "lib")
    });
    nodes[0].start();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until("all converge", || converged(&refs, "lib"));
    // Every write arrived exactly once.
    let want = vec!["during-n2", "during-n3", "offline-n1", "seed"];
    for n in &nodes {
        assert_eq!(n.tags("lib"), want);
    }
    let s = nodes[0].json(&["sync", "status", "lib"]);
    assert_eq!(
        s["leader"],
        expected.as_str(),
        "the restarted leader follows the new one"
    );
    // Version vectors equal everywhere.
    let vvs: Vec<Value> = nodes
        .iter()
        .map(|n| n.json(&["sync", "status", "lib"])["version_vector"].clone())
        .collect();
    wait_until("equal version vectors", || {
        let vvs: Vec<Value> = nodes
            .iter()
            .map(|n| n.json(&["sync", "status", "lib"])["version_vector"].clone())
            .collect();
        vvs.windows(2).all(|w| w[0] == w[1])
    });
    drop(vvs);
}

#[test]
fn partition_conflicts_and_snapshot_after_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "left");
    let mut b = Node::new(tmp.path(), "right");
    a.retention_ms = Some(300);
    b.retention_ms = Some(300);
    a.start();
    b.start();
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    let t = a.json(&["tag", "create", "lib", "shared"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let doomed = a.json(&["tag", "create", "lib", "doomed"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.json(&["library", "join", "lib", "left"]);
    wait_until("joined", || converged(&[&a, &b], "lib"));

    // Partition: B stops; both sides keep writing, including the same tag.
    b.stop();
    a.json(&["tag", "rename", "lib", &t, "renamed-left"]);
    b.json(&["tag", "rename", "lib", &t, "renamed-right"]);
    b.json(&["tag", "create", "lib", "right-offline"]);
    a.json(&["tag", "delete", "lib", &doomed]);
    // Away longer than the retention: A prunes what B would need.
    wait_until("A pruned its log", || {
        a.json(&["sync", "status", "lib"])["log_entries"] == 0
    });
    b.start();
    wait_until("healed", || converged(&[&a, &b], "lib"));
    let names = a.tags("lib");
    assert!(names.contains(&"right-offline".to_string()));
    assert!(
        !names.contains(&"doomed".to_string()),
        "deleted while away stays deleted"
    );
    assert_eq!(names.len(), 2);
    let conflicts: Vec<Value> = [&a, &b]
        .iter()
        .flat_map(|n| {
            n.json(&["sync", "conflicts", "lib"])
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    assert!(
        conflicts
            .iter()
            .any(|c| c["record"] == t.as_str() && c["field"] == "name"),
        "the overridden rename is recorded: {conflicts:?}"
    );
    let snapshots = b.json(&["sync", "status", "lib"])["stats"]["snapshots"]
        .as_u64()
        .unwrap()
        + a.json(&["sync", "status", "lib"])["stats"]["snapshots"]
            .as_u64()
            .unwrap();
    assert!(snapshots >= 1, "the returning device got a snapshot");
}

fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
}

#[test]
fn remote_browsing_incremental_refresh_and_tags_on_remote_files() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, 3000);
    let mut a = Node::new(tmp.path(), "owner");
    let mut b = Node::new(tmp.path(), "viewer");
    a.start();
    b.start();
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    let log_before = a.json(&["sync", "status", "lib"])["stats"].clone();
    let added = a.json(&["location", "add", "lib", tree.to_str().unwrap()]);
    assert_eq!(added["entries"], 3020, "3000 files in 20 folders");
    drop(log_before);
    b.json(&["library", "join", "lib", "owner"]);
    wait_until("B sees A's location", || {
        b.json(&["location", "list", "lib"])
            .as_array()
            .unwrap()
            .len()
            == 1
    });

    // Browsing A's entries pulls them on demand.
    let a_id = a.device_id();
    let listed = b.json(&["entry", "list", "lib", "--device", &a_id]);
    assert_eq!(listed.as_array().unwrap().len(), 3020);

    // 50 files change on A; A rescans; B's refresh moves about 50 rows.
    for i in 0..50 {
        let p = tree.join(format!("d{}", i % 20)).join(format!("f{i}.txt"));
        std::fs::write(p, format!("changed contents of file {i}, longer")).unwrap();
    }
    a.json(&["location", "rescan", "lib", tree.to_str().unwrap()]);
    let pulled = b.json(&["location", "pull", "lib"]);
    let rows = pulled["entries"].as_u64().unwrap();
    assert!(
        (50..=70).contains(&rows),
        "refresh moved {rows} rows, not about 50"
    );
    let sizes: Vec<i64> = b
        .json(&["entry", "list", "lib", "--device", &a_id])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"].as_str().unwrap().ends_with("/f7.txt"))
        .map(|e| e["size"].as_i64().unwrap())
        .collect();
    assert_eq!(
        sizes,
        vec![std::fs::metadata(tree.join("d7/f7.txt")).unwrap().len() as i64]
    );

    // A tag applied on B to one of A's files shows on A; removing it on A removes it on B.
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "d3/f3.txt")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.json(&["tag", "create", "lib", "starred"]);
    b.json(&["tag", "apply", "lib", "starred", &entry]);
    let tagged = |n: &Node| {
        n.json(&["entry", "list", "lib"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["id"] == entry.as_str()
                    && e["tags"].as_array().unwrap().iter().any(|t| t == "starred")
            })
    };
    wait_until("tag on A", || tagged(&a));
    a.json(&["tag", "remove", "lib", "starred", &entry]);
    wait_until("untagged on B", || !tagged(&b));
    wait_until("shared digests match", || {
        a.json(&["library", "digest", "lib", "--shared"])
            == b.json(&["library", "digest", "lib", "--shared"])
    });
    // Having pulled every location, the full digests match too.
    b.json(&["location", "pull", "lib"]);
    assert_eq!(a.digest("lib"), b.digest("lib"));
}

#[test]
fn demo_exits_zero_with_converged_devices() {
    let out = Command::new(BIN)
        .args(["--json", "demo", "--devices", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON value");
    assert_eq!(v["devices"], 3);
    assert!(
        v["epoch"].as_u64().unwrap() >= 2,
        "a re-election happened: {v}"
    );
    assert_ne!(v["leader_before"], v["leader_after"]);
    assert_eq!(
        v["tags"],
        1 + 3 + 2 + 1,
        "seed + one per device + outage writes + offline write"
    );
}

/// `device list` and `sync status` name each peer and show its link: a direct
/// path with its round-trip time, and "N s ago" in plain output while JSON
/// keeps milliseconds since the epoch.
#[test]
fn device_list_and_sync_status_show_names_paths_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    let mut b = Node::new(tmp.path(), "beta");
    a.start();
    b.start();
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    b.json(&["library", "join", "lib", "alpha"]);
    let linked = |v: &Value| v["path"] == "direct" && v["rtt_ms"].as_f64().is_some();
    wait_until("alpha sees a direct link to beta", || {
        a.peers().iter().any(|p| p["name"] == "beta" && linked(p))
    });
    let peer = a.peers().into_iter().find(|p| p["name"] == "beta").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let seen = peer["last_seen"].as_u64().expect("last_seen in ms");
    assert!(
        now.abs_diff(seen) < 60_000,
        "last_seen {seen} is ms since the epoch"
    );
    assert_eq!(peer["online"], true);
    assert!(peer["rtt_ms"].as_f64().unwrap() >= 0.0);

    let plain = support::expect_success(
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&a.dir)
            .args(["device", "list"])
            .output()
            .unwrap(),
        &["device", "list"],
    );
    let line = plain.lines().find(|l| l.contains("beta")).unwrap();
    assert!(plain.starts_with("ID"), "{plain}");
    assert!(
        line.contains("direct") && line.contains(" ms") && line.ends_with(" s ago"),
        "{line}"
    );

    wait_until("sync status names beta with its link", || {
        let st = a.json(&["sync", "status", "lib"]);
        st["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "beta" && linked(p)))
    });
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&b.dir)
        .args(["sync", "status", "lib"])
        .output()
        .unwrap();
    let plain = support::expect_success(out, &["sync", "status", "lib"]);
    assert!(plain.contains("alpha"), "{plain}");
}

/// BLAKE3 of a file's content, to compare copies.
fn content_hash(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap())
}

#[test]
fn entry_fetch_copies_a_file_and_a_folder_of_another_device_verified() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let docs = tree.join("docs/café ✓");
    std::fs::create_dir_all(&docs).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    std::fs::write(docs.join("日本語.txt"), "こんにちは").unwrap();
    std::fs::write(docs.join("empty"), b"").unwrap();
    std::fs::write(tree.join("docs/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("docs/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let (a, mut b, listed) = owner_and_fetcher(tmp.path(), &tree);
    let id_of = |path: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} not listed"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // One file.
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let copy = dest.join("copy.bin");
    let to = copy.to_str().unwrap();
    let fetched = b.json(&["entry", "fetch", "lib", &id_of("big.bin"), "--to", to]);
    assert_eq!(fetched["bytes"], big.len() as u64);
    assert_eq!(fetched["path"], to);
    assert_eq!(content_hash(&copy), content_hash(&tree.join("big.bin")));
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mtime(&copy), mtime(&tree.join("big.bin")));
    assert!(!dest.join(".concord").exists(), "temp folder left behind");

    // A folder: every file, names, empty files, the exec bit.
    let folder = dest.join("docs");
    let fetched = b.json(&[
        "entry",
        "fetch",
        "lib",
        &id_of("docs"),
        "--to",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(fetched["files"], 3);
    for rel in ["café ✓/日本語.txt", "café ✓/empty", "run.sh"] {
        let (src, got) = (tree.join("docs").join(rel), folder.join(rel));
        assert_eq!(content_hash(&got), content_hash(&src), "{rel}");
        assert_eq!(mtime(&got), mtime(&src), "{rel}");
    }
    let mode = std::fs::metadata(folder.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o100, 0o100, "exec bit lost");

    // Refusals change nothing.
    assert!(b
        .fails(&["entry", "fetch", "lib", &id_of("big.bin"), "--to", to])
        .contains("already exists"));
    assert!(b
        .fails(&["entry", "fetch", "lib", &id_of("big.bin")])
        .contains("--to"));
    let own = a.json(&["entry", "list", "lib"]);
    let own_id = own.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let elsewhere = dest.join("nope");
    assert!(a
        .fails(&[
            "entry",
            "fetch",
            "lib",
            &own_id,
            "--to",
            elsewhere.to_str().unwrap()
        ])
        .contains("already on this device"));
    assert!(!elsewhere.exists());
    b.stop();
    assert!(b
        .fails(&[
            "entry",
            "fetch",
            "lib",
            &id_of("big.bin"),
            "--to",
            elsewhere.to_str().unwrap()
        ])
        .contains("needs the network"));
}

#[test]
fn entry_fetch_resumes_after_the_receiving_node_is_killed_with_sigkill() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(tree.join("big.bin")).unwrap());
        let mut xof = blake3::Hasher::new().update(b"F4").finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..SIZE >> 20 {
            xof.fill(&mut buf);
            out.write_all(&buf).unwrap();
        }
    }
    let (_a, mut b, listed) = owner_and_fetcher(tmp.path(), &tree);
    let id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "big.bin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let copy = dest.join("big.bin");
    let args = [
        "entry",
        "fetch",
        "lib",
        id.as_str(),
        "--to",
        copy.to_str().unwrap(),
    ];

    let mut first = Command::new(BIN)
        .arg("--data-dir")
        .arg(&b.dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("half of the file verified on B's disk", || {
        concord_node::transfer::partial::resumable_bytes(&dest) > SIZE / 2
    });
    b.kill(); // SIGKILL of the node doing the transfer
    assert!(!first.wait().unwrap().success());
    assert!(!copy.exists(), "an unfinished file got its name");

    b.start();
    let mut again = vec!["--json"];
    again.extend_from_slice(&args);
    let out = support::one_json(&support::expect_success(b.run(&again), &again));
    assert_eq!(out["bytes"], SIZE);
    let received = out["received"].as_u64().unwrap();
    assert!(
        received < SIZE * 55 / 100,
        "{received} bytes received after the restart"
    );
    assert_eq!(content_hash(&copy), content_hash(&tree.join("big.bin")));
}

/// Two paired nodes, "owner" with `tree` as a location of library "lib" and
/// "fetcher" joined to it, and the owner's entries as the fetcher lists them.
fn owner_and_fetcher(
    tmp: &std::path::Path,
    tree: &std::path::Path,
) -> (Node, Node, serde_json::Value) {
    let mut a = Node::new(tmp, "owner");
    let mut b = Node::new(tmp, "fetcher");
    a.start();
    b.start();
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    a.json(&["location", "add", "lib", tree.to_str().unwrap()]);
    b.json(&["library", "join", "lib", "owner"]);
    wait_until("B sees A's location", || {
        b.json(&["location", "list", "lib"])
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let listed = b.json(&["entry", "list", "lib", "--device", &a.device_id()]);
    (a, b, listed)
}
