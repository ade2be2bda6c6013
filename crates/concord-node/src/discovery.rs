//! Finding devices again when their addresses change: LAN discovery over mDNS
//! and the wake-ups that make the presence loop dial at once instead of at its
//! next tick.
//!
//! What is announced on the LAN is only what a passive listener learns anyway
//! from the QUIC handshake: the node id and the direct addresses (no relay
//! URL, no device name, no library). Announcements are answered by Iroh's
//! address lookup when a dial has no working path; this module also copies the
//! addresses of *paired* devices into the peer store, so they are dialled at
//! the new address even after a restart, and wakes the presence loop.

use std::net::SocketAddr;
use std::sync::Arc;

use iroh::address_lookup::AddrFilter;
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use n0_future::StreamExt;
use n0_watcher::Watcher;
use tokio::sync::Notify;

use crate::error::NetError;
use crate::state::NodeState;
use crate::ticket::MAX_TICKET_ADDRS;

/// The mDNS service name: devices of other Iroh applications are not listed.
const SERVICE_NAME: &str = "concord1";

/// Announce this node on the LAN and listen for paired devices there; runs
/// until the returned task is aborted.
pub fn start_mdns(
    state: Arc<NodeState>,
    wake: Arc<Notify>,
) -> Result<tokio::task::JoinHandle<()>, NetError> {
    let mdns = MdnsAddressLookup::builder()
        .service_name(SERVICE_NAME)
        .addr_filter(AddrFilter::ip_only())
        .build(state.endpoint.id())
        .map_err(|e| NetError::Other(format!("cannot start LAN discovery (mDNS): {e}")))?;
    state
        .endpoint
        .address_lookup()
        .map_err(|e| NetError::Other(format!("cannot start LAN discovery (mDNS): {e}")))?
        .add(mdns.clone());
    Ok(tokio::spawn(async move {
        let mut events = mdns.subscribe().await;
        while let Some(event) = events.next().await {
            if let DiscoveryEvent::Discovered { endpoint_info, .. } = event {
                let node_id = endpoint_info.endpoint_id.to_string();
                let addrs: Vec<SocketAddr> = endpoint_info
                    .data
                    .ip_addrs()
                    .take(MAX_TICKET_ADDRS)
                    .copied()
                    .collect();
                if found(&state, &node_id, &addrs).await {
                    wake.notify_one();
                }
            }
        }
    }))
}

/// A paired device announced `addrs`: remember them when they are new and
/// drop a cached connection that no longer goes to any of them. `true` when
/// something changed, so the device should be dialled now.
async fn found(state: &NodeState, node_id: &str, addrs: &[SocketAddr]) -> bool {
    let Some(peer) = state.peers.by_node(node_id) else {
        return false;
    };
    if addrs.is_empty() || addrs.iter().all(|a| peer.addrs.contains(a)) {
        return false;
    }
    tracing::info!(device = %peer.device_id, ?addrs, "found on the LAN at new addresses");
    if let Err(e) = state.peers.update_addrs(peer.device_id, None, addrs, None) {
        tracing::warn!("cannot remember new addresses of {}: {e}", peer.name);
    }
    state.drop_stale(node_id, addrs).await;
    true
}

/// Wake the presence loop whenever this node's own addresses change (a new
/// network, a lost one), so peers are dialled again at once.
pub fn watch_own_addrs(state: Arc<NodeState>, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watcher = state.endpoint.watch_addr();
        while watcher.updated().await.is_ok() {
            tracing::debug!("own addresses changed; contacting peers again");
            wake.notify_one();
        }
    })
}
