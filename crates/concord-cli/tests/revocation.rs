//! Multi-process tests of identity and membership (issue 11's two
//! reproductions): a ticket holder with a copy of another device's
//! `device.json` cannot take over its id, and `device remove` revokes: the
//! removed device's writes reach no member and theirs never reach it, across
//! a restart and its own leadership attempts; a concurrent mutual removal
//! ends in the state ARCHITECTURE.md ("Membership") documents.
//! Real `concord` nodes on 127.0.0.1; every wait is on a condition.

use serde_json::Value;

mod support;
use support::node::*;

fn library_id(n: &Node, name: &str) -> String {
    n.json(&["library", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The members `n` syncs `lib` with (itself excluded).
fn members(n: &Node, lib: &str) -> Vec<String> {
    n.json(&["sync", "status", lib])["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device_id"].as_str().unwrap().to_string())
        .collect()
}

fn leader(n: &Node, lib: &str) -> String {
    n.json(&["sync", "status", lib])["leader"]
        .as_str()
        .unwrap()
        .to_string()
}

fn has_tag(n: &Node, lib: &str, tag: &str) -> bool {
    n.tags(lib).iter().any(|t| t == tag)
}

/// The node id `n` keeps for paired device `device` in `peers.json`.
fn paired_key(n: &Node, device: &str) -> Option<String> {
    let peers: Value =
        serde_json::from_slice(&std::fs::read(n.dir.join("peers.json")).unwrap()).unwrap();
    peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["device_id"] == device)
        .map(|p| p["node_id"].as_str().unwrap().to_string())
}

/// A node whose data dir starts with a copy of `of`'s `device.json` (same
/// device id) but gets a key of its own.
fn impostor(root: &std::path::Path, name: &str, of: &Node) -> Node {
    let mut n = Node::new(root, name);
    std::fs::create_dir_all(&n.dir).unwrap();
    std::fs::copy(of.dir.join("device.json"), n.dir.join("device.json")).unwrap();
    n.start();
    n
}

/// Reproduction 2: D holds a copy of C's `device.json` and its own key. Its
/// pairing with A is refused and nothing is stored; a copy of A's own id is
/// refused too; C keeps its pairing and keeps syncing.
#[test]
fn a_ticket_holder_cannot_take_over_another_devices_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    let mut c = Node::new(tmp.path(), "gamma");
    a.start();
    c.start();
    pair(&a, &c);
    a.json(&["library", "create", "photos"]);
    a.json(&["tag", "create", "photos", "seed"]);
    c.json(&["library", "join", "photos", "alpha"]);
    let c_id = c.device_id();
    let c_key = c.json(&["device"])["node_id"].as_str().unwrap().to_string();
    assert_eq!(paired_key(&a, &c_id), Some(c_key.clone()));

    let d = impostor(tmp.path(), "delta", &c);
    assert_eq!(d.device_id(), c_id, "D claims C's id");
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let err = d.fails(&["pair", "join", &ticket]);
    assert!(err.contains("another key"), "{err}");
    assert_eq!(paired_key(&a, &c_id), Some(c_key.clone()), "C's key kept");
    assert_eq!(a.peers().len(), 1, "D stored nowhere");
    assert!(d.peers().is_empty());

    // A copy of the inviter's own id.
    let e = impostor(tmp.path(), "epsilon", &a);
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let err = e.fails(&["pair", "join", &ticket]);
    assert!(err.contains("its own id"), "{err}");
    assert_eq!(a.peers().len(), 1);

    // C keeps syncing both ways, and the two agree.
    c.json(&["tag", "create", "photos", "from-c"]);
    a.json(&["tag", "create", "photos", "from-a"]);
    wait_until("C's and A's tags on both", || {
        has_tag(&a, "photos", "from-c") && has_tag(&c, "photos", "from-a")
    });
    wait_until("digests equal", || converged(&[&a, &c], "photos"));
    assert_eq!(a.tags("photos"), vec!["from-a", "from-c", "seed"]);
}

/// Reproduction 1: A removes B. B's writes never reach A or C (which learns
/// of the removal and refuses B although it is still paired with it), theirs
/// never reach B, across A's restart and B's own elections; B cannot be
/// shared the library again, even after a new pairing.
#[test]
fn a_removed_device_gets_nothing_and_gives_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    let mut b = Node::new(tmp.path(), "beta");
    let mut c = Node::new(tmp.path(), "gamma");
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    pair(&a, &b);
    pair(&a, &c);
    pair(&b, &c);
    a.json(&["library", "create", "photos"]);
    a.json(&["tag", "create", "photos", "seed"]);
    b.json(&["library", "join", "photos", "alpha"]);
    c.json(&["library", "join", "photos", "alpha"]);
    wait_until("three converge", || converged(&[&a, &b, &c], "photos"));
    let (a_id, b_id, c_id) = (a.device_id(), b.device_id(), c.device_id());
    let lib = library_id(&a, "photos");

    let out = a.json(&["device", "remove", &b_id]);
    assert_eq!(out["device_id"], b_id.as_str());
    assert_eq!(out["libraries"], serde_json::json!([lib]));
    assert!(a.peers().iter().all(|p| p["device_id"] != b_id.as_str()));
    wait_until("C learns of the removal", || {
        !members(&c, "photos").contains(&b_id)
    });
    assert_eq!(members(&a, "photos"), vec![c_id.clone()]);

    // Writes on every side. B's would reach C in milliseconds if C took them:
    // C and A converge on their own later writes first.
    b.json(&["tag", "create", "photos", "removed-1"]);
    a.json(&["tag", "create", "photos", "from-a"]);
    c.json(&["tag", "create", "photos", "from-c"]);
    wait_until("A and C converge", || {
        has_tag(&a, "photos", "from-c")
            && has_tag(&c, "photos", "from-a")
            && converged(&[&a, &c], "photos")
    });
    for n in [&a, &c] {
        assert!(!has_tag(n, "photos", "removed-1"), "{}", n.name);
    }
    assert_eq!(b.tags("photos"), vec!["removed-1", "seed"]);
    // Nothing of the library is shown to B any more.
    let err = b.fails(&["library", "remote", "alpha"]);
    assert!(err.contains("not paired"), "{err}");
    let listed = b.json(&["library", "remote", "gamma"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");

    // A restarts; meanwhile C leads alone and B keeps writing (and, finding
    // no member, elects itself).
    a.stop();
    b.json(&["tag", "create", "photos", "removed-2"]);
    wait_until("C leads", || leader(&c, "photos") == c_id);
    a.start();
    b.json(&["tag", "create", "photos", "removed-3"]);
    c.json(&["tag", "create", "photos", "after-restart"]);
    wait_until("A and C converge after the restart", || {
        has_tag(&a, "photos", "after-restart") && converged(&[&a, &c], "photos")
    });
    wait_until("B leads only itself", || leader(&b, "photos") == b_id);
    for n in [&a, &c] {
        let tags = n.tags("photos");
        assert!(tags.iter().all(|t| !t.starts_with("removed")), "{tags:?}");
        let l = leader(n, "photos");
        assert!(l == a_id || l == c_id, "{} follows {l}", n.name);
        assert!(!members(n, "photos").contains(&b_id));
    }
    let tags = b.tags("photos");
    assert!(
        !tags.contains(&"from-a".into()) && !tags.contains(&"after-restart".into()),
        "{tags:?}"
    );

    // Pairing again works (pairing is between two devices), the library
    // stays closed to B: a removal is final.
    pair(&a, &b);
    let err = a.fails(&["library", "share", "photos", "beta"]);
    assert!(err.contains("removed"), "{err}");
    let err = b.fails(&["library", "join", &lib, "alpha"]);
    assert!(err.contains("not shared"), "{err}");
    assert!(converged(&[&a, &c], "photos"));
}

/// A and B remove each other while neither has seen the other's removal.
/// The documented state: C, the member left, drops both; A keeps itself and
/// drops B; B keeps itself and drops A.
#[test]
fn a_concurrent_mutual_removal_drops_both_on_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    let mut b = Node::new(tmp.path(), "beta");
    let mut c = Node::new(tmp.path(), "gamma");
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    pair(&a, &b);
    pair(&a, &c);
    pair(&b, &c);
    a.json(&["library", "create", "photos"]);
    b.json(&["library", "join", "photos", "alpha"]);
    c.json(&["library", "join", "photos", "alpha"]);
    wait_until("three converge", || converged(&[&a, &b, &c], "photos"));
    let (a_id, b_id, c_id) = (a.device_id(), b.device_id(), c.device_id());

    // Both at once: neither command waits for the other.
    let (ra, rb) = std::thread::scope(|s| {
        let ra = s.spawn(|| a.json(&["device", "remove", &b_id]));
        let rb = s.spawn(|| b.json(&["device", "remove", &a_id]));
        (ra.join().unwrap(), rb.join().unwrap())
    });
    assert_eq!(ra["libraries"].as_array().unwrap().len(), 1);
    assert_eq!(rb["libraries"].as_array().unwrap().len(), 1);
    wait_until("C drops both", || members(&c, "photos").is_empty());
    assert_eq!(members(&a, "photos"), vec![c_id.clone()]);
    assert_eq!(members(&b, "photos"), vec![c_id.clone()]);
    // What either writes now reaches C no more.
    a.json(&["tag", "create", "photos", "from-a"]);
    b.json(&["tag", "create", "photos", "from-b"]);
    c.json(&["tag", "create", "photos", "from-c"]);
    wait_until("C leads alone", || leader(&c, "photos") == c_id);
    assert_eq!(c.tags("photos"), vec!["from-c"]);
}
