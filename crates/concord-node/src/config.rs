//! How a node runs ([`NodeConfig`]) and the per-library settings that stay on
//! this device ([`LibrarySettings`]). Kept apart from the node's state so the
//! CLI can write settings without starting a node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use concord::Uuid;
use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// How a node runs: one value chosen at start, read by every part of the node.
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
    /// (see [`crate::jobs`] and [`crate::watcher`]).
    pub watch: bool,
    /// Announce this node and find paired devices on the LAN (mDNS). Off by
    /// default for embedders and tests; `concord start` turns it on unless
    /// `--no-mdns` is given or it listens on loopback.
    pub mdns: bool,
    /// Relays this node is reachable through (`--relay URL`); none by
    /// default, so nothing leaves the LAN unless the user asks.
    pub relays: Vec<iroh::RelayUrl>,
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
            mdns: false,
            relays: Vec::new(),
        }
    }
}

/// Per-library settings that are not synced: `<library dir>/settings.json`.
/// They describe this device's choices (who may see the library), which other
/// devices must not be able to change.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LibrarySettings {
    /// Private libraries are visible only to devices registered in them.
    #[serde(default)]
    pub private: bool,
}

impl LibrarySettings {
    /// The settings of library `id` under `data_root`; defaults when none were
    /// written (or the file is unreadable: a library is shared unless made private).
    pub fn load(data_root: &Path, id: Uuid) -> LibrarySettings {
        std::fs::read(settings_path(data_root, id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Write the settings of library `id` (also used without a running node).
    pub fn save(&self, data_root: &Path, id: Uuid) -> Result<(), NetError> {
        let bytes = serde_json::to_vec(self).map_err(|e| NetError::Other(e.to_string()))?;
        concord::datadir::write_atomic(&settings_path(data_root, id), &bytes)?;
        Ok(())
    }
}

fn settings_path(data_root: &Path, id: Uuid) -> PathBuf {
    data_root
        .join("libraries")
        .join(id.to_string())
        .join("settings.json")
}
