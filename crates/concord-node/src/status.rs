//! What a user sees of the links to other devices: for each paired device its
//! name, whether it is online, how it is reached (`direct` or through a
//! `relay`), the round-trip time Iroh measures on that path, and when it was
//! last heard from. Read from the node's cached connections, so it costs no
//! traffic.

use iroh::EndpointId;
use serde::Serialize;
use uuid::Uuid;

use crate::state::NodeState;

/// How a connection to a device currently carries its data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Link {
    /// `"direct"` (a UDP path between the two devices) or `"relay"` (through
    /// a relay server; still end-to-end encrypted).
    pub path: &'static str,
    /// Round-trip time of that path, in milliseconds (fractions kept: a LAN
    /// or loopback round trip is well under one).
    pub rtt_ms: f64,
}

/// What `device list` shows per paired device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    pub device_id: Uuid,
    pub name: String,
    pub online: bool,
    /// Milliseconds since the Unix epoch, if seen since this node started.
    pub last_seen: Option<u64>,
    /// `direct`, `relay`, or none when no connection is open.
    pub path: Option<&'static str>,
    /// Round-trip time of the path in use, when a connection is open.
    pub rtt_ms: Option<f64>,
}

impl NodeState {
    /// The selected path of an open connection to `node_id`, if there is one.
    pub async fn link(&self, node_id: &str) -> Option<Link> {
        let id: EndpointId = node_id.parse().ok()?;
        let conn = self.open_connection(id).await?;
        let paths = conn.paths();
        let selected = paths.iter().find(|p| p.is_selected())?;
        let rtt = selected.rtt();
        Some(Link {
            path: if selected.is_relay() {
                "relay"
            } else {
                "direct"
            },
            rtt_ms: (rtt.as_secs_f64() * 100_000.0).round() / 100.0,
        })
    }

    /// Paired devices with their online state and link.
    pub async fn device_list(&self) -> Vec<DeviceStatus> {
        let now = self.now_ms();
        let window = (self.config.presence_interval.as_millis() as u64)
            .saturating_mul(3)
            .max(3_000);
        let mut out = Vec::new();
        for p in self.peers.list() {
            let last_seen = self.peers.last_seen(p.device_id);
            let link = self.link(&p.node_id).await;
            out.push(DeviceStatus {
                device_id: p.device_id,
                name: p.name,
                online: last_seen.is_some_and(|t| now.saturating_sub(t) <= window),
                last_seen,
                path: link.map(|l| l.path),
                rtt_ms: link.map(|l| l.rtt_ms),
            });
        }
        out
    }

    /// The name of a device: a paired device's, else the one it registered
    /// in `library`; `None` for a device this node knows nothing about.
    pub fn device_name_of(&self, device: Uuid, library: Uuid) -> Option<String> {
        if let Some(peer) = self.peers.by_device(device) {
            return Some(peer.name);
        }
        let lib = self.library(library).ok()?;
        concord::query::members::member(&lib, device)
            .ok()
            .flatten()
            .map(|d| d.name)
    }

    /// The link to a device that is a paired device or a member of `library`.
    pub async fn device_link(&self, device: Uuid, library: Uuid) -> Option<Link> {
        let peer = self.peer_for_device(device, library).ok()?;
        self.link(&peer.node_id).await
    }
}
