//! B3R: B3's commit-to-event latency through a relay, beside the direct
//! figure, on a real network built from Linux network namespaces.
//!
//! A router namespace joins three networks: A's, B's and the relay's. A and B
//! first have routes only to the relay's network, so node A and node B (one
//! per namespace, each on a thread that entered its namespace and runs its
//! own runtime, so every socket it opens lives there) pair and sync through
//! an in-process relay server (Iroh's, plain HTTP) in the third namespace.
//! B3's measurement (`b3::measure`) runs on a library shared through the
//! relay; then routes between A and B are added, and once `sync status`'s
//! path says `direct`, it runs again on a second library.
//!
//! Needs root and `ip netns`; otherwise it reports nothing and says why. The
//! namespaces carry this process's id and are deleted at the end, however it
//! ends; nothing is sent outside them.

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use concord_node::{Node, NodeConfig};
use iroh_relay::server::{RelayConfig, Server, ServerConfig};

use crate::b3;
use crate::common::{progress, Scale};
use crate::net;
use crate::report::Row;

/// The namespaces of one run, deleted on drop.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &str) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args.split_whitespace()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Router, A, B and the relay's host, wired as the module doc says; `None`
/// where namespaces cannot be made.
fn build() -> anyhow::Result<Option<(Netns, [String; 4])>> {
    let pid = std::process::id();
    let names = ["rt", "ha", "hb", "hr"].map(|n| format!("cb{pid}{n}"));
    let mut net = Netns(Vec::new());
    for ns in &names {
        if ip(&format!("netns add {ns}")).is_err() {
            return Ok(None);
        }
        net.0.push(ns.clone());
        ip(&format!("-n {ns} link set lo up"))?;
    }
    let [rt, ha, hb, hr] = &names;
    for (i, (host, port, subnet)) in [(ha, "ra", 1), (hb, "rb", 2), (hr, "rc", 3)]
        .into_iter()
        .enumerate()
    {
        let (x, y) = (
            format!("cb{}v{i}x", pid % 100_000),
            format!("cb{}v{i}y", pid % 100_000),
        );
        ip(&format!("link add {x} type veth peer name {y}"))?;
        ip(&format!("link set {x} netns {host} name eth0"))?;
        ip(&format!("link set {y} netns {rt} name {port}"))?;
        ip(&format!("-n {host} link set eth0 up"))?;
        ip(&format!("-n {rt} link set {port} up"))?;
        ip(&format!("-n {rt} addr add 10.203.{subnet}.1/24 dev {port}"))?;
        ip(&format!("-n {host} addr add 10.203.{subnet}.2/24 dev eth0"))?;
    }
    ip(&format!("-n {ha} route add 10.203.3.0/24 via 10.203.1.1"))?;
    ip(&format!("-n {hb} route add 10.203.3.0/24 via 10.203.2.1"))?;
    ip(&format!("-n {hr} route add default via 10.203.3.1"))?;
    let fwd = Command::new("ip")
        .args([
            "netns",
            "exec",
            rt,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()?;
    anyhow::ensure!(fwd.success(), "cannot enable forwarding in {rt}");
    Ok(Some((net, names)))
}

/// A thread inside a namespace running a current-thread runtime: what is
/// spawned on it opens its sockets in that namespace.
struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn start(ns: &str) -> anyhow::Result<NsRuntime> {
        let path = format!("/var/run/netns/{ns}");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let entered = enter(&path).and_then(|()| {
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            });
            match entered {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let handle = rx.recv()??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Run `fut` on this runtime and wait for its output.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("namespace runtime stopped")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Move the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on a valid, open namespace file descriptor affects only
    // the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// A node in its namespace.
struct NsNode {
    rt: NsRuntime,
    node: Arc<Node>,
}

impl NsNode {
    fn start(ns: &str, dir: std::path::PathBuf, name: &str, relay: &str) -> anyhow::Result<NsNode> {
        let rt = NsRuntime::start(ns)?;
        let config = NodeConfig {
            listen: "0.0.0.0:0".parse()?,
            name: Some(name.to_string()),
            relays: vec![relay.parse()?],
            ..NodeConfig::default()
        };
        let node = Arc::new(rt.run(Node::start(dir, config))?);
        Ok(NsNode { rt, node })
    }

    /// The path of this node's connection to `other`, if one is open.
    fn path_to(&self, other: &NsNode) -> Option<&'static str> {
        let node = self.node.clone();
        let id = other.node.node_id().to_string();
        self.rt
            .run(async move { node.state.link(&id).await })
            .map(|l| l.path)
    }

    fn shutdown(self) {
        let node = self.node.clone();
        self.rt.run(async move { node.shutdown().await });
    }
}

/// A library created on `a`, joined by `b`; both handles.
fn share(
    a: &NsNode,
    b: &NsNode,
    name: &str,
) -> anyhow::Result<(Arc<concord::Library>, Arc<concord::Library>)> {
    let id = a.node.state.data.create_library(name)?.id();
    let na = a.node.clone();
    a.rt.run(async move { na.host.start(id) })?;
    let nb = b.node.clone();
    let device = a.node.device_id().to_string();
    b.rt.run(async move {
        let pa = nb.state.resolve_peer(&device)?;
        nb.setup.join_library(id, &pa).await
    })?;
    Ok((a.node.state.library(id)?, b.node.state.library(id)?))
}

fn wait_path(a: &NsNode, b: &NsNode, want: &str) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !(a.path_to(b) == Some(want) && b.path_to(a) == Some(want)) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no {want} path within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Run B3R at `scale`: context figures (no target yet).
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let n = scale.pick(200, 1_000);
    let Some((_net, [_rt, ha, hb, hr])) = build()? else {
        progress!("B3R skipped: it needs root and `ip netns` to build its network");
        return Ok(Vec::new());
    };
    let relay_rt = NsRuntime::start(&hr)?;
    let server = relay_rt.run(async {
        let mut config = ServerConfig::default();
        config.relay = Some(RelayConfig::new(([10, 203, 3, 2], 3340)));
        Server::spawn(config).await
    })?;
    let url = "http://10.203.3.2:3340";
    let tmp = tempfile::tempdir()?;
    let a = NsNode::start(&ha, tmp.path().join("a"), "alpha", url)?;
    let b = NsNode::start(&hb, tmp.path().join("b"), "beta", url)?;
    let ticket = a.node.pairing.invite(None).encode();
    let nb = b.node.clone();
    b.rt.run(async move { nb.pairing.join(&ticket).await })?;

    let (la, lb) = share(&a, &b, "through the relay")?;
    wait_path(&a, &b, "relay")?;
    let mut relayed = b3::measure(la, lb, n)?;
    relayed.sort_by(f64::total_cmp);

    ip(&format!("-n {ha} route add 10.203.2.0/24 via 10.203.1.1"))?;
    ip(&format!("-n {hb} route add 10.203.1.0/24 via 10.203.2.1"))?;
    wait_path(&a, &b, "direct")?;
    let (la, lb) = share(&a, &b, "direct")?;
    let mut direct = b3::measure(la, lb, n)?;
    direct.sort_by(f64::total_cmp);

    a.shutdown();
    b.shutdown();
    relay_rt.run(async move { server.shutdown().await })?;
    let (r50, r99) = (
        net::percentile(&relayed, 50.0),
        net::percentile(&relayed, 99.0),
    );
    let (d50, d99) = (
        net::percentile(&direct, 50.0),
        net::percentile(&direct, 99.0),
    );
    progress!(
        "commit on A -> event on B through the relay: p50 {r50:.3} ms, p99 {r99:.3} ms; \
         direct on the same network: p50 {d50:.3} ms, p99 {d99:.3} ms"
    );
    Ok(vec![
        Row::info(
            "B3R",
            "relay_latency_p50",
            r50,
            "ms",
            "direct_latency_p50",
            d50,
        ),
        Row::info(
            "B3R",
            "relay_latency_p99",
            r99,
            "ms",
            "direct_latency_p99",
            d99,
        ),
    ])
}
