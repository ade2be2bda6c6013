//! The sync transport: Concord's sync protocol carried over Iroh, ALPN
//! `concord/sync/1` (docs/PROTOCOL.md).
//!
//! One request per bidirectional stream on a cached connection per peer, each
//! request and reply one envelope frame ([`crate::frame::encode_envelope`]).
//! Outbound, [`IrohTransport`] is the library services' way out: the Iroh
//! implementation of the core's `concord::service::transport::Transport`
//! seam (the simulation implements the same seam in memory). Inbound,
//! [`SyncHandler`] authenticates the peer by its node id (a paired device, or a
//! device registered in one of our libraries), refuses envelopes whose `from`
//! is not that device, and routes the rest to the library's `SyncService` on
//! the [`LibraryHost`]. Both count their bytes in one [`Traffic`], which this
//! module owns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use concord::service::protocol::{Envelope, Msg};
use concord::service::transport::{BoxFuture, Transport, TransportError};
use concord::Uuid;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tokio::sync::Semaphore;

use crate::error::NetError;
use crate::frame::{read_envelope, write_envelope, FRAME_READ_TIMEOUT};
use crate::host::LibraryHost;
use crate::state::NodeState;
use crate::SYNC_ALPN;

/// Most envelopes one peer may have in memory at once (read and being
/// decoded), across all its streams: each takes at most
/// [`crate::frame::MAX_ENVELOPE_FRAME`] plus
/// [`crate::frame::MAX_ENVELOPE_INFLATED`] bytes, so a peer holds at most
/// this many times that, however many streams it opens.
pub const MAX_DECODES_PER_PEER: usize = 4;
/// Streams a peer may have open at once on one connection (QUIC's
/// `max_concurrent_bidi_streams`, set on the endpoint): more wait for QUIC
/// flow control on the peer's side and cost us nothing.
pub const MAX_STREAMS_PER_PEER: u32 = 32;
/// Close code of a connection cut off for misbehaving.
pub const MISBEHAVING: u32 = 4;

/// Bytes of sync traffic, for benchmarks and status.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub requests: AtomicU64,
    /// Frames sent, per message type ([`Msg::name`]).
    pub by_msg: Mutex<BTreeMap<&'static str, MsgTraffic>>,
}

/// Frames of one message type sent: how many, bytes on the wire (framing and
/// compression included) and bytes of the postcard encoding before compression.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MsgTraffic {
    pub frames: u64,
    pub wire: u64,
    pub raw: u64,
}

impl Traffic {
    /// A copy of the per-message-type counters.
    pub fn by_msg(&self) -> BTreeMap<&'static str, MsgTraffic> {
        self.by_msg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record_sent(&self, msg: &'static str, wire: usize, raw: usize) {
        self.sent.fetch_add(wire as u64, Ordering::Relaxed);
        let mut by_msg = self.by_msg.lock().unwrap_or_else(|e| e.into_inner());
        let counters = by_msg.entry(msg).or_default();
        counters.frames += 1;
        counters.wire += wire as u64;
        counters.raw += raw as u64;
    }

    fn record_received(&self, wire: usize) {
        self.received.fetch_add(wire as u64, Ordering::Relaxed);
    }

    async fn send(&self, send: &mut SendStream, env: &Envelope) -> Result<(), NetError> {
        let (wire, raw) = write_envelope(send, env).await?;
        self.record_sent(env.msg.name(), wire, raw);
        Ok(())
    }

    async fn receive(
        &self,
        recv: &mut RecvStream,
        decodes: Option<&Semaphore>,
    ) -> Result<Envelope, NetError> {
        read_envelope(recv, decodes, |wire| self.record_received(wire)).await
    }
}

/// The services' way out: requests to other devices over Iroh.
pub struct IrohTransport {
    state: Arc<NodeState>,
    traffic: Arc<Traffic>,
}

impl IrohTransport {
    /// Requests dialled through `state`, counted in `traffic`.
    pub fn new(state: Arc<NodeState>, traffic: Arc<Traffic>) -> Self {
        Self { state, traffic }
    }

    async fn call(&self, to: Uuid, req: Envelope) -> Result<Envelope, NetError> {
        let peer = self.state.peer_for_device(to, req.library)?;
        let conn = self.state.connect(&peer, SYNC_ALPN).await?;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(streams) => streams,
            Err(_) => {
                self.state.disconnect(&peer.node_id).await;
                let conn = self.state.connect(&peer, SYNC_ALPN).await?;
                conn.open_bi()
                    .await
                    .map_err(|e| NetError::Io(e.to_string()))?
            }
        };
        self.traffic.requests.fetch_add(1, Ordering::Relaxed);
        self.traffic.send(&mut send, &req).await?;
        let _ = send.finish();
        let reply = self.traffic.receive(&mut recv, None).await?;
        if reply.id != req.id || reply.from != to {
            return Err(NetError::Protocol(
                "reply does not match the request".into(),
            ));
        }
        Ok(reply)
    }
}

impl Transport for IrohTransport {
    fn request(&self, to: Uuid, req: Envelope) -> BoxFuture<'_, Result<Envelope, TransportError>> {
        Box::pin(async move {
            let timeout = self.state.config.request_timeout;
            let library = req.library;
            let mut result = Err(TransportError::Timeout(to));
            for attempt in 0..2 {
                result = match tokio::time::timeout(timeout, self.call(to, req.clone())).await {
                    Ok(Ok(reply)) => return Ok(reply),
                    Ok(Err(NetError::Unreachable(_))) => Err(TransportError::Unreachable(to)),
                    Ok(Err(e)) => Err(TransportError::Failed(to, e.to_string())),
                    Err(_) => Err(TransportError::Timeout(to)),
                };
                // Maybe a dead cached connection (the peer restarted): drop it,
                // and try a broken one once more on a fresh connection.
                if let Ok(peer) = self.state.peer_for_device(to, library) {
                    self.state.disconnect(&peer.node_id).await;
                }
                if attempt == 0 && !matches!(result, Err(TransportError::Failed(..))) {
                    break;
                }
            }
            result
        })
    }
}

/// Inbound side of `concord/sync/1`: answers with the library's service.
#[derive(Clone)]
pub struct SyncHandler {
    state: Arc<NodeState>,
    host: LibraryHost,
    traffic: Arc<Traffic>,
}

impl std::fmt::Debug for SyncHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHandler")
    }
}

impl SyncHandler {
    /// Answers with the services on `host`, counted in `traffic`.
    pub fn new(state: Arc<NodeState>, host: LibraryHost, traffic: Arc<Traffic>) -> Self {
        Self {
            state,
            host,
            traffic,
        }
    }

    async fn serve(
        &self,
        device: Uuid,
        decodes: &Semaphore,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        // A peer that opens a stream and sends nothing (or stalls mid-frame)
        // is cut off after FRAME_READ_TIMEOUT.
        let req = tokio::time::timeout(
            FRAME_READ_TIMEOUT,
            self.traffic.receive(&mut recv, Some(decodes)),
        )
        .await
        .map_err(|_| NetError::Timeout("the peer sent no complete request".into()))??;
        if !self.still_admitted(device, &req) {
            return Err(NetError::Refused(format!(
                "device {device} is no longer paired nor a member of library {}",
                req.library
            )));
        }
        let reply = if req.from != device {
            tracing::warn!(claimed = %req.from, actual = %device, "sync request claims another device");
            error_reply(
                &req,
                self.state.device_id(),
                "the sending device does not match the connection",
            )
        } else {
            match self.host.service(req.library) {
                Some(service) => service.handle(req).await,
                None => error_reply(
                    &req,
                    self.state.device_id(),
                    "no such library on this device",
                ),
            }
        };
        self.traffic.send(&mut send, &reply).await?;
        let _ = send.finish();
        Ok(())
    }
}

impl SyncHandler {
    /// Whether a device resolved when its connection was accepted may still
    /// be heard: it is still paired, or a member of the library it asks
    /// about. A device removed since then has its connection closed, except
    /// that the entries it pushes still reach the service, which refuses all
    /// but its removal of the member that removed it (a concurrent mutual
    /// removal, `concord::sync::apply::Cutoffs::refusal`) and serves it nothing.
    fn still_admitted(&self, device: Uuid, req: &Envelope) -> bool {
        if self.state.peers.by_device(device).is_some() {
            return true;
        }
        let row = self
            .state
            .library(req.library)
            .and_then(|lib| Ok(concord::query::members::member(&lib, device)?))
            .ok()
            .flatten();
        match row {
            Some(row) if row.removed.is_none() => true,
            Some(_) => matches!(
                req.msg,
                Msg::PushEntries { .. } | Msg::ProposeEntries { .. } | Msg::NewEntries { .. }
            ),
            None => false,
        }
    }
}

fn error_reply(req: &Envelope, me: Uuid, message: &str) -> Envelope {
    Envelope {
        id: req.id,
        library: req.library,
        from: me,
        msg: Msg::Error {
            message: message.to_string(),
        },
    }
}

impl ProtocolHandler for SyncHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let remote = conn.remote_id();
        let node = remote.to_string();
        let found = self
            .state
            .device_for_node(&node)
            .or_else(|| self.state.removed_device_for_node(&node));
        let Some(device) = found else {
            tracing::warn!(node = %remote.fmt_short(), "sync connection from an unknown device refused");
            conn.close(3u32.into(), b"not paired and not a library member");
            return Ok(());
        };
        // This peer's share of decode buffers (its streams are bounded by the
        // endpoint's `max_concurrent_bidi_streams`).
        let decodes = Arc::new(Semaphore::new(MAX_DECODES_PER_PEER));
        crate::frame::for_each_stream(&conn, |send, recv| {
            let handler = self.clone();
            let decodes = decodes.clone();
            let conn = conn.clone();
            async move {
                match handler.serve(device, &decodes, send, recv).await {
                    Ok(()) => {}
                    Err(e @ (NetError::Protocol(_) | NetError::Timeout(_))) => {
                        // Oversized, undecodable, a compression bomb, or a
                        // stall: not an honest peer's mistake. Cut it off.
                        tracing::warn!(device = %device, node = %conn.remote_id().fmt_short(), "misbehaving peer disconnected: {e}");
                        conn.close(MISBEHAVING.into(), b"protocol violation");
                    }
                    Err(NetError::Refused(e)) => {
                        tracing::warn!(device = %device, "connection closed: {e}");
                        conn.close(3u32.into(), b"not paired and not a library member");
                    }
                    Err(e) => tracing::debug!(device = %device, "sync stream closed: {e}"),
                }
            }
        })
        .await;
        Ok(())
    }
}
