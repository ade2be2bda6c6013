//! Multi-process tests of local protection: files and the control socket
//! private whatever the umask, another user refused on the socket.
//! Real `concord` nodes on 127.0.0.1; every wait is on a condition.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::node::*;
use support::BIN;

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
