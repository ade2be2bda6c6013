//! Library setup, ALPN `concord/library/1` (DESIGN §9, docs/PROTOCOL.md).
//!
//! One request per bidirectional stream. Every request is authorised against the
//! paired-device store by the QUIC-authenticated node id; a device may list and
//! join only libraries that are not private or that it is registered in.
//!
//! Join: the owner registers the joiner in the library and starts the library's
//! services; it answers `JoinAccepted` with the library's name. The joiner then
//! creates the library under the same id and backfills through the sync
//! protocol: a reconcile with the owner (a snapshot where the owner pruned its
//! log), which also carries the joiner's registration back. Nothing else
//! travels on this protocol. If anything fails, the half-made library is
//! removed.

use std::net::SocketAddr;
use std::sync::Arc;

use concord::model::Device;
use concord::query::members;
use concord::{Change, Library, Uuid};
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::frame::{expect_msg, write_msg};
use crate::host::LibraryHost;
use crate::peers::Peer;
use crate::state::NodeState;
use crate::LIBRARY_ALPN;

/// Largest request or control frame.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Largest list of libraries.
pub const MAX_LIST_FRAME: usize = 16 * 1024 * 1024;

/// What a device asks on `concord/library/1`, one per stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum SetupRequest {
    Ping {
        device_id: Uuid,
        name: String,
        addrs: Vec<SocketAddr>,
        /// Relays the sender is reachable through (at most `MAX_RELAYS`).
        relays: Vec<String>,
    },
    List,
    Join {
        library: Uuid,
    },
    /// "I registered you in this library: join it."
    Share {
        library: Uuid,
    },
}

/// A library as another device lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteLibrary {
    pub id: Uuid,
    pub name: String,
    pub devices: u64,
    pub entries: u64,
}

/// The answer to a [`SetupRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum SetupResponse {
    /// `now_ms`: the answering device's clock (see `skew.rs`).
    Pong {
        device_id: Uuid,
        name: String,
        addrs: Vec<SocketAddr>,
        now_ms: u64,
        relays: Vec<String>,
    },
    Libraries(Vec<RemoteLibrary>),
    /// The joiner is registered; it backfills through the sync protocol.
    JoinAccepted {
        name: String,
    },
    Done,
    Error {
        message: String,
    },
}

/// The library setup protocol: both sides of listing, sharing and joining
/// libraries, and the presence ping. Cheap to clone.
#[derive(Clone)]
pub struct LibrarySetup {
    state: Arc<NodeState>,
    host: LibraryHost,
}

impl std::fmt::Debug for LibrarySetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LibrarySetup")
    }
}

impl LibrarySetup {
    /// Setup for the node of `state`; joined and shared libraries are started
    /// on `host`.
    pub fn new(state: Arc<NodeState>, host: LibraryHost) -> Self {
        Self { state, host }
    }

    async fn serve(
        &self,
        peer_node: iroh::EndpointId,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        // A peer that stalls before its request is complete is cut off.
        let req: SetupRequest = tokio::time::timeout(
            crate::frame::FRAME_READ_TIMEOUT,
            expect_msg(&mut recv, MAX_CONTROL_FRAME),
        )
        .await
        .map_err(|_| NetError::Timeout("the peer sent no complete request".into()))??;
        let result = self.respond(peer_node, req, &mut send).await;
        if let Err(e) = &result {
            let _ = write_msg(
                &mut send,
                &SetupResponse::Error {
                    message: e.to_string(),
                },
            )
            .await;
        }
        let _ = send.finish();
        result
    }

    async fn respond(
        &self,
        peer_node: iroh::EndpointId,
        req: SetupRequest,
        send: &mut SendStream,
    ) -> Result<(), NetError> {
        let state = &self.state;
        let peer = state.authorize(peer_node)?;
        state.peers.mark_seen(peer.device_id, state.now_ms());
        match req {
            SetupRequest::Ping {
                device_id,
                name,
                addrs,
                relays,
            } => {
                if device_id != peer.device_id {
                    return Err(NetError::Refused(
                        "device id does not match the paired node id".into(),
                    ));
                }
                state
                    .peers
                    .update_addrs(peer.device_id, Some(&name), &addrs, Some(&relays))?;
                let pong = SetupResponse::Pong {
                    device_id: state.device_id(),
                    name: state.device_name(),
                    addrs: state.local_addrs(),
                    now_ms: state.now_ms(),
                    relays: state.relay_urls(),
                };
                write_msg(send, &pong).await
            }
            SetupRequest::List => {
                let mut out = Vec::new();
                for listed in state.data.list_libraries()? {
                    let lib = state.library(listed.id)?;
                    if visible(state, &lib, &peer)? {
                        out.push(RemoteLibrary {
                            id: listed.id,
                            name: listed.name,
                            devices: members::member_count(&lib)?,
                            entries: entry_count(&lib)?,
                        });
                    }
                }
                write_msg(send, &SetupResponse::Libraries(out)).await
            }
            SetupRequest::Join { library } => {
                let name = self.accept_join(library, &peer)?;
                write_msg(send, &SetupResponse::JoinAccepted { name }).await
            }
            SetupRequest::Share { library } => {
                self.join_library(library, &peer).await?;
                write_msg(send, &SetupResponse::Done).await
            }
        }
    }

    /// The owner's side of a join: register `peer` in the library and start
    /// the library's services. Returns the library's name.
    fn accept_join(&self, library: Uuid, peer: &Peer) -> Result<String, NetError> {
        let state = &self.state;
        let lib = state
            .data
            .list_libraries()?
            .iter()
            .any(|l| l.id == library)
            .then(|| state.library(library))
            .transpose()?
            .ok_or_else(|| {
                NetError::Refused(format!("{} has no library {library}", state.device_name()))
            })?;
        if !visible(state, &lib, peer)? {
            return Err(NetError::Refused(format!(
                "library {library} is not shared with this device"
            )));
        }
        register(&lib, peer)?;
        // The joiner backfills through the sync protocol (reconcile, or a
        // snapshot where the log was pruned).
        self.host.start(library)?;
        Ok(lib.name().to_string())
    }

    /// One request on a fresh stream of the cached connection; the reply.
    async fn round_trip(
        &self,
        peer: &Peer,
        req: &SetupRequest,
        max: usize,
    ) -> Result<SetupResponse, NetError> {
        let conn = self.state.connect(peer, LIBRARY_ALPN).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| NetError::Io(e.to_string()))?;
        write_msg(&mut send, req).await?;
        let _ = send.finish();
        match expect_msg(&mut recv, max).await? {
            SetupResponse::Error { message } => Err(NetError::Refused(message)),
            reply => Ok(reply),
        }
    }

    /// A request with a timeout. A failure of the connection itself (a peer
    /// that restarted or went away leaves a dead cached connection behind)
    /// drops the cached connection and tries once more on a fresh one;
    /// refusals are final.
    async fn call(
        &self,
        peer: &Peer,
        req: &SetupRequest,
        max: usize,
        what: &str,
    ) -> Result<SetupResponse, NetError> {
        let timeout = self.state.config.request_timeout;
        let mut last = NetError::Timeout(what.to_string());
        for _ in 0..2 {
            match tokio::time::timeout(timeout, self.round_trip(peer, req, max)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e @ NetError::Refused(_))) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = NetError::Timeout(what.to_string()),
            }
            self.state.disconnect(&peer.node_id).await;
        }
        Err(last)
    }

    /// Ping a paired device; marks it seen and learns its addresses.
    pub async fn ping(&self, peer: &Peer) -> Result<(), NetError> {
        let state = &self.state;
        let req = SetupRequest::Ping {
            device_id: state.device_id(),
            name: state.device_name(),
            addrs: state.local_addrs(),
            relays: state.relay_urls(),
        };
        let what = format!("ping {}", peer.name);
        match self.call(peer, &req, MAX_CONTROL_FRAME, &what).await? {
            SetupResponse::Pong {
                device_id,
                name,
                addrs,
                now_ms,
                relays,
            } if device_id == peer.device_id => {
                state.peers.mark_seen(peer.device_id, state.now_ms());
                state.skew.record(device_id, &name, state.now_ms(), now_ms);
                state
                    .peers
                    .update_addrs(peer.device_id, Some(&name), &addrs, Some(&relays))
            }
            _ => Err(unexpected("ping")),
        }
    }

    /// `library remote DEVICE`.
    pub async fn list_remote(&self, peer: &Peer) -> Result<Vec<RemoteLibrary>, NetError> {
        let what = format!("listing libraries of {}", peer.name);
        match self
            .call(peer, &SetupRequest::List, MAX_LIST_FRAME, &what)
            .await?
        {
            SetupResponse::Libraries(libraries) => Ok(libraries),
            _ => Err(unexpected("list")),
        }
    }

    /// `library share LIB DEVICE`: register the device, then ask it to join.
    pub async fn share(&self, library: Uuid, peer: &Peer) -> Result<(), NetError> {
        let lib = self.state.library(library)?;
        register(&lib, peer)?;
        let what = format!("sharing with {}", peer.name);
        let req = SetupRequest::Share { library };
        match self.call(peer, &req, MAX_CONTROL_FRAME, &what).await {
            Ok(SetupResponse::Done) => Ok(()),
            Ok(_) => Err(unexpected("share")),
            Err(NetError::Refused(m)) => Err(NetError::Refused(format!(
                "{} could not join: {m}",
                peer.name
            ))),
            Err(e) => Err(e),
        }
    }

    /// `library join LIB DEVICE`: copy the library from `peer` (same UUID).
    pub async fn join_library(&self, library: Uuid, peer: &Peer) -> Result<(), NetError> {
        let state = &self.state;
        let existed = state.data.list_libraries()?.iter().any(|l| l.id == library);
        let result = self.join_inner(library, peer, existed).await;
        if result.is_err() && !existed {
            self.host.stop(library);
            state.forget_library(library);
            let dir = state
                .data
                .root()
                .join("libraries")
                .join(library.to_string());
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    async fn join_inner(&self, library: Uuid, peer: &Peer, existed: bool) -> Result<(), NetError> {
        let state = &self.state;
        let what = format!("joining a library of {}", peer.name);
        let req = SetupRequest::Join { library };
        let name = match self.call(peer, &req, MAX_CONTROL_FRAME, &what).await? {
            SetupResponse::JoinAccepted { name } => name,
            _ => return Err(unexpected("join")),
        };
        concord::validate::name("library name", &name)
            .map_err(|e| NetError::Protocol(e.to_string()))?;
        if !existed {
            if state.data.list_libraries()?.iter().any(|l| l.name == name) {
                return Err(NetError::Other(format!(
                    "a different local library is already named {name:?}; rename it first"
                )));
            }
            drop(state.data.create_library_with_id(library, &name)?);
        }
        let (service, created) = match self.host.service(library) {
            Some(service) => (service, false),
            None => (self.host.create_service(library)?, true),
        };
        // Backfill: everything the owner has (a snapshot if it pruned its log),
        // and our registration back to it.
        service
            .reconcile_with(peer.device_id)
            .await
            .map_err(|e| NetError::Other(format!("backfill from {} failed: {e}", peer.name)))?;
        if created {
            tokio::spawn(service.run());
        }
        self.host.start_jobs(library)?;
        Ok(())
    }
}

impl ProtocolHandler for LibrarySetup {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let remote = conn.remote_id();
        crate::frame::for_each_stream(&conn, |send, recv| {
            let setup = self.clone();
            async move {
                if let Err(e) = setup.serve(remote, send, recv).await {
                    tracing::warn!(node = %remote.fmt_short(), "library request failed: {e}");
                }
            }
        })
        .await;
        Ok(())
    }
}

/// File entries in a library, for listings.
fn entry_count(lib: &Library) -> Result<u64, NetError> {
    Ok(lib.read(|c| {
        Ok(c.query_row("SELECT COUNT(*) FROM file_entries", [], |r| {
            r.get::<_, i64>(0)
        })? as u64)
    })?)
}

/// A private library is listed and joinable only by its members; a library
/// a device was removed from is never shown to it again.
fn visible(state: &NodeState, lib: &Library, peer: &Peer) -> Result<bool, NetError> {
    if members::is_removed(lib, peer.device_id)? {
        return Ok(false);
    }
    Ok(!state.settings(lib.id()).private || members::is_member(lib, peer.device_id)?)
}

/// Register `peer` in the library's `devices` table (the sync relationship):
/// the membership change any member may make for a device it paired with.
/// A device removed from the library stays removed (a removal is final).
pub fn register(lib: &Library, peer: &Peer) -> Result<(), NetError> {
    if members::is_removed(lib, peer.device_id)? {
        return Err(NetError::Refused(format!(
            "device {} was removed from library {}; a removal is final",
            peer.name,
            lib.name()
        )));
    }
    if !members::is_member(lib, peer.device_id)? {
        lib.commit(Change::insert(&Device {
            id: peer.device_id,
            name: peer.name.clone(),
            node_id: Some(peer.node_id.clone()),
            addrs: crate::state::format_addrs(&peer.addrs, &peer.relays),
            removed: None,
        }))?;
    }
    Ok(())
}

fn unexpected(what: &str) -> NetError {
    NetError::Protocol(format!("unexpected reply to {what}"))
}
