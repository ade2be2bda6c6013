//! What the node's integration tests share: node settings for fast tests,
//! starting, pairing and sharing a library between real nodes, and waiting for
//! a condition. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::{index, Library, Uuid};
use concord_node::{Node, NodeConfig};

/// A node named `name` on loopback that checks on its peers often.
pub fn config(name: &str) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        presence_interval: Duration::from_millis(200),
        name: Some(name.to_string()),
        ..NodeConfig::default()
    }
}

/// [`config`] with a fast leader heartbeat and timeout, watching its
/// locations when `watch`.
pub fn fast_config(name: &str, watch: bool) -> NodeConfig {
    let mut config = config(name);
    config.watch = watch;
    config.sync.heartbeat_interval = Duration::from_millis(100);
    config.sync.leader_timeout = Duration::from_millis(300);
    config
}

/// Start a node in `dir`.
pub async fn start(dir: &Path, config: NodeConfig) -> Node {
    Node::start(dir.to_path_buf(), config).await.unwrap()
}

/// `joiner` pairs with `inviter` through a fresh invite.
pub async fn pair(inviter: &Node, joiner: &Node) {
    joiner
        .pairing
        .join(&inviter.pairing.invite(None).encode())
        .await
        .unwrap();
}

/// `owner` creates library `name` and starts it; `joiner` (paired with it)
/// joins. The library's id.
pub async fn share_new_library(owner: &Node, joiner: &Node, name: &str) -> Uuid {
    let lib_id = owner.state.data.create_library(name).unwrap().id();
    owner.host.start(lib_id).unwrap();
    let peer = joiner
        .state
        .resolve_peer(&owner.device_id().to_string())
        .unwrap();
    joiner.setup.join_library(lib_id, &peer).await.unwrap();
    lib_id
}

/// Log with `RUST_LOG` to the test's output.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Wait until `f` holds, checking often, failing after `limit`. Returns how long
/// it took.
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Add `path` as a location of `lib` (indexing it) off the async runtime.
pub async fn add_location(lib: &Arc<Library>, path: &Path) -> Uuid {
    let (lib, path) = (lib.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        index::add_location(&lib, &path, &mut |_, _| {})
            .unwrap()
            .location
            .id
    })
    .await
    .unwrap()
}

/// `size` bytes of incompressible, non-repeating data.
pub fn write_random(path: &Path, size: u64, seed: u8) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut xof = blake3::Hasher::new().update(&[seed]).finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// A small tmpfs volume, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (the test says why and skips) without the right to mount.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
