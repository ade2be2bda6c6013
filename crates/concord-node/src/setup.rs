//! Library setup, ALPN `concord/library/1` (DESIGN §9, docs/PROTOCOL.md).
//!
//! One request per bidirectional stream. Every request is authorised against the
//! paired-device store by the QUIC-authenticated node id; a device may list and
//! join only libraries that are not private or that it is registered in.
//!
//! Join copies the owner's sync log in zstd-compressed batches; the joiner applies
//! them through its TransactionManager, so it ends with the same state and the
//! same clocks. If anything fails, the half-made library is removed.

use std::net::SocketAddr;
use std::sync::Arc;

use concord::model::Device;
use concord::{Change, Library, Uuid};
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::frame::{expect_msg, write_msg};
use crate::node::NodeState;
use crate::peers::Peer;
use crate::LIBRARY_ALPN;

/// Largest request or control frame.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Largest entry batch frame (compressed) and its inflated size.
pub const MAX_BATCH_FRAME: usize = 16 * 1024 * 1024;
pub const MAX_BATCH_INFLATED: usize = 64 * 1024 * 1024;
/// Entries per batch.
pub const BATCH_ENTRIES: usize = 1000;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Ping {
        device_id: Uuid,
        name: String,
        addrs: Vec<SocketAddr>,
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

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Pong {
        device_id: Uuid,
        name: String,
        addrs: Vec<SocketAddr>,
    },
    Libraries(Vec<RemoteLibrary>),
    JoinAccepted {
        name: String,
        entries: u64,
    },
    /// zstd(postcard(Vec<LogEntry>)).
    Entries(Vec<u8>),
    Done,
    Error {
        message: String,
    },
}

#[derive(Clone)]
pub struct SetupHandler {
    state: Arc<NodeState>,
}

impl std::fmt::Debug for SetupHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetupHandler")
    }
}

impl SetupHandler {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }

    async fn serve(
        &self,
        peer_node: iroh::EndpointId,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        let req: Request = expect_msg(&mut recv, MAX_CONTROL_FRAME).await?;
        let result = self.respond(peer_node, req, &mut send).await;
        if let Err(e) = &result {
            let _ = write_msg(
                &mut send,
                &Response::Error {
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
        req: Request,
        send: &mut SendStream,
    ) -> Result<(), NetError> {
        let st = &self.state;
        let peer = st.authorize(peer_node)?;
        st.peers.mark_seen(peer.device_id, st.now_ms());
        match req {
            Request::Ping {
                device_id,
                name,
                addrs,
            } => {
                if device_id != peer.device_id {
                    return Err(NetError::Refused(
                        "device id does not match the paired node id".into(),
                    ));
                }
                st.peers.update_addrs(peer.device_id, Some(&name), &addrs)?;
                write_msg(
                    send,
                    &Response::Pong {
                        device_id: st.device_id(),
                        name: st.device_name(),
                        addrs: st.local_addrs(),
                    },
                )
                .await
            }
            Request::List => {
                let mut out = Vec::new();
                for l in st.data.list_libraries()? {
                    let lib = st.library(l.id)?;
                    if visible(st, &lib, &peer)? {
                        out.push(RemoteLibrary {
                            id: l.id,
                            name: l.name,
                            devices: count(&lib, "SELECT COUNT(*) FROM devices")?,
                            entries: count(&lib, "SELECT COUNT(*) FROM file_entries")?,
                        });
                    }
                }
                write_msg(send, &Response::Libraries(out)).await
            }
            Request::Join { library } => {
                let lib = st
                    .data
                    .list_libraries()?
                    .iter()
                    .any(|l| l.id == library)
                    .then(|| st.library(library))
                    .transpose()?
                    .ok_or_else(|| {
                        NetError::Refused(format!("{} has no library {library}", st.device_name()))
                    })?;
                if !visible(st, &lib, &peer)? {
                    return Err(NetError::Refused(format!(
                        "library {library} is not shared with this device"
                    )));
                }
                register(&lib, &peer)?;
                // The joiner backfills through the sync protocol (reconcile, or a
                // snapshot where the log was pruned).
                crate::sync::start_service(st, library)?;
                write_msg(
                    send,
                    &Response::JoinAccepted {
                        name: lib.name().to_string(),
                        entries: lib.with_log(|l| l.count())?,
                    },
                )
                .await
            }
            Request::Share { library } => {
                join_library(st, library, &peer).await?;
                write_msg(send, &Response::Done).await
            }
        }
    }
}

impl ProtocolHandler for SetupHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let remote = conn.remote_id();
        crate::frame::for_each_stream(&conn, |send, recv| {
            let me = self.clone();
            async move {
                if let Err(e) = me.serve(remote, send, recv).await {
                    tracing::warn!(node = %remote.fmt_short(), "library request failed: {e}");
                }
            }
        })
        .await;
        Ok(())
    }
}

fn count(lib: &Library, sql: &str) -> Result<u64, NetError> {
    Ok(lib.read(|c| Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64))?)
}

fn is_member(lib: &Library, device: Uuid) -> Result<bool, NetError> {
    Ok(lib.read(|c| {
        Ok(c.query_row(
            "SELECT COUNT(*) FROM devices WHERE uuid = ?1",
            [device],
            |r| r.get::<_, i64>(0),
        )? > 0)
    })?)
}

fn visible(st: &NodeState, lib: &Library, peer: &Peer) -> Result<bool, NetError> {
    Ok(!st.settings(lib.id()).private || is_member(lib, peer.device_id)?)
}

/// Register `peer` in the library's `devices` table (the sync relationship).
pub fn register(lib: &Library, peer: &Peer) -> Result<(), NetError> {
    if !is_member(lib, peer.device_id)? {
        lib.commit(Change::insert(&Device {
            id: peer.device_id,
            name: peer.name.clone(),
            node_id: Some(peer.node_id.clone()),
        }))?;
    }
    Ok(())
}

/// One request on a fresh stream of the cached connection; the reply.
async fn round_trip(
    st: &NodeState,
    peer: &Peer,
    req: &Request,
    max: usize,
) -> Result<Response, NetError> {
    let conn = st.connect(peer, LIBRARY_ALPN).await?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    write_msg(&mut send, req).await?;
    let _ = send.finish();
    match expect_msg(&mut recv, max).await? {
        Response::Error { message } => Err(NetError::Refused(message)),
        r => Ok(r),
    }
}

/// A request with a timeout. A failure of the connection itself (a peer that
/// restarted or went away leaves a dead cached connection behind) drops the
/// cached connection and tries once more on a fresh one; refusals are final.
async fn call(
    st: &NodeState,
    peer: &Peer,
    req: &Request,
    max: usize,
    what: &str,
) -> Result<Response, NetError> {
    let timeout = st.config.request_timeout;
    let mut last = NetError::Timeout(what.to_string());
    for _ in 0..2 {
        match tokio::time::timeout(timeout, round_trip(st, peer, req, max)).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e @ NetError::Refused(_))) => return Err(e),
            Ok(Err(e)) => last = e,
            Err(_) => last = NetError::Timeout(what.to_string()),
        }
        st.disconnect(&peer.node_id).await;
    }
    Err(last)
}

fn unexpected(what: &str) -> NetError {
    NetError::Protocol(format!("unexpected reply to {what}"))
}

/// Ping a paired device; marks it seen and learns its addresses.
pub async fn ping(st: &NodeState, peer: &Peer) -> Result<(), NetError> {
    let req = Request::Ping {
        device_id: st.device_id(),
        name: st.device_name(),
        addrs: st.local_addrs(),
    };
    match call(
        st,
        peer,
        &req,
        MAX_CONTROL_FRAME,
        &format!("ping {}", peer.name),
    )
    .await?
    {
        Response::Pong {
            device_id,
            name,
            addrs,
        } if device_id == peer.device_id => {
            st.peers.mark_seen(peer.device_id, st.now_ms());
            st.peers.update_addrs(peer.device_id, Some(&name), &addrs)
        }
        _ => Err(unexpected("ping")),
    }
}

/// `library remote DEVICE`.
pub async fn list_remote(st: &NodeState, peer: &Peer) -> Result<Vec<RemoteLibrary>, NetError> {
    let what = format!("listing libraries of {}", peer.name);
    match call(st, peer, &Request::List, MAX_BATCH_FRAME, &what).await? {
        Response::Libraries(l) => Ok(l),
        _ => Err(unexpected("list")),
    }
}

/// `library share LIB DEVICE`: register the device, then ask it to join.
pub async fn share(st: &Arc<NodeState>, library: Uuid, peer: &Peer) -> Result<(), NetError> {
    let lib = st.library(library)?;
    register(&lib, peer)?;
    let what = format!("sharing with {}", peer.name);
    match call(
        st,
        peer,
        &Request::Share { library },
        MAX_CONTROL_FRAME,
        &what,
    )
    .await
    {
        Ok(Response::Done) => Ok(()),
        Ok(_) => Err(unexpected("share")),
        Err(NetError::Refused(m)) => Err(NetError::Refused(format!(
            "{} could not join: {m}",
            peer.name
        ))),
        Err(e) => Err(e),
    }
}

/// `library join LIB DEVICE`: copy the library from `peer` (same UUID).
pub async fn join_library(st: &Arc<NodeState>, library: Uuid, peer: &Peer) -> Result<(), NetError> {
    let existed = st.data.list_libraries()?.iter().any(|l| l.id == library);
    let result = join_inner(st, library, peer, existed).await;
    if result.is_err() && !existed {
        if let Some(svc) = st.service(library) {
            svc.stop();
        }
        st.forget_service(library);
        st.forget_library(library);
        let dir = st.data.root().join("libraries").join(library.to_string());
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn join_inner(
    st: &Arc<NodeState>,
    library: Uuid,
    peer: &Peer,
    existed: bool,
) -> Result<(), NetError> {
    let what = format!("joining a library of {}", peer.name);
    let name = match call(
        st,
        peer,
        &Request::Join { library },
        MAX_CONTROL_FRAME,
        &what,
    )
    .await?
    {
        Response::JoinAccepted { name, .. } => name,
        _ => return Err(unexpected("join")),
    };
    concord::validate::name("library name", &name)
        .map_err(|e| NetError::Protocol(e.to_string()))?;
    if !existed {
        if st.data.list_libraries()?.iter().any(|l| l.name == name) {
            return Err(NetError::Other(format!(
                "a different local library is already named {name:?}; rename it first"
            )));
        }
        drop(st.data.create_library_with_id(library, &name)?);
    }
    let (svc, created) = match st.service(library) {
        Some(s) => (s, false),
        None => (crate::sync::create_service(st, library)?, true),
    };
    // Backfill: everything the owner has (a snapshot if it pruned its log), and
    // our registration back to it.
    svc.reconcile_with(peer.device_id)
        .await
        .map_err(|e| NetError::Other(format!("backfill from {} failed: {e}", peer.name)))?;
    if created {
        tokio::spawn(svc.run());
    }
    crate::jobs::start(st, library)?;
    Ok(())
}
