//! The node: binds the Iroh endpoint, builds the state, the library host and
//! the protocol handlers, mounts the handlers on a router (one per ALPN),
//! starts every library, and runs the presence loop that keeps paired devices
//! in touch after restarts. The only module that imports all the others.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord::datadir::DataDir;
use iroh::endpoint::{presets, PortmapperConfig, VarInt};
use iroh::protocol::Router;
use iroh::RelayMode;
use iroh::{Endpoint, EndpointId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::NodeConfig;
use crate::congestion::FlooredCubicConfig;
use crate::error::NetError;
use crate::host::LibraryHost;
use crate::pairing::Pairing;
use crate::peers::PeerStore;
use crate::setup::LibrarySetup;
use crate::state::NodeState;
use crate::transfer::{ContentClient, ContentServer};
use crate::transport::{IrohTransport, SyncHandler, Traffic, MAX_STREAMS_PER_PEER};
use crate::{discovery, identity, CONTENT_ALPN, LIBRARY_ALPN, PAIRING_ALPN, SYNC_ALPN};

/// Remembered between runs: `<data-dir>/node.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NodeMemo {
    last_port: Option<u16>,
}

/// A running node: its state, its library host and its protocols, which the
/// CLI daemon, the benchmarks and the tests drive.
pub struct Node {
    /// Data dir, paired devices, open libraries and connections.
    pub state: Arc<NodeState>,
    /// Starts and stops each library's sync service and jobs.
    pub host: LibraryHost,
    /// Invites and pairing with other devices.
    pub pairing: Pairing,
    /// Listing, sharing and joining libraries.
    pub setup: LibrarySetup,
    /// Serves file content to members (`concord/content/1`).
    pub content: ContentServer,
    /// Fetches file content from members.
    pub fetcher: ContentClient,
    /// Runs the conduits whose destination is on this device.
    pub conduits: crate::conduits::ConduitRunner,
    traffic: Arc<Traffic>,
    router: Router,
    /// Presence, LAN discovery and the watch on this node's own addresses.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Start a node for `data_dir`: identity, endpoint, protocol handlers,
    /// every library's services, presence.
    pub async fn start(data_dir: PathBuf, config: NodeConfig) -> Result<Node, NetError> {
        let mut data = DataDir::open(&data_dir)?;
        if let Some(name) = &config.name {
            data.set_name(name)?;
        }
        let endpoint = bind_remembered(&data_dir, config.listen, &config.relays).await?;
        let peers = PeerStore::open(&data_dir)?;
        let state = Arc::new(NodeState::new(data, endpoint.clone(), peers, config));
        let traffic = Arc::new(Traffic::default());
        let outbound = Arc::new(IrohTransport::new(state.clone(), traffic.clone()));
        let host = LibraryHost::new(state.clone(), outbound);
        let pairing = Pairing::new(state.clone());
        let setup = LibrarySetup::new(state.clone(), host.clone());
        let inbound = SyncHandler::new(state.clone(), host.clone(), traffic.clone());
        let content = ContentServer::new(state.clone());
        let fetcher = ContentClient::new(state.clone());
        let conduits = crate::conduits::ConduitRunner::new(state.clone(), fetcher.clone());
        let router = Router::builder(endpoint)
            .accept(PAIRING_ALPN, pairing.clone())
            .accept(LIBRARY_ALPN, setup.clone())
            .accept(SYNC_ALPN, inbound)
            .accept(CONTENT_ALPN, content.clone())
            .spawn();
        for listed in state.data.list_libraries()? {
            host.start(listed.id)?;
        }
        let wake = Arc::new(Notify::new());
        let mut background = vec![discovery::watch_own_addrs(state.clone(), wake.clone())];
        if state.config.mdns {
            // A host without multicast still runs; it only cannot be found on the LAN.
            match discovery::start_mdns(state.clone(), wake.clone()) {
                Ok(task) => background.push(task),
                Err(e) => tracing::warn!("{e}; continuing without LAN discovery"),
            }
        }
        background.push(conduits.spawn_scheduler());
        background.push(tokio::spawn(presence_loop(
            state.clone(),
            setup.clone(),
            wake,
        )));
        Ok(Node {
            state,
            host,
            pairing,
            setup,
            content,
            fetcher,
            conduits,
            traffic,
            router,
            background,
        })
    }

    /// This device's id.
    pub fn device_id(&self) -> uuid::Uuid {
        self.state.device_id()
    }

    /// This node's Iroh node id: what peers dial and authenticate.
    pub fn node_id(&self) -> EndpointId {
        self.state.endpoint.id()
    }

    /// Addresses peers can dial.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.state.local_addrs()
    }

    /// Bytes of sync traffic since the node started.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Stop accepting, close connections, flush libraries.
    pub async fn shutdown(&self) {
        for task in &self.background {
            task.abort();
        }
        self.host.stop_all();
        let _ = self.router.shutdown().await;
        self.state.close_libraries();
    }
}

/// Bind the endpoint; with port 0, try the port of the previous run first (so
/// peers' remembered addresses stay good) and remember the one bound.
async fn bind_remembered(
    data_dir: &std::path::Path,
    listen: SocketAddr,
    relays: &[iroh::RelayUrl],
) -> Result<Endpoint, NetError> {
    let secret = identity::load_or_create(data_dir)?;
    let memo_path = data_dir.join("node.json");
    let memo: NodeMemo = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let endpoint = match (listen.port(), memo.last_port) {
        (0, Some(port)) => {
            let mut again = listen;
            again.set_port(port);
            match bind(secret.clone(), again, relays).await {
                Ok(endpoint) => endpoint,
                Err(_) => bind(secret, listen, relays).await?,
            }
        }
        _ => bind(secret, listen, relays).await?,
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
    Ok(endpoint)
}

/// Bind with no relay unless `relays` are given (then the first one that
/// answers becomes this node's home relay; Iroh prefers direct paths and moves
/// a connection to one as soon as it works).
async fn bind(
    secret: iroh::SecretKey,
    addr: SocketAddr,
    relays: &[iroh::RelayUrl],
) -> Result<Endpoint, NetError> {
    // Notice a vanished peer within seconds, so a cached connection to a killed
    // node is dropped instead of swallowing requests until they time out.
    let idle = Duration::from_secs(5)
        .try_into()
        .map_err(|_| NetError::Other("idle timeout out of range".into()))?;
    // Bounded peers: a few dozen concurrent streams per connection, no
    // unidirectional ones (no protocol uses them).
    let transport = iroh::endpoint::QuicTransportConfig::builder()
        .keep_alive_interval(Duration::from_secs(1))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_PEER))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // CUBIC, but a window never under the initial one: see congestion.rs.
        .congestion_controller_factory(Arc::new(FlooredCubicConfig::default()))
        .build();
    let mut builder = Endpoint::builder(presets::Minimal);
    if !relays.is_empty() {
        builder = builder.relay_mode(RelayMode::Custom(relays.iter().cloned().collect()));
    }
    builder
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

/// First retry after a failed contact; doubled per failed round up to the
/// presence interval.
const RETRY_MIN: Duration = Duration::from_millis(250);

/// Contact every paired device now and then every `presence_interval`. While
/// some device is unreachable, try again sooner with a bounded backoff, which
/// starts over whenever the network changes (`wake`: own addresses changed, a
/// device found on the LAN), so a link that comes back is used within moments.
async fn presence_loop(state: Arc<NodeState>, setup: LibrarySetup, wake: Arc<Notify>) {
    let interval = state.config.presence_interval;
    let mut retry = RETRY_MIN;
    loop {
        let peers = state.peers.list();
        let mut tasks = tokio::task::JoinSet::new();
        for peer in peers {
            let setup = setup.clone();
            tasks.spawn(async move {
                let result = setup.ping(&peer).await;
                if let Err(e) = &result {
                    tracing::debug!(device = %peer.device_id, "presence: {e}");
                }
                result.is_ok()
            });
        }
        let mut all_reached = true;
        while let Some(done) = tasks.join_next().await {
            all_reached &= done.unwrap_or(false);
        }
        let pause = if all_reached {
            retry = RETRY_MIN;
            interval
        } else {
            let pause = retry.min(interval);
            retry = retry.saturating_mul(2).min(interval);
            pause
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => retry = RETRY_MIN,
        }
    }
}
