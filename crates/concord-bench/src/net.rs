//! Helpers for the networked workloads (B3, B4, B5, B7): the tokio runtime, real
//! Concord nodes on 127.0.0.1, and the bare-Iroh baselines (an echo / sink
//! protocol on its own endpoint pair, set up exactly as the node sets up its
//! endpoint).
//!
//! Nothing here binds or dials anything but 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::digest::{digest, Scope};
use concord::sync::log::VersionVector;
use concord::{Library, Uuid};
use concord_node::{Node, NodeConfig};
use iroh::endpoint::{presets, Connection, PortmapperConfig};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr};

/// The only address anything binds.
pub const LOOPBACK: &str = "127.0.0.1:0";

/// A multi-thread runtime with two workers (the machines have two cores).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Node settings for the benchmarks: loopback only, production sync defaults
/// unless a workload says otherwise.
pub fn node_config(name: &str) -> NodeConfig {
    NodeConfig {
        listen: LOOPBACK.parse().expect("loopback address"),
        name: Some(name.to_string()),
        ..NodeConfig::default()
    }
}

pub async fn start(dir: &Path, config: NodeConfig) -> anyhow::Result<Node> {
    Ok(Node::start(dir.to_path_buf(), config).await?)
}

/// Pair `b` with `a` (b joins a's invite).
pub async fn pair(a: &Node, b: &Node) -> anyhow::Result<()> {
    let ticket = a.pairing.invite(None).encode();
    b.pairing.join(&ticket).await?;
    Ok(())
}

/// Poll `f` every `every` until it holds or `limit` passes; returns the wait.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        if f()? {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

pub fn version_vector(lib: &Library) -> anyhow::Result<VersionVector> {
    Ok(lib.with_log(|l| l.version_vector())?)
}

pub fn digest_of(lib: &Library, scope: Scope) -> anyhow::Result<(String, u64)> {
    Ok(lib.read(|c| digest(c, scope))?)
}

/// Whether two replicas hold the same version vector (ignoring empty origins).
pub fn same_vv(a: &Library, b: &Library) -> anyhow::Result<bool> {
    let clean = |mut v: VersionVector| {
        v.retain(|_, s| *s > 0);
        v
    };
    Ok(clean(version_vector(a)?) == clean(version_vector(b)?))
}

/// Sync traffic counters of a node: (bytes sent, bytes received, requests made).
pub fn traffic(node: &Node) -> (u64, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let t = node.traffic();
    (
        t.sent.load(Relaxed),
        t.received.load(Relaxed),
        t.requests.load(Relaxed),
    )
}

/// Percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- the bare-Iroh baseline ----

const ECHO_ALPN: &[u8] = b"concord-bench/echo/1";
/// First byte of a stream: echo one framed message back, or sink everything.
const MODE_ECHO: u8 = 0;
const MODE_SINK: u8 = 1;

#[derive(Debug, Clone)]
struct Echo;

impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if recv.read_exact(&mut mode).await.is_err() {
                    return;
                }
                if mode[0] == MODE_ECHO {
                    // 4-byte length, body: written back as received.
                    let mut len = [0u8; 4];
                    if recv.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if recv.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let mut frame = Vec::with_capacity(body.len() + 4);
                    frame.extend_from_slice(&len);
                    frame.extend_from_slice(&body);
                    let _ = send.write_all(&frame).await;
                    let _ = send.finish();
                } else if mode[0] == MODE_SINK {
                    let mut total = 0u64;
                    while let Ok(Some(chunk)) = recv.read_chunk(1 << 20).await {
                        total += chunk.len() as u64;
                    }
                    let _ = send.write_all(&total.to_be_bytes()).await;
                    let _ = send.finish();
                }
            });
        }
        Ok(())
    }
}

async fn bind() -> anyhow::Result<Endpoint> {
    // The same builder as `concord_node::node::bind`.
    Ok(Endpoint::builder(presets::Minimal)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr(LOOPBACK.parse::<SocketAddr>()?)?
        .bind()
        .await?)
}

/// Two endpoints on 127.0.0.1 and one open connection on the echo protocol.
pub struct BareIroh {
    client: Endpoint,
    router: Router,
    conn: Connection,
}

impl BareIroh {
    pub async fn connect() -> anyhow::Result<BareIroh> {
        let server = bind().await?;
        let client = bind().await?;
        let addr = server
            .bound_sockets()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("echo endpoint has no socket"))?;
        anyhow::ensure!(addr.ip().is_loopback(), "echo endpoint bound {addr}");
        let id = server.id();
        let router = Router::builder(server).accept(ECHO_ALPN, Echo).spawn();
        let conn = client
            .connect(EndpointAddr::new(id).with_ip_addr(addr), ECHO_ALPN)
            .await?;
        Ok(BareIroh {
            client,
            router,
            conn,
        })
    }

    /// One request/response on a fresh stream of the open connection, as the
    /// sync transport makes them; returns the round-trip time.
    pub async fn round_trip(&self, payload: &[u8]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (mut send, mut recv) = self.conn.open_bi().await?;
        let mut frame = Vec::with_capacity(payload.len() + 5);
        frame.push(MODE_ECHO);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        send.write_all(&frame).await?;
        send.finish()?;
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        recv.read_exact(&mut body).await?;
        let rtt = t.elapsed();
        anyhow::ensure!(body == payload, "echo came back different");
        Ok(rtt)
    }

    /// Round trips `n` times, `gap` apart; sorted, in milliseconds.
    pub async fn round_trips(
        &self,
        n: usize,
        gap: Duration,
        payload: &[u8],
    ) -> anyhow::Result<Vec<f64>> {
        for _ in 0..20 {
            self.round_trip(payload).await?; // warm-up
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.round_trip(payload).await?.as_secs_f64() * 1e3);
            tokio::time::sleep(gap).await;
        }
        out.sort_by(f64::total_cmp);
        Ok(out)
    }

    /// Push `bytes` through one stream; bytes per second, counted on arrival.
    pub async fn throughput(&self, bytes: u64) -> anyhow::Result<f64> {
        let chunk = vec![0x5Au8; 1 << 20];
        let t = Instant::now();
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_all(&[MODE_SINK]).await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            send.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        send.finish()?;
        let mut got = [0u8; 8];
        recv.read_exact(&mut got).await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(u64::from_be_bytes(got) == bytes, "sink counted other bytes");
        Ok(bytes as f64 / secs)
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = self.router.shutdown().await;
        self.client.close().await;
    }
}

/// Keep a library handle's owner honest: wait until only `lib` itself holds it
/// (the node's services have let go), then drop it.
pub async fn release(lib: Arc<Library>, limit: Duration) -> anyhow::Result<()> {
    wait_until(
        "the node to release the library",
        limit,
        Duration::from_millis(5),
        || Ok(Arc::strong_count(&lib) == 1),
    )
    .await?;
    drop(lib);
    Ok(())
}

/// Start the owner's service and wait until it has pruned its log (it is alone).
pub async fn prune_alone(node: &Node, lib: &Library) -> anyhow::Result<()> {
    node.host.start(lib.id())?;
    wait_until(
        "the owner to prune its log",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || {
            let vv = version_vector(lib)?;
            let floor = lib.with_log(|l| l.pruned_floor())?;
            Ok(vv.iter().all(|(o, s)| floor.get(o) == Some(s)))
        },
    )
    .await?;
    Ok(())
}

/// Two nodes on 127.0.0.1 sharing one library: A created it (the leader), B
/// joined it. B can be taken offline (its node shut down, its data kept) and
/// brought back.
pub struct Cluster {
    pub a: Node,
    pub b: Option<Node>,
    pub lib_id: Uuid,
    pub la: Arc<Library>,
    pub b_dir: std::path::PathBuf,
    pub b_device: Uuid,
    config: NodeConfig,
}

impl Cluster {
    /// A fills the library with `populate`, prunes alone, then B pairs and joins
    /// (by snapshot) and both settle.
    pub async fn new(
        dir: &Path,
        config: NodeConfig,
        populate: impl FnOnce(&Library, Uuid) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let mut ca = config.clone();
        ca.name = Some("alpha".into());
        let a = start(&dir.join("a"), ca).await?;
        let lib_id = a.state.data.create_library("bench")?.id();
        let la = a.state.library(lib_id)?;
        populate(&la, a.device_id())?;
        prune_alone(&a, &la).await?;
        let mut cb = config.clone();
        cb.name = Some("beta".into());
        let b_dir = dir.join("b");
        let b = start(&b_dir, cb).await?;
        pair(&a, &b).await?;
        let pa = b.state.resolve_peer(&a.device_id().to_string())?;
        b.setup.join_library(lib_id, &pa).await?;
        let b_device = b.device_id();
        let c = Cluster {
            a,
            b: Some(b),
            lib_id,
            la,
            b_dir,
            b_device,
            config,
        };
        c.wait_converged(Duration::from_secs(120)).await?;
        Ok(c)
    }

    pub fn b(&self) -> anyhow::Result<&Node> {
        self.b
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("B is offline"))
    }

    pub fn lb(&self) -> anyhow::Result<Arc<Library>> {
        Ok(self.b()?.state.library(self.lib_id)?)
    }

    /// Equal version vectors and equal shared digests (file entries left out of
    /// the polling; checked once at the end by the workloads).
    pub fn converged(&self) -> anyhow::Result<bool> {
        let lb = self.lb()?;
        if !same_vv(&self.la, &lb)? {
            return Ok(false);
        }
        Ok(digest_of(&self.la, Scope::Shared)? == digest_of(&lb, Scope::Shared)?)
    }

    pub async fn wait_converged(&self, limit: Duration) -> anyhow::Result<Duration> {
        wait_until("convergence", limit, Duration::from_millis(2), || {
            self.converged()
        })
        .await
    }

    /// Wait until neither node's sync counters move for `quiet`.
    pub async fn wait_quiet(&self, quiet: Duration, limit: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        let snap = |c: &Cluster| -> (u64, u64, u64, u64) {
            let (sa, _, ra) = traffic(&c.a);
            let (sb, _, rb) = c.b.as_ref().map_or((0, 0, 0), traffic);
            (sa, ra, sb, rb)
        };
        let mut last = snap(self);
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            anyhow::ensure!(t.elapsed() < limit, "sync traffic never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = snap(self);
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        Ok(())
    }

    /// Take B offline: shut its node down and wait until its library is closed.
    pub async fn stop_b(&mut self) -> anyhow::Result<()> {
        let lb = self.lb()?;
        let b = self
            .b
            .take()
            .ok_or_else(|| anyhow::anyhow!("B is offline"))?;
        b.shutdown().await;
        release(lb, Duration::from_secs(30)).await
    }

    /// B's library opened directly while B's node is down (local edits).
    pub fn open_b_offline(&self) -> anyhow::Result<Library> {
        anyhow::ensure!(self.b.is_none(), "B is online");
        Ok(concord::datadir::DataDir::open(&self.b_dir)?.open_library(self.lib_id)?)
    }

    /// Bring B back (same data dir, same port when free).
    pub async fn start_b(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.b.is_none(), "B is online");
        let mut cb = self.config.clone();
        cb.name = Some("beta".into());
        self.b = Some(start(&self.b_dir, cb).await?);
        Ok(())
    }

    pub async fn shutdown(mut self) {
        if let Some(b) = self.b.take() {
            b.shutdown().await;
        }
        drop(self.la);
        self.a.shutdown().await;
    }
}

/// Per message type, frames sent by a node since `before` (a `by_msg` copy).
pub fn frames_since(
    node: &Node,
    before: &std::collections::BTreeMap<&'static str, concord_node::transport::MsgTraffic>,
) -> Vec<(&'static str, concord_node::transport::MsgTraffic)> {
    node.traffic()
        .by_msg()
        .into_iter()
        .filter_map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or_default();
            let d = concord_node::transport::MsgTraffic {
                frames: v.frames - b.frames,
                wire: v.wire - b.wire,
                raw: v.raw - b.raw,
            };
            (d.frames > 0).then_some((k, d))
        })
        .collect()
}
