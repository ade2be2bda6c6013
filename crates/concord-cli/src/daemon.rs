//! `concord start`: the node in the foreground, and the control socket through
//! which every other command runs while it is up.
//!
//! Control protocol (`<data-dir>/concord.sock`, Unix stream): the client writes
//! one line of JSON `{"request": Request}`; the node answers one line,
//! `{"ok": value}` or `{"error": "message"}`. Lines are capped at 1 MiB.
//!
//! One node per data dir: `node.lock` is held with an OS file lock for the
//! node's life (a killed node releases it with its process), and a socket file
//! left behind by a killed node is replaced on start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concord::datadir::DataDir;
use concord::service::PeerStatus;
use concord::Uuid;
use concord_node::peers::Peer;
use concord_node::skew::warning_for;
use concord_node::{Node, NodeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::context::{CliError, CliResult, Context};
use crate::ops;
use crate::request::Request;

/// Longest control line accepted.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
/// One line a client writes on the control socket.
pub struct ControlRequest {
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// The node's one-line answer on the control socket.
pub enum ControlResponse {
    Ok(Value),
    Error(String),
}

/// `concord start` options.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub leader_timeout_ms: Option<u64>,
    pub presence_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    /// `--no-mdns`: no LAN discovery even on a LAN address.
    pub no_mdns: bool,
    /// `--relay URL`, repeatable.
    pub relays: Vec<String>,
}

/// Where the control socket of the node for `dir` lives.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("concord.sock")
}

fn node_config(opts: &StartOptions) -> CliResult<NodeConfig> {
    let mut config = NodeConfig::default();
    if let Some(listen) = &opts.listen {
        config.listen = listen.parse().map_err(|_| {
            CliError::new(format!(
                "invalid --listen address {listen:?}; expected IP:PORT such as 127.0.0.1:0"
            ))
        })?;
    }
    config.name = opts.name.clone();
    // A loopback node has no LAN to search: tests and the demo stay silent.
    config.mdns = !opts.no_mdns && !config.listen.ip().is_loopback();
    if opts.relays.len() > concord_node::relays::MAX_RELAYS {
        return Err(CliError::new(format!(
            "at most {} --relay URLs",
            concord_node::relays::MAX_RELAYS
        )));
    }
    for url in &opts.relays {
        config
            .relays
            .push(concord_node::relays::parse(url).map_err(CliError::new)?);
    }
    if let Some(ms) = opts.heartbeat_ms {
        config.sync.heartbeat_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = opts.leader_timeout_ms {
        config.sync.leader_timeout = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = opts.presence_ms {
        config.presence_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = opts.retention_ms {
        config.sync.retention = Duration::from_millis(ms);
    }
    Ok(config)
}

/// Run the node until SIGINT, SIGTERM or `concord stop`.
pub fn start(dir: PathBuf, opts: StartOptions, json: bool) -> CliResult<()> {
    if let Some(name) = &opts.name {
        concord::validate::name("device name", name)?;
    }
    let config = node_config(&opts)?;
    concord::private::private_dir(&dir)?;
    let lock = concord::private::lock_file(&dir.join("node.lock"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(CliError::new(format!(
                "a node is already running for {}; stop it with `concord stop`",
                dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(dir.clone(), config, json));
    let _ = std::fs::remove_file(socket_path(&dir));
    drop(lock);
    result
}

async fn serve(dir: PathBuf, config: NodeConfig, json: bool) -> CliResult<()> {
    let node = Arc::new(
        Node::start(dir.clone(), config)
            .await
            .map_err(|e| CliError::new(e.to_string()))?,
    );
    let sock = socket_path(&dir);
    // Held the lock, so any socket file is a leftover of a killed node.
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| CliError::new(format!("cannot listen on {}: {e}", sock.display())))?;
    // Only this user may drive the node: the socket is 0600 (inside a 0700
    // data dir), and each client's uid is checked as well (`allowed`).
    concord::private::restrict(&sock)?;
    let owner = std::fs::metadata(&sock)?.uid();
    let opener = node.state.clone();
    let ctx = Arc::new(Context::new(DataDir::open(&dir)?).with_opener(Arc::new(
        move |id: Uuid| opener.library(id).map_err(|e| CliError::new(e.to_string())),
    )));
    let ready = if json {
        json!({
            "device_id": node.device_id().to_string(),
            "node_id": node.node_id().to_string(),
            "addrs": node.addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        })
        .to_string()
    } else {
        "ready".to_string()
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}").and_then(|_| out.flush());
    }
    tracing::info!(device = %node.device_id(), node = %node.node_id(), "node ready");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = stop_rx.changed() => break,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                if !allowed(&stream, owner) {
                    tokio::spawn(refuse(stream));
                    continue;
                }
                let (node, ctx, stop) = (node.clone(), ctx.clone(), stop_tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = client(stream, node, ctx, stop).await {
                        tracing::debug!("control connection: {e}");
                    }
                });
            }
        }
    }
    tracing::info!("node stopping");
    node.shutdown().await;
    Ok(())
}

/// A control client may be this node's user or root; anyone else (a socket
/// reachable by mistake, a loosened mode) is refused and logged.
fn allowed(stream: &UnixStream, owner: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == owner || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "control connection from another user refused"
            );
            false
        }
        Err(e) => {
            tracing::warn!("control connection refused: cannot check its user: {e}");
            false
        }
    }
}

/// Tell a refused client why. Its request is read first (bounded, and
/// never acted on), so the client is not cut off while still writing it.
async fn refuse(mut stream: UnixStream) {
    let mut line = String::new();
    let read = BufReader::new(&mut stream).take(MAX_LINE as u64);
    let _ = tokio::time::timeout(Duration::from_secs(5), {
        let mut read = read;
        async move { read.read_line(&mut line).await }
    })
    .await;
    let response =
        ControlResponse::Error("permission denied: this node belongs to another user".to_string());
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

async fn client(
    stream: UnixStream,
    node: Arc<Node>,
    ctx: Arc<Context>,
    stop: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<ControlRequest>(&line) {
        Ok(ControlRequest {
            request: Request::Stop,
        }) => {
            let _ = stop.send(true);
            ControlResponse::Ok(json!({}))
        }
        Ok(ControlRequest { request }) => match execute(&node, ctx, request).await {
            Ok(v) => ControlResponse::Ok(v),
            Err(e) => ControlResponse::Error(e.line()),
        },
        Err(e) => ControlResponse::Error(format!("malformed control request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

fn net(e: concord_node::NetError) -> CliError {
    CliError::new(e.to_string())
}

/// Run a request inside the node.
async fn execute(node: &Node, ctx: Arc<Context>, req: Request) -> CliResult<Value> {
    let state = &node.state;
    match req {
        Request::PairInvite { ttl_ms } => {
            let ticket = node.pairing.invite(ttl_ms);
            Ok(json!({ "ticket": ticket.encode(), "expires_at": ticket.expires_at }))
        }
        Request::PairJoin { ticket } => {
            let peer = node.pairing.join(&ticket).await.map_err(net)?;
            let clock_warning = state
                .skew
                .offset(peer.device_id)
                .and_then(|offset| warning_for(&peer.name, offset));
            Ok(json!({
                "device_id": peer.device_id.to_string(),
                "name": peer.name,
                "clock_warning": clock_warning,
            }))
        }
        Request::DeviceList => {
            Ok(serde_json::to_value(state.device_list().await).unwrap_or_default())
        }
        Request::DeviceRemove { device } => {
            let removed = state.remove_device(&device).await.map_err(net)?;
            let libraries: Vec<String> = removed.libraries.iter().map(|l| l.to_string()).collect();
            Ok(json!({
                "device_id": removed.device_id.to_string(),
                "name": removed.name,
                "libraries": libraries,
            }))
        }
        Request::LibraryRemote { device } => {
            let peer = state.resolve_peer(&device).map_err(net)?;
            let libraries = node.setup.list_remote(&peer).await.map_err(net)?;
            Ok(serde_json::to_value(libraries).unwrap_or_default())
        }
        Request::LibraryShare { library, device } => {
            let peer = state.resolve_peer(&device).map_err(net)?;
            let id = ctx.library(&library)?.id();
            node.setup.share(id, &peer).await.map_err(net)?;
            Ok(json!({ "id": id.to_string(), "device_id": peer.device_id.to_string() }))
        }
        Request::LibraryJoin { library, device } => {
            let peer = state.resolve_peer(&device).map_err(net)?;
            let id = resolve_remote_library(node, &peer, &library).await?;
            node.setup.join_library(id, &peer).await.map_err(net)?;
            Ok(json!({ "id": id.to_string() }))
        }
        Request::SyncStatus { library } => sync_status(node, &ctx, &library).await,
        Request::LocationPull { library, location } => {
            pull_locations(node, &ctx, &library, location.as_deref()).await
        }
        Request::EntryFetch { library, entry, to } => {
            crate::fetch::entry_fetch(node, ctx, library, entry, to).await
        }
        Request::ConduitRun {
            library,
            conduit,
            wait,
        } => crate::conduit_node::run(node, ctx, library, conduit, wait).await,
        Request::ConduitStatus { library, conduit } => {
            crate::conduit_node::status(node, ctx, library, conduit).await
        }
        Request::ConduitList { library } => crate::conduit_node::list(node, ctx, library).await,
        Request::EntryList {
            library,
            location,
            device,
        } if location.is_some() || device.is_some() => {
            // Browsing another device's entries pulls (or refreshes) them first.
            let lib = ctx.library(&library)?;
            let targets = remote_locations(&lib, &library, location.as_deref(), device.as_deref())?;
            for loc in targets {
                if let Err(e) = pull(node, &lib, loc).await {
                    tracing::warn!(location = %loc, "showing cached entries; refresh failed: {}", e.line());
                }
            }
            let req = Request::EntryList {
                library,
                location,
                device,
            };
            tokio::task::spawn_blocking(move || ops::execute(&ctx, req))
                .await
                .map_err(|e| CliError::new(format!("command failed: {e}")))?
        }
        other => {
            let create = matches!(other, Request::LibraryCreate { .. });
            let value = tokio::task::spawn_blocking(move || ops::execute(&ctx, other))
                .await
                .map_err(|e| CliError::new(format!("command failed: {e}")))??;
            if create {
                if let Some(id) = value["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()) {
                    node.host.start(id).map_err(net)?;
                }
            }
            Ok(value)
        }
    }
}

/// Each member's line of `sync status`, with its name and the link to it.
async fn peer_links(node: &Node, library: Uuid, peers: &[PeerStatus]) -> Vec<Value> {
    let mut out = Vec::with_capacity(peers.len());
    for p in peers {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        let link = node.state.device_link(p.device_id, library).await;
        v["name"] = json!(node.state.device_name_of(p.device_id, library));
        v["path"] = json!(link.map(|l| l.path));
        v["rtt_ms"] = json!(link.map(|l| l.rtt_ms));
        out.push(v);
    }
    out
}

/// `sync status LIB`: the library's sync service, jobs and watched locations.
async fn sync_status(node: &Node, ctx: &Context, library: &str) -> CliResult<Value> {
    let id = ctx.library(library)?.id();
    let service = node
        .host
        .service(id)
        .ok_or_else(|| CliError::new("the library's sync service is not running"))?;
    let status = service.status().await?;
    let jobs = node.host.jobs(id).map_err(net)?;
    Ok(json!({
        "leader": status.leader.to_string(),
        "epoch": status.epoch,
        "role": status.role,
        "seq": status.seq,
        "version_vector": status.version_vector.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "peers": peer_links(node, id, &status.peers).await,
        "conflicts": status.conflicts,
        "log_entries": status.log_entries,
        "stats": status.stats,
        "jobs": jobs,
        "watching": node.host.watching(id),
        "clock_warning": node.state.skew.warning(),
    }))
}

/// `location pull LIB [LOC]`: pull other devices' entries of one or all their
/// locations.
async fn pull_locations(
    node: &Node,
    ctx: &Context,
    library: &str,
    location: Option<&str>,
) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let targets = remote_locations(&lib, library, location, None)?;
    let (mut locations, mut entries) = (0u64, 0u64);
    for target in targets {
        let report = pull(node, &lib, target).await?;
        locations += 1;
        entries += report.rows;
    }
    Ok(json!({ "locations": locations, "entries": entries }))
}

/// Locations of other devices selected by `LOC` and/or `DEVICE` (all of them
/// when neither is given).
fn remote_locations(
    lib: &concord::Library,
    lib_key: &str,
    location: Option<&str>,
    device: Option<&str>,
) -> CliResult<Vec<Uuid>> {
    let me = lib.device();
    if let Some(key) = location {
        let loc = crate::resolve::location(lib, lib_key, key)?;
        return Ok(if loc.device == me {
            Vec::new()
        } else {
            vec![loc.id]
        });
    }
    let owner = device.map(|d| crate::resolve::device(lib, d)).transpose()?;
    let all = concord::query::locations(lib)?;
    Ok(all
        .into_iter()
        .filter(|l| l.location.device != me && owner.is_none_or(|o| l.location.device == o))
        .map(|l| l.location.id)
        .collect())
}

async fn pull(
    node: &Node,
    lib: &concord::Library,
    location: Uuid,
) -> CliResult<concord::service::pull::PullReport> {
    let service = node
        .host
        .service(lib.id())
        .ok_or_else(|| CliError::new("the library's sync service is not running"))?;
    Ok(service.pull_location(location).await?)
}

/// `LIB` for `library join`: a UUID, or the unique name of one of the device's
/// libraries.
async fn resolve_remote_library(node: &Node, peer: &Peer, key: &str) -> CliResult<Uuid> {
    let libraries = node.setup.list_remote(peer).await.map_err(net)?;
    if let Ok(id) = key.parse::<Uuid>() {
        return Ok(id);
    }
    let named: Vec<_> = libraries.iter().filter(|l| l.name == key).collect();
    match named.len() {
        1 => Ok(named[0].id),
        0 => Err(CliError::new(format!(
            "{} has no library {key:?} visible to this device; see `concord library remote {}`",
            peer.name, peer.name
        ))),
        _ => Err(CliError::new(format!(
            "{} has more than one library named {key:?}; use its UUID",
            peer.name
        ))),
    }
}

/// Send a request to the node running for `dir`, if one is.
pub fn forward(dir: &Path, req: &Request) -> Option<CliResult<Value>> {
    use std::io::{BufRead, Read, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket_path(dir)).ok()?;
    let mut line = match serde_json::to_vec(&ControlRequest {
        request: req.clone(),
    }) {
        Ok(l) => l,
        Err(e) => return Some(Err(CliError::new(e.to_string()))),
    };
    line.push(b'\n');
    let mut writer = &stream;
    if let Err(e) = writer.write_all(&line) {
        return Some(Err(CliError::new(format!(
            "the node stopped answering: {e}"
        ))));
    }
    let mut reader = std::io::BufReader::new(&stream).take(64 * MAX_LINE as u64);
    let mut answer = String::new();
    if let Err(e) = reader.read_line(&mut answer) {
        return Some(Err(CliError::new(format!(
            "the node stopped answering: {e}"
        ))));
    }
    Some(match serde_json::from_str::<ControlResponse>(&answer) {
        Ok(ControlResponse::Ok(v)) => Ok(v),
        Ok(ControlResponse::Error(e)) => Err(CliError::new(e)),
        Err(_) => Err(CliError::new(
            "the node ended the connection without an answer",
        )),
    })
}
