//! Multi-process tests of local protection and of what reaches the user:
//! files and the control socket private whatever the umask, another user
//! refused on the socket, pairing with a clock hours off (both ways), the
//! ticket lifetime cap, and control characters escaped in plain output.
//! Real `concord` nodes on 127.0.0.1; every wait is on a condition.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::node::*;
use support::{expect_success, BIN};

/// Every folder and file under `root`, with its mode bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        out.push((dir.clone(), mode(&dir), true));
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                out.push((path, meta.mode() & 0o777, false));
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn names(all: &[(PathBuf, u32, bool)]) -> Vec<String> {
    all.iter()
        .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_file_and_the_socket_are_private_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    let mut b = Node::new(tmp.path(), "beta");
    for n in [&mut a, &mut b] {
        n.umask = Some(0o000);
        n.start();
    }
    pair(&a, &b);
    a.json(&["library", "create", "photos"]);
    a.json(&["tag", "create", "photos", "t"]);
    b.json(&["library", "join", "photos", "alpha"]);
    b.json(&["tag", "create", "photos", "u"]);
    wait_until("both tags on both", || {
        a.tags("photos").len() == 2 && b.tags("photos").len() == 2
    });
    for n in [&a, &b] {
        let all = modes(&n.dir);
        let found = names(&all);
        for expected in [
            "device.json",
            "node.key",
            "node.json",
            "peers.json",
            "node.lock",
            "concord.sock",
            "library.db",
            "library.db-wal",
            "library.db-shm",
            "sync.db",
            "sync.db-wal",
            "sync.db-shm",
            "library.lock",
        ] {
            assert!(
                found.iter().any(|f| f == expected),
                "{expected} in {found:?}"
            );
        }
        for (path, mode, is_dir) in &all {
            let want = if *is_dir { 0o700 } else { 0o600 };
            assert_eq!(*mode, want, "{} is {mode:o}", path.display());
        }
        let sock = std::fs::metadata(n.dir.join("concord.sock")).unwrap();
        assert!(sock.file_type().is_socket());
    }
}

/// As root, loosen the data dir and the socket so another user can reach
/// it: the node still refuses that user (peer-uid check), and keeps serving
/// its own.
#[test]
fn another_user_is_refused_on_the_control_socket() {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    a.start();
    std::fs::set_permissions(&a.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = a.dir.join("concord.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = {
        use std::os::unix::process::CommandExt;
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&a.dir)
            .args(["pair", "invite"])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run concord as nobody")
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(out.stdout.is_empty());
    // The owner still drives its node.
    assert_eq!(a.json(&["device"])["name"], "alpha");
}

const HOUR_MS: i64 = 3600 * 1000;

/// A node whose clock is `offset_ms` off.
fn skewed(root: &Path, name: &str, offset_ms: i64) -> Node {
    let mut n = Node::new(root, name);
    n.env
        .push(("CONCORD_CLOCK_OFFSET_MS".into(), offset_ms.to_string()));
    n.start();
    n
}

#[test]
fn a_joiner_hours_off_pairs_and_is_told_its_changes_will_be_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    a.start();
    let ahead = skewed(tmp.path(), "ahead", 3 * HOUR_MS);
    let behind = skewed(tmp.path(), "behind", -5 * HOUR_MS);

    // Three hours ahead: the ticket (expiring in 5 min by alpha's clock)
    // is not judged by this clock; pairing works and says why sync won't.
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let joined = ahead.json(&["pair", "join", &ticket]);
    assert_eq!(joined["name"], "alpha");
    let warning = joined["clock_warning"].as_str().unwrap().to_string();
    assert!(warning.contains("3 h ahead of alpha's"), "{warning}");
    assert!(
        warning.contains("alpha will refuse this device's changes"),
        "{warning}"
    );

    // Five hours behind, plain output: the device id alone on stdout, the
    // warning on stderr.
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let args = ["pair", "join", &ticket];
    let out = behind.run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = expect_success(out, &args);
    assert_eq!(stdout, a.device_id());
    assert!(stderr.starts_with("warning: "), "{stderr}");
    assert!(stderr.contains("5 h behind alpha's"), "{stderr}");

    // `sync status` says the same, in JSON and plainly.
    ahead.json(&["library", "create", "notes"]);
    let status = ahead.json(&["sync", "status", "notes"]);
    let warning = status["clock_warning"].as_str().unwrap();
    assert!(warning.contains("3 h ahead"), "{warning}");
    let out = ahead.run(&["sync", "status", "notes"]);
    let plain = expect_success(out, &["sync", "status", "notes"]);
    assert!(
        plain.contains("warning: this device's clock is 3 h ahead"),
        "{plain}"
    );

    // Both are paired with alpha for real: alpha lists them.
    let peers = a.peers();
    for name in ["ahead", "behind"] {
        assert!(peers.iter().any(|p| p["name"] == name), "{peers:?}");
    }
    // A device whose clock agrees hears no warning.
    let c = skewed(tmp.path(), "fine", 0);
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(c.json(&["pair", "join", &ticket])["clock_warning"].is_null());
}

#[test]
fn a_ticket_lives_at_most_a_day() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::new(tmp.path(), "alpha");
    a.start();
    let day = 24 * 3600 * 1000u64;
    let ok = a.json(&["pair", "invite", "--ttl-ms", &day.to_string()]);
    assert!(ok["ticket"].is_string());
    for too_long in [(day + 1).to_string(), u64::MAX.to_string()] {
        let out = a.run(&["pair", "invite", "--ttl-ms", &too_long]);
        assert_eq!(out.status.code(), Some(2), "a usage error");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn control_characters_in_names_are_escaped_in_plain_output() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::new(tmp.path(), "alpha");
    let folder = tmp.path().join("files");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("evil\u{1b}]0;owned\u{7}\u{1b}[2J.txt"), b"x").unwrap();
    std::fs::write(folder.join("bidi\u{202e}txt.exe"), b"x").unwrap();
    a.json(&["library", "create", "photos"]);
    a.json(&["location", "add", "photos", folder.to_str().unwrap()]);
    let args = ["entry", "list", "photos"];
    let plain = expect_success(a.run(&args), &args);
    assert!(
        !plain.contains('\u{1b}') && !plain.contains('\u{7}'),
        "{plain:?}"
    );
    assert!(!plain.contains('\u{202e}'), "{plain:?}");
    assert!(
        plain.contains("evil\\u{1b}]0;owned\\u{7}\\u{1b}[2J.txt"),
        "{plain}"
    );
    assert!(plain.contains("bidi\\u{202e}txt.exe"), "{plain}");
    // JSON keeps the name as it is (escaped by JSON itself).
    let listed = a.json(&args);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"].as_str().unwrap().contains("evil\u{1b}]0;")));
}
