//! A device restored from a backup (real daemons, real Iroh on loopback): A
//! and B share a library; A's data dir is copied; A writes five tags, which
//! reach B; A is killed and its data dir restored from the copy; A writes three
//! tags (with its node running, or offline before its node starts). Both
//! converge: A holds its five lost tags again (given back by B, and reported
//! as a detected rollback), B holds A's three new ones. Before incarnations
//! the new tags reused the lost ones' positions and never reached B.

use std::path::Path;

mod support;
use support::node::*;

/// Copy a data dir as a backup tool would: regular files and folders (the
/// control socket of a running node is not a file and is left out).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        let kind = f.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&f.path(), &to.join(f.file_name()));
        } else if kind.is_file() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

fn has_tags(n: &Node, lib: &str, want: &[String]) -> bool {
    let tags = n.tags(lib);
    want.iter().all(|w| tags.contains(w))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn restore_scenario(offline: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "a");
    let mut b = Node::new(tmp.path(), "b");
    a.start();
    b.start();
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    a.json(&["tag", "create", "lib", "seed"]);
    b.json(&["library", "join", "lib", "a"]);
    wait_until("initial convergence", || converged(&[&a, &b], "lib"));

    // The backup: taken with the node stopped, so the copy is consistent.
    a.stop();
    let backup = tmp.path().join("a-backup");
    copy_dir(&a.dir, &backup);
    a.start();

    let lost = names("lost", 5);
    for t in &lost {
        a.json(&["tag", "create", "lib", t]);
    }
    wait_until("A's five tags on B", || has_tags(&b, "lib", &lost));

    // A dies and its data dir goes back to the backup.
    a.kill();
    std::fs::remove_dir_all(&a.dir).unwrap();
    copy_dir(&backup, &a.dir);

    let fresh = names("new", 3);
    if offline {
        for t in &fresh {
            a.json(&["tag", "create", "lib", t]);
        }
        a.start();
    } else {
        a.start();
        for t in &fresh {
            a.json(&["tag", "create", "lib", t]);
        }
    }
    wait_until("A holds its lost tags again", || has_tags(&a, "lib", &lost));
    wait_until("B holds A's new tags", || has_tags(&b, "lib", &fresh));
    wait_until("A and B converge", || converged(&[&a, &b], "lib"));
    let mut want: Vec<String> = lost.iter().chain(&fresh).cloned().collect();
    want.push("seed".into());
    want.sort();
    assert_eq!(a.tags("lib"), want);
    assert_eq!(b.tags("lib"), want);
    // The rollback is reported where a user looks.
    let status = a.json(&["sync", "status", "lib"]);
    // (At least the five tags; its own Device row may have changed too.)
    assert!(
        status["stats"]["rolled_back"].as_u64() >= Some(5),
        "{status}"
    );
    let plain = String::from_utf8(a.run(&["sync", "status", "lib"]).stdout).unwrap();
    assert!(plain.contains("rollback"), "{plain}");
}

#[test]
fn a_restored_device_gets_its_lost_writes_back_and_its_new_ones_reach_peers() {
    restore_scenario(false);
}

#[test]
fn a_restored_device_writing_offline_before_its_node_starts() {
    restore_scenario(true);
}
