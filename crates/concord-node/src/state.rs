//! The node's ground floor: what every protocol handler and the library host
//! share. [`NodeState`] owns the data dir, the paired devices, the open
//! libraries, the Iroh endpoint and its cached connections. It imports none of
//! the protocol handlers: they are built on top of it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use concord::datadir::DataDir;
use concord::hlc::{Clock, SystemClock};
use concord::model::Device;
use concord::query::members;
use concord::{Change, Library, Uuid};
use iroh::endpoint::Connection;
use iroh::{Endpoint, EndpointAddr, EndpointId};

use crate::config::{LibrarySettings, NodeConfig};
use crate::error::NetError;
use crate::peers::{Peer, PeerStore};
use crate::skew::ClockSkew;
use crate::ticket::MAX_TICKET_ADDRS;

/// What `device remove` did: the device, and the libraries it was revoked
/// from (none when it shared none with this device).
#[derive(Debug, Clone)]
pub struct Removed {
    pub device_id: Uuid,
    pub name: String,
    pub libraries: Vec<Uuid>,
}

/// State shared by the protocol handlers, the library host and the node's API.
pub struct NodeState {
    pub data: DataDir,
    pub endpoint: Endpoint,
    pub peers: PeerStore,
    pub config: NodeConfig,
    /// How far this device's clock is from each peer's.
    pub skew: ClockSkew,
    libraries: Mutex<HashMap<Uuid, Arc<Library>>>,
    connections: tokio::sync::Mutex<HashMap<(EndpointId, &'static [u8]), Connection>>,
    clock: SystemClock,
}

impl NodeState {
    /// The state of a node bound to `endpoint`, with no library open yet.
    pub fn new(data: DataDir, endpoint: Endpoint, peers: PeerStore, config: NodeConfig) -> Self {
        NodeState {
            data,
            endpoint,
            peers,
            config,
            skew: ClockSkew::default(),
            libraries: Mutex::new(HashMap::new()),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            clock: SystemClock,
        }
    }

    /// Wall-clock time in ms, for invites, presence and pairing records.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// This device's id: what peers and libraries know it by.
    pub fn device_id(&self) -> Uuid {
        self.data.identity().device_id
    }

    /// This device's name, as shown to paired devices.
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

    /// Relays this node is reachable through, as it tells other devices.
    pub fn relay_urls(&self) -> Vec<String> {
        self.config
            .relays
            .iter()
            .take(crate::relays::MAX_RELAYS)
            .map(|u| u.to_string())
            .collect()
    }

    /// Open (and cache) a library; make sure this device's row names its node id.
    pub fn library(&self, id: Uuid) -> Result<Arc<Library>, NetError> {
        let mut libraries = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lib) = libraries.get(&id) {
            return Ok(lib.clone());
        }
        let lib = Arc::new(self.data.open_library(id)?);
        self.register_self(&lib)?;
        libraries.insert(id, lib.clone());
        Ok(lib)
    }

    /// Forget a cached library handle (after a failed join removed it).
    pub fn forget_library(&self, id: Uuid) {
        self.libraries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Drop every cached library handle (the node is stopping).
    pub fn close_libraries(&self) {
        self.libraries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// How to reach a device for a library: paired devices by their remembered
    /// addresses, other members of the library by the node id it registered.
    /// A device removed from the library is not dialled.
    pub fn peer_for_device(&self, device: Uuid, library: Uuid) -> Result<Peer, NetError> {
        if let Some(peer) = self.peers.by_device(device) {
            return Ok(peer);
        }
        let lib = self.library(library)?;
        match members::member(&lib, device)? {
            Some(Device {
                node_id: Some(node_id),
                addrs,
                removed: None,
                ..
            }) => {
                let addrs = addrs.as_deref().unwrap_or("");
                Ok(Peer::member(
                    device,
                    node_id,
                    parse_addrs(addrs),
                    parse_relays(addrs),
                ))
            }
            _ => Err(NetError::Unreachable(format!(
                "device {device} (no known node id)"
            ))),
        }
    }

    /// The device behind a node id: a paired device, or a member of one of our
    /// libraries. `None` for strangers.
    pub fn device_for_node(&self, node_id: &str) -> Option<Uuid> {
        if let Some(peer) = self.peers.by_node(node_id) {
            return Some(peer.device_id);
        }
        let listed = self.data.list_libraries().ok()?;
        for entry in listed {
            let Ok(lib) = self.library(entry.id) else {
                continue;
            };
            let found = members::device_for_node(&lib, node_id).ok().flatten();
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// A device removed from one of our libraries, behind `node_id`: its
    /// pushes are still heard (see `SyncHandler`), nothing is served to it.
    pub fn removed_device_for_node(&self, node_id: &str) -> Option<Uuid> {
        for entry in self.data.list_libraries().ok()? {
            let Ok(lib) = self.library(entry.id) else {
                continue;
            };
            if let Ok(Some(found)) = members::removed_for_node(&lib, node_id) {
                return Some(found);
            }
        }
        None
    }

    /// Whether a device that says it is `device` and holds the key `node_id`
    /// may be paired. **Decision** (ARCHITECTURE.md, "Identity"): a device id
    /// is bound to the first node key this device saw it with, as a paired
    /// device (`peers.json`) or in a library's `devices` table (removed rows
    /// included); it is never rebound. This device's own id is never another's.
    pub fn check_binding(&self, device: Uuid, node_id: &str) -> Result<(), NetError> {
        if device == self.device_id() || node_id == self.endpoint.id().to_string() {
            return Err(NetError::Refused(format!(
                "device {device} is this device ({}); a device cannot pair under its own id",
                self.device_name()
            )));
        }
        self.peers.check(device, node_id)?;
        for entry in self.data.list_libraries()? {
            let lib = self.library(entry.id)?;
            if let Some(bound) = members::bound_node(&lib, device)? {
                if bound != node_id {
                    return Err(NetError::Refused(format!(
                        "device {device} is bound to another key in library {}; a device id cannot move to a new key",
                        entry.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Register this device in `lib` with its current name and node id, so
    /// other members can reach it without pairing.
    fn register_self(&self, lib: &Library) -> Result<(), NetError> {
        let me = self.device_id();
        let node_id = self.endpoint.id().to_string();
        let addrs = format_addrs(&self.local_addrs(), &self.relay_urls());
        match members::member(lib, me)? {
            None => {
                lib.commit(Change::insert(&Device {
                    id: me,
                    name: self.device_name(),
                    node_id: Some(node_id),
                    addrs,
                    removed: None,
                }))?;
            }
            Some(row)
                if row.node_id.as_deref() != Some(node_id.as_str())
                    || row.name != self.device_name()
                    || row.addrs != addrs =>
            {
                let mut change = Change::update::<Device>(me)
                    .set("node_id", node_id)
                    .set("name", self.device_name());
                if let Some(addrs) = addrs {
                    change = change.set("addrs", addrs);
                }
                lib.commit(change)?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// This device's settings of a library.
    pub fn settings(&self, id: Uuid) -> LibrarySettings {
        LibrarySettings::load(self.data.root(), id)
    }

    /// Change this device's settings of a library (e.g. make it private).
    pub fn set_settings(&self, id: Uuid, settings: &LibrarySettings) -> Result<(), NetError> {
        settings.save(self.data.root(), id)
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
            let connections = self.connections.lock().await;
            if let Some(conn) = connections.get(&(id, alpn)) {
                if conn.close_reason().is_none() {
                    return Ok(conn.clone());
                }
            }
        }
        let mut addr = EndpointAddr::new(id);
        for a in &peer.addrs {
            addr = addr.with_ip_addr(*a);
        }
        for url in crate::relays::usable(&peer.relays) {
            addr = addr.with_relay_url(url);
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

    /// Any open cached connection to `id` (whatever its ALPN), to read the
    /// path and round-trip time Iroh measured on it.
    pub async fn open_connection(&self, id: EndpointId) -> Option<Connection> {
        let connections = self.connections.lock().await;
        connections
            .iter()
            .filter(|((peer, _), conn)| *peer == id && conn.close_reason().is_none())
            .map(|(_, conn)| conn.clone())
            .next()
    }

    /// Close cached connections to `node_id` whose path goes to none of
    /// `addrs` (the device moved): the next request dials it afresh.
    pub async fn drop_stale(&self, node_id: &str, addrs: &[SocketAddr]) {
        let mut connections = self.connections.lock().await;
        connections.retain(|(id, _), conn| {
            if id.to_string() != node_id {
                return true;
            }
            let paths = conn.paths();
            let current = paths
                .iter()
                .find(|p| p.is_selected())
                .map(|p| p.remote_addr().clone());
            match current {
                Some(iroh::TransportAddr::Ip(a)) if !addrs.contains(&a) => {
                    conn.close(2u32.into(), b"moved");
                    false
                }
                _ => true,
            }
        });
    }

    /// Close every cached connection to a device (after it was removed).
    pub async fn disconnect(&self, node_id: &str) {
        let mut connections = self.connections.lock().await;
        connections.retain(|(id, _), conn| {
            if id.to_string() == node_id {
                conn.close(1u32.into(), b"unpaired");
                false
            } else {
                true
            }
        });
    }

    /// Resolve `DEVICE` (UUID or unique name) among paired devices.
    pub fn resolve_peer(&self, key: &str) -> Result<Peer, NetError> {
        let peers = self.peers.list();
        if let Ok(id) = key.parse::<Uuid>() {
            if let Some(p) = peers.iter().find(|p| p.device_id == id) {
                return Ok(p.clone());
            }
        }
        let named: Vec<&Peer> = peers.iter().filter(|p| p.name == key).collect();
        match named.len() {
            1 => Ok(named[0].clone()),
            0 => Err(NetError::Other(format!(
                "no paired device {key:?} (see `concord device list`)"
            ))),
            _ => Err(NetError::Other(format!(
                "more than one paired device is named {key:?}; use its id (see `concord device list`)"
            ))),
        }
    }

    /// Remove a device: unpair it and revoke it from every library this device
    /// shares with it (a synced removal every member learns:
    /// `concord::membership::remove`), then close our connections to it.
    /// `DEVICE` is a paired device, or by UUID a member of a local library.
    pub async fn remove_device(&self, key: &str) -> Result<Removed, NetError> {
        let (device, name, node_id) = match self.resolve_peer(key) {
            Ok(peer) => (peer.device_id, peer.name, Some(peer.node_id)),
            Err(e) => {
                let Some(row) = self.any_member(key)? else {
                    return Err(e);
                };
                (row.id, row.name, row.node_id)
            }
        };
        if device == self.device_id() {
            return Err(NetError::Other(
                "this is this device; remove it from another one".into(),
            ));
        }
        let mut libraries = Vec::new();
        for entry in self.data.list_libraries()? {
            let lib = self.library(entry.id)?;
            if concord::membership::remove(&lib, device)?.is_some() {
                tracing::info!(library = %entry.id, %device, "device removed from the library");
                libraries.push(entry.id);
            }
        }
        self.peers.remove(device)?;
        if let Some(node_id) = &node_id {
            self.disconnect(node_id).await;
        }
        Ok(Removed {
            device_id: device,
            name,
            libraries,
        })
    }

    /// The row of a member device of any local library, by UUID: a member
    /// this device never paired with can be removed too.
    fn any_member(&self, key: &str) -> Result<Option<Device>, NetError> {
        let Ok(id) = key.parse::<Uuid>() else {
            return Ok(None);
        };
        for entry in self.data.list_libraries()? {
            let lib = self.library(entry.id)?;
            if let Some(row) = members::member(&lib, id)? {
                if row.removed.is_none() {
                    return Ok(Some(row));
                }
            }
        }
        Ok(None)
    }
}

/// Addresses as a `Device` row keeps them: `ip:port`, then relay URLs,
/// comma-separated, at most [`MAX_TICKET_ADDRS`] and
/// [`crate::relays::MAX_RELAYS`]. `None` when there are none. Older nodes skip
/// the relay URLs (they do not parse as addresses).
pub fn format_addrs(addrs: &[SocketAddr], relays: &[String]) -> Option<String> {
    let list: Vec<String> = addrs
        .iter()
        .take(MAX_TICKET_ADDRS)
        .map(|a| a.to_string())
        .chain(crate::relays::sanitize(relays))
        .collect();
    (!list.is_empty()).then(|| list.join(","))
}

/// Addresses from a `Device` row, which another member may have written: at
/// most [`MAX_TICKET_ADDRS`], the unparsable ones skipped.
pub fn parse_addrs(text: &str) -> Vec<SocketAddr> {
    text.split(',')
        .filter_map(|a| a.trim().parse().ok())
        .take(MAX_TICKET_ADDRS)
        .collect()
}

/// Relay URLs from a `Device` row: the entries that are usable relay URLs.
pub fn parse_relays(text: &str) -> Vec<String> {
    let list: Vec<String> = text
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| a.starts_with("http"))
        .take(crate::relays::MAX_RELAYS * 2)
        .collect();
    crate::relays::sanitize(&list)
}
