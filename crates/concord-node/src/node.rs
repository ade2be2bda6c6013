//! The node: one Iroh endpoint, a router with one protocol handler per ALPN, the
//! paired-device store, open libraries, and the presence loop that keeps paired
//! devices in touch after restarts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::datadir::DataDir;
use concord::hlc::{Clock, SystemClock};
use concord::model::Device;
use concord::service::SyncService;
use concord::{Change, Library, Uuid};
use iroh::endpoint::{presets, Connection, PortmapperConfig};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, EndpointId};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::peers::{Peer, PeerStore};
use crate::{identity, pairing, setup, LIBRARY_ALPN, PAIRING_ALPN, SYNC_ALPN};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Socket to bind. Port 0 reuses the port of the previous run when free.
    pub listen: SocketAddr,
    /// Rename this device on start.
    pub name: Option<String>,
    /// How often paired devices are contacted while idle.
    pub presence_interval: Duration,
    /// How long an invite stays valid.
    pub invite_ttl: Duration,
    /// Timeout for connecting and for each request.
    pub request_timeout: Duration,
    /// Settings of every library's sync service.
    pub sync: concord::service::SyncConfig,
    /// Watch this device's locations and write their changes as they happen
    /// (see [`crate::jobs`]).
    pub watch: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            name: None,
            presence_interval: Duration::from_secs(15),
            invite_ttl: Duration::from_secs(5 * 60),
            request_timeout: Duration::from_secs(10),
            sync: concord::service::SyncConfig::default(),
            watch: true,
        }
    }
}

/// Remembered between runs: `<data-dir>/node.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NodeMemo {
    last_port: Option<u16>,
}

/// Per-library settings that are not synced: `<library dir>/settings.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LibrarySettings {
    /// Private libraries are visible only to devices registered in them.
    #[serde(default)]
    pub private: bool,
}

/// State shared by the protocol handlers and the node's API.
pub struct NodeState {
    pub data: DataDir,
    pub endpoint: Endpoint,
    pub peers: PeerStore,
    pub config: NodeConfig,
    pub(crate) invites: Mutex<HashMap<[u8; 8], pairing::Invite>>,
    libraries: Mutex<HashMap<Uuid, Arc<Library>>>,
    connections: tokio::sync::Mutex<HashMap<(EndpointId, &'static [u8]), Connection>>,
    services: Mutex<HashMap<Uuid, SyncService>>,
    pub traffic: crate::sync::Traffic,
    clock: SystemClock,
    /// Index jobs and location watchers, per library.
    pub(crate) job_runner: crate::jobs::Jobs,
}

/// A running node.
pub struct Node {
    pub state: Arc<NodeState>,
    router: Router,
    presence: tokio::task::JoinHandle<()>,
}

/// What `device list` shows per paired device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    pub device_id: Uuid,
    pub name: String,
    pub online: bool,
    /// Milliseconds since the Unix epoch, if seen since this node started.
    pub last_seen: Option<u64>,
}

impl Node {
    /// Start a node for `data_dir`: identity, endpoint, protocol handlers, presence.
    pub async fn start(data_dir: PathBuf, config: NodeConfig) -> Result<Node, NetError> {
        let mut data = DataDir::open(&data_dir)?;
        if let Some(name) = &config.name {
            data.set_name(name)?;
        }
        let secret = identity::load_or_create(&data_dir)?;
        let memo_path = data_dir.join("node.json");
        let memo: NodeMemo = std::fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let endpoint = match (config.listen.port(), memo.last_port) {
            (0, Some(port)) => {
                let mut again = config.listen;
                again.set_port(port);
                match bind(secret.clone(), again).await {
                    Ok(ep) => ep,
                    Err(_) => bind(secret, config.listen).await?,
                }
            }
            _ => bind(secret, config.listen).await?,
        };
        if let Some(port) = endpoint.bound_sockets().first().map(|a| a.port()) {
            let memo = NodeMemo {
                last_port: Some(port),
            };
            let _ = concord::datadir::write_atomic(
                &memo_path,
                &serde_json::to_vec(&memo).unwrap_or_default(),
            );
        }
        let peers = PeerStore::open(&data_dir)?;
        let state = Arc::new(NodeState {
            data,
            endpoint: endpoint.clone(),
            peers,
            config,
            invites: Mutex::new(HashMap::new()),
            libraries: Mutex::new(HashMap::new()),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            services: Mutex::new(HashMap::new()),
            traffic: crate::sync::Traffic::default(),
            clock: SystemClock,
            job_runner: crate::jobs::Jobs::default(),
        });
        let router = Router::builder(endpoint)
            .accept(PAIRING_ALPN, pairing::PairingHandler::new(state.clone()))
            .accept(LIBRARY_ALPN, setup::SetupHandler::new(state.clone()))
            .accept(SYNC_ALPN, crate::sync::SyncHandler::new(state.clone()))
            .spawn();
        for l in state.data.list_libraries()? {
            crate::sync::start_service(&state, l.id)?;
        }
        let presence = tokio::spawn(presence_loop(state.clone()));
        Ok(Node {
            state,
            router,
            presence,
        })
    }

    pub fn device_id(&self) -> Uuid {
        self.state.data.identity().device_id
    }

    pub fn node_id(&self) -> EndpointId {
        self.state.endpoint.id()
    }

    /// Addresses peers can dial.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.state.local_addrs()
    }

    /// Stop accepting, close connections, flush libraries.
    pub async fn shutdown(self) {
        self.presence.abort();
        self.state.job_runner.stop_all();
        for svc in self
            .state
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            svc.1.stop();
        }
        let _ = self.router.shutdown().await;
        self.state
            .libraries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

async fn bind(secret: iroh::SecretKey, addr: SocketAddr) -> Result<Endpoint, NetError> {
    // Notice a vanished peer within seconds, so a cached connection to a killed
    // node is dropped instead of swallowing requests until they time out.
    let idle = Duration::from_secs(5)
        .try_into()
        .map_err(|_| NetError::Other("idle timeout out of range".into()))?;
    let transport = iroh::endpoint::QuicTransportConfig::builder()
        .keep_alive_interval(Duration::from_secs(1))
        .max_idle_timeout(Some(idle))
        .build();
    Endpoint::builder(presets::Minimal)
        .transport_config(transport)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr(addr)
        .map_err(|e| NetError::Other(format!("invalid listen address {addr}: {e}")))?
        .secret_key(secret)
        .bind()
        .await
        .map_err(|e| NetError::Other(format!("cannot listen on {addr}: {e}")))
}

/// Contact every paired device now and then every `presence_interval`.
async fn presence_loop(state: Arc<NodeState>) {
    loop {
        let peers = state.peers.list();
        let mut tasks = tokio::task::JoinSet::new();
        for peer in peers {
            let st = state.clone();
            tasks.spawn(async move {
                if let Err(e) = setup::ping(&st, &peer).await {
                    tracing::debug!(device = %peer.device_id, "presence: {e}");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        tokio::time::sleep(state.config.presence_interval).await;
    }
}

impl NodeState {
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn device_id(&self) -> Uuid {
        self.data.identity().device_id
    }

    pub fn device_name(&self) -> String {
        self.data.identity().name.clone()
    }

    /// Direct addresses of this node (the bound sockets; an unspecified bind address
    /// is reported as loopback).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for a in self.endpoint.bound_sockets() {
            if a.ip().is_unspecified() {
                out.push(SocketAddr::from(([127, 0, 0, 1], a.port())));
            } else {
                out.push(a);
            }
        }
        for ip in self.endpoint.addr().ip_addrs() {
            if !out.contains(ip) && !ip.ip().is_unspecified() {
                out.push(*ip);
            }
        }
        out.truncate(crate::ticket::MAX_TICKET_ADDRS);
        out
    }

    /// Open (and cache) a library; make sure this device's row names its node id.
    pub fn library(&self, id: Uuid) -> Result<Arc<Library>, NetError> {
        let mut libs = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = libs.get(&id) {
            return Ok(l.clone());
        }
        let lib = Arc::new(self.data.open_library(id)?);
        self.register_self(&lib)?;
        libs.insert(id, lib.clone());
        Ok(lib)
    }

    /// The running sync service of a library.
    pub fn service(&self, library: Uuid) -> Option<SyncService> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&library)
            .cloned()
    }

    pub(crate) fn forget_service(&self, library: Uuid) {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&library);
    }

    pub(crate) fn insert_service(&self, library: Uuid, svc: SyncService) {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(library, svc);
    }

    /// How to reach a device for a library: paired devices by their remembered
    /// addresses, other members of the library by the node id it registered.
    pub fn peer_for_device(&self, device: Uuid, library: Uuid) -> Result<Peer, NetError> {
        if let Some(p) = self.peers.by_device(device) {
            return Ok(p);
        }
        let lib = self.library(library)?;
        let node: Option<String> = lib.read(|c| {
            use concord::rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT node_id FROM devices WHERE uuid = ?1",
                [device],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
        })?;
        node.map(|n| crate::sync::member_peer(device, n))
            .ok_or_else(|| NetError::Unreachable(format!("device {device} (no known node id)")))
    }

    /// The device behind a node id: a paired device, or a member of one of our
    /// libraries. `None` for strangers.
    pub fn device_for_node(&self, node_id: &str) -> Option<Uuid> {
        if let Some(p) = self.peers.by_node(node_id) {
            return Some(p.device_id);
        }
        let libs = self.data.list_libraries().ok()?;
        for l in libs {
            let Ok(lib) = self.library(l.id) else {
                continue;
            };
            let found: Option<Uuid> = lib
                .read(|c| {
                    use concord::rusqlite::OptionalExtension;
                    Ok(c.query_row(
                        "SELECT uuid FROM devices WHERE node_id = ?1",
                        [node_id],
                        |r| r.get(0),
                    )
                    .optional()?)
                })
                .ok()
                .flatten();
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Forget a cached library handle (after a failed join removed it).
    pub fn forget_library(&self, id: Uuid) {
        self.libraries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn register_self(&self, lib: &Library) -> Result<(), NetError> {
        let me = self.device_id();
        let node_id = self.endpoint.id().to_string();
        let current: Option<(String, Option<String>)> = lib.read(|c| {
            use concord::rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT name, node_id FROM devices WHERE uuid = ?1",
                [me],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })?;
        match current {
            None => {
                lib.commit(Change::insert(&Device {
                    id: me,
                    name: self.device_name(),
                    node_id: Some(node_id),
                }))?;
            }
            Some((name, nid))
                if nid.as_deref() != Some(node_id.as_str()) || name != self.device_name() =>
            {
                lib.commit(
                    Change::update::<Device>(me)
                        .set("node_id", node_id)
                        .set("name", self.device_name()),
                )?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    pub fn settings(&self, id: Uuid) -> LibrarySettings {
        std::fs::read(self.settings_path(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn set_settings(&self, id: Uuid, s: &LibrarySettings) -> Result<(), NetError> {
        write_settings(self.data.root(), id, s)
    }

    fn settings_path(&self, id: Uuid) -> PathBuf {
        self.data
            .root()
            .join("libraries")
            .join(id.to_string())
            .join("settings.json")
    }

    /// The paired peer behind an authenticated connection, or a refusal.
    pub fn authorize(&self, remote: EndpointId) -> Result<Peer, NetError> {
        self.peers.by_node(&remote.to_string()).ok_or_else(|| {
            NetError::Refused(format!(
                "device {} is not paired with {}; pair first (`concord pair invite` / `concord pair join`)",
                remote.fmt_short(),
                self.device_name()
            ))
        })
    }

    /// A connection to `peer` on `alpn`, reused while it stays open.
    pub async fn connect(&self, peer: &Peer, alpn: &'static [u8]) -> Result<Connection, NetError> {
        let id: EndpointId = peer
            .node_id
            .parse()
            .map_err(|_| NetError::Other(format!("stored node id of {} is invalid", peer.name)))?;
        {
            let conns = self.connections.lock().await;
            if let Some(c) = conns.get(&(id, alpn)) {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
            }
        }
        let mut addr = EndpointAddr::new(id);
        for a in &peer.addrs {
            addr = addr.with_ip_addr(*a);
        }
        let conn = tokio::time::timeout(
            self.config.request_timeout,
            self.endpoint.connect(addr, alpn),
        )
        .await
        .map_err(|_| NetError::Unreachable(format!("{} (timed out)", peer.name)))?
        .map_err(|e| NetError::Unreachable(format!("{}: {e}", peer.name)))?;
        self.connections
            .lock()
            .await
            .insert((id, alpn), conn.clone());
        Ok(conn)
    }

    /// Close every cached connection to a device (after it was removed).
    pub async fn disconnect(&self, node_id: &str) {
        let mut conns = self.connections.lock().await;
        conns.retain(|(id, _), c| {
            if id.to_string() == node_id {
                c.close(1u32.into(), b"unpaired");
                false
            } else {
                true
            }
        });
    }

    /// Paired devices with their online state.
    pub fn device_list(&self) -> Vec<DeviceStatus> {
        let now = self.now_ms();
        let window = (self.config.presence_interval.as_millis() as u64)
            .saturating_mul(3)
            .max(3_000);
        self.peers
            .list()
            .into_iter()
            .map(|p| {
                let last_seen = self.peers.last_seen(p.device_id);
                DeviceStatus {
                    device_id: p.device_id,
                    name: p.name,
                    online: last_seen.is_some_and(|t| now.saturating_sub(t) <= window),
                    last_seen,
                }
            })
            .collect()
    }

    /// Resolve `DEVICE` (UUID or unique name) among paired devices.
    pub fn resolve_peer(&self, key: &str) -> Result<Peer, NetError> {
        let peers = self.peers.list();
        if let Ok(id) = key.parse::<Uuid>() {
            if let Some(p) = peers.iter().find(|p| p.device_id == id) {
                return Ok(p.clone());
            }
        }
        let m: Vec<&Peer> = peers.iter().filter(|p| p.name == key).collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(NetError::Other(format!(
                "no paired device {key:?} (see `concord device list`)"
            ))),
            _ => Err(NetError::Other(format!(
                "more than one paired device is named {key:?}; use its id (see `concord device list`)"
            ))),
        }
    }

    /// Unpair a device: it loses access at once.
    pub async fn remove_device(&self, key: &str) -> Result<Peer, NetError> {
        let peer = self.resolve_peer(key)?;
        self.peers.remove(peer.device_id)?;
        self.disconnect(&peer.node_id).await;
        Ok(peer)
    }
}

/// Write a library's device-local settings (also used without a running node).
pub fn write_settings(
    data_root: &std::path::Path,
    id: Uuid,
    s: &LibrarySettings,
) -> Result<(), NetError> {
    let path = data_root
        .join("libraries")
        .join(id.to_string())
        .join("settings.json");
    concord::datadir::write_atomic(&path, &serde_json::to_vec(s).unwrap_or_default())?;
    Ok(())
}
