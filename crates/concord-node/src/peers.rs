//! Paired devices, kept in `<data-dir>/peers.json`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::NetError;

/// A device this node can reach: who it is, its node id and where it was last
/// seen, so requests can be authorised and dialled without asking the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub device_id: Uuid,
    pub name: String,
    /// Iroh node id in its string form.
    pub node_id: String,
    /// Last known direct addresses.
    pub addrs: Vec<SocketAddr>,
    pub paired_at: u64,
    /// Relays it said it is reachable through (absent in files written
    /// before relays existed).
    #[serde(default)]
    pub relays: Vec<String>,
}

impl Peer {
    /// A member of a shared library that is not paired directly: known by the
    /// node id and addresses it registered in the library's `devices` table
    /// (paired devices use their remembered addresses instead). Sync requests
    /// need no pairing, only membership, so this is how they find such devices.
    pub fn member(
        device: Uuid,
        node_id: String,
        addrs: Vec<SocketAddr>,
        relays: Vec<String>,
    ) -> Peer {
        Peer {
            device_id: device,
            name: device.to_string(),
            node_id,
            addrs,
            paired_at: 0,
            relays,
        }
    }
}

fn check_binding(peers: &[Peer], device: Uuid, node_id: &str) -> Result<(), NetError> {
    for p in peers {
        if p.device_id == device && p.node_id != node_id {
            return Err(NetError::Refused(format!(
                "device {device} is already paired with another key; a device id cannot move to a new key (remove it with `concord device remove` first)"
            )));
        }
        if p.node_id == node_id && p.device_id != device {
            return Err(NetError::Refused(format!(
                "this node is already paired as device {} ({}); it cannot claim another device id",
                p.device_id, p.name
            )));
        }
    }
    Ok(())
}

/// The paired-device list, persisted on every change.
pub struct PeerStore {
    path: PathBuf,
    peers: Mutex<Vec<Peer>>,
    /// Last successful contact per device (ms), in memory only.
    seen: Mutex<HashMap<Uuid, u64>>,
}

impl PeerStore {
    /// The paired devices remembered under `data_dir` (none on first use).
    pub fn open(data_dir: &Path) -> Result<PeerStore, NetError> {
        let path = data_dir.join("peers.json");
        let peers = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| NetError::Other(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(PeerStore {
            path,
            peers: Mutex::new(peers),
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn save(&self, peers: &[Peer]) -> Result<(), NetError> {
        let bytes = serde_json::to_vec_pretty(peers).map_err(|e| NetError::Other(e.to_string()))?;
        concord::datadir::write_atomic(&self.path, &bytes)?;
        Ok(())
    }

    /// Every paired device.
    pub fn list(&self) -> Vec<Peer> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The paired device behind an authenticated node id, to authorise it.
    pub fn by_node(&self, node_id: &str) -> Option<Peer> {
        self.list().into_iter().find(|p| p.node_id == node_id)
    }

    /// A paired device by id, to dial it.
    pub fn by_device(&self, device: Uuid) -> Option<Peer> {
        self.list().into_iter().find(|p| p.device_id == device)
    }

    /// Add a peer, or refresh one paired before with the same device id and
    /// node id. A device id is bound to the node key it was first paired
    /// with: a peer that claims a paired device's id with another key, or a
    /// paired key under another device id, is refused and nothing changes
    /// (`device remove` first, then pair again).
    pub fn upsert(&self, peer: Peer) -> Result<(), NetError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        check_binding(&peers, peer.device_id, &peer.node_id)?;
        peers.retain(|p| p.device_id != peer.device_id);
        peers.push(peer);
        self.save(&peers)
    }

    /// Whether `device` may be paired under `node_id`: `Err` names the
    /// paired device that binding would take over.
    pub fn check(&self, device: Uuid, node_id: &str) -> Result<(), NetError> {
        check_binding(&self.list(), device, node_id)
    }

    /// Update addresses, relays and name of a known peer (`None`: unchanged).
    pub fn update_addrs(
        &self,
        device: Uuid,
        name: Option<&str>,
        addrs: &[SocketAddr],
        relays: Option<&[String]>,
    ) -> Result<(), NetError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = peers.iter_mut().find(|p| p.device_id == device) else {
            return Ok(());
        };
        let mut changed = false;
        if !addrs.is_empty() && p.addrs != addrs {
            p.addrs = addrs
                .iter()
                .take(crate::ticket::MAX_TICKET_ADDRS)
                .copied()
                .collect();
            changed = true;
        }
        if let Some(relays) = relays.map(crate::relays::sanitize) {
            if p.relays != relays {
                p.relays = relays;
                changed = true;
            }
        }
        if let Some(n) = name {
            if p.name != n && concord::validate::name("device name", n).is_ok() {
                p.name = n.to_string();
                changed = true;
            }
        }
        if changed {
            self.save(&peers)?;
        }
        Ok(())
    }

    /// Unpair a device; `false` when it was not paired.
    pub fn remove(&self, device: Uuid) -> Result<bool, NetError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let before = peers.len();
        peers.retain(|p| p.device_id != device);
        let removed = peers.len() != before;
        if removed {
            self.save(&peers)?;
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&device);
        Ok(removed)
    }

    /// Record a successful contact, for the online state of `device list`.
    pub fn mark_seen(&self, device: Uuid, now_ms: u64) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device, now_ms);
    }

    /// When a device was last heard from since this node started.
    pub fn last_seen(&self, device: Uuid) -> Option<u64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&device)
            .copied()
    }
}
