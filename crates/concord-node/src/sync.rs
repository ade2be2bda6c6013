//! The sync protocol over Iroh, ALPN `concord/sync/1` (docs/PROTOCOL.md).
//!
//! One request per bidirectional stream on a cached connection per peer. A frame
//! is a 4-byte big-endian length, one flag byte (0: postcard, 1: zstd-compressed
//! postcard) and the encoded [`Envelope`]. The handler authenticates the peer by
//! its node id (a paired device, or a device registered in one of our
//! libraries), refuses envelopes whose `from` is not that device, and routes the
//! rest to the library's [`SyncService`].

use std::sync::Arc;

use concord::service::protocol::{Envelope, Msg};
use concord::service::transport::{BoxFuture, Transport, TransportError};
use concord::service::SyncService;
use concord::Uuid;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::error::NetError;
use crate::node::NodeState;
use crate::peers::Peer;
use crate::SYNC_ALPN;

/// Largest frame on the wire (compressed).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest envelope after decompression.
pub const MAX_INFLATED: usize = 64 * 1024 * 1024;
/// Envelopes larger than this are compressed.
const COMPRESS_ABOVE: usize = 4 * 1024;

/// Bytes of sync traffic, for benchmarks and status.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: std::sync::atomic::AtomicU64,
    pub received: std::sync::atomic::AtomicU64,
    pub requests: std::sync::atomic::AtomicU64,
    /// Frames sent, per message type ([`Msg::name`]).
    pub by_msg: std::sync::Mutex<std::collections::BTreeMap<&'static str, MsgTraffic>>,
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
    pub fn by_msg(&self) -> std::collections::BTreeMap<&'static str, MsgTraffic> {
        self.by_msg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, msg: &'static str, wire: usize, raw: usize) {
        self.sent
            .fetch_add(wire as u64, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.by_msg.lock().unwrap_or_else(|e| e.into_inner());
        let t = m.entry(msg).or_default();
        t.frames += 1;
        t.wire += wire as u64;
        t.raw += raw as u64;
    }
}

async fn write_envelope(
    send: &mut SendStream,
    env: &Envelope,
    traffic: &Traffic,
) -> Result<(), NetError> {
    let raw = postcard::to_allocvec(env).map_err(|e| NetError::Protocol(format!("encode: {e}")))?;
    let raw_len = raw.len();
    let (flag, body) = if raw.len() > COMPRESS_ABOVE {
        (
            1u8,
            zstd::bulk::compress(&raw, 1)
                .map_err(|e| NetError::Protocol(format!("compress: {e}")))?,
        )
    } else {
        (0u8, raw)
    };
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| NetError::Protocol("envelope too large".into()))?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(flag);
    frame.extend_from_slice(&body);
    send.write_all(&frame)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    traffic.record(env.msg.name(), frame.len(), raw_len);
    Ok(())
}

async fn read_envelope(recv: &mut RecvStream, traffic: &Traffic) -> Result<Envelope, NetError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(NetError::Protocol(format!(
            "frame of {len} bytes is outside 1..={MAX_FRAME}"
        )));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    traffic
        .received
        .fetch_add(len as u64 + 4, std::sync::atomic::Ordering::Relaxed);
    let raw = match buf[0] {
        0 => buf.split_off(1),
        1 => zstd::bulk::decompress(&buf[1..], MAX_INFLATED)
            .map_err(|e| NetError::Protocol(format!("decompress: {e}")))?,
        f => return Err(NetError::Protocol(format!("unknown frame flag {f}"))),
    };
    let env: Envelope = postcard::from_bytes(&raw)
        .map_err(|e| NetError::Protocol(format!("undecodable envelope: {e}")))?;
    env.msg.check_bounds().map_err(NetError::Protocol)?;
    Ok(env)
}

/// The service's way out: requests to other devices over Iroh.
pub struct IrohTransport {
    state: Arc<NodeState>,
}

impl IrohTransport {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }

    async fn call(&self, to: Uuid, req: Envelope) -> Result<Envelope, NetError> {
        let peer = self.state.peer_for_device(to, req.library)?;
        let conn = self.state.connect(&peer, SYNC_ALPN).await?;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(_) => {
                self.state.disconnect(&peer.node_id).await;
                let conn = self.state.connect(&peer, SYNC_ALPN).await?;
                conn.open_bi()
                    .await
                    .map_err(|e| NetError::Io(e.to_string()))?
            }
        };
        let traffic = &self.state.traffic;
        traffic
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        write_envelope(&mut send, &req, traffic).await?;
        let _ = send.finish();
        let reply = read_envelope(&mut recv, traffic).await?;
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
                    Ok(Ok(r)) => return Ok(r),
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

/// Inbound side of `concord/sync/1`.
#[derive(Clone)]
pub struct SyncHandler {
    state: Arc<NodeState>,
}

impl std::fmt::Debug for SyncHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHandler")
    }
}

impl SyncHandler {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }

    async fn serve(
        &self,
        device: Uuid,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        let traffic = &self.state.traffic;
        let req = read_envelope(&mut recv, traffic).await?;
        let reply = if req.from != device {
            tracing::warn!(claimed = %req.from, actual = %device, "sync request claims another device");
            error_reply(
                &req,
                self.state.device_id(),
                "the sending device does not match the connection",
            )
        } else {
            match self.state.service(req.library) {
                Some(svc) => svc.handle(req).await,
                None => error_reply(
                    &req,
                    self.state.device_id(),
                    "no such library on this device",
                ),
            }
        };
        write_envelope(&mut send, &reply, traffic).await?;
        let _ = send.finish();
        Ok(())
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
        let Some(device) = self.state.device_for_node(&remote.to_string()) else {
            tracing::warn!(node = %remote.fmt_short(), "sync connection from an unknown device refused");
            conn.close(3u32.into(), b"not paired and not a library member");
            return Ok(());
        };
        crate::frame::for_each_stream(&conn, |send, recv| {
            let me = self.clone();
            async move {
                if let Err(e) = me.serve(device, send, recv).await {
                    tracing::warn!(device = %device, "sync stream closed: {e}");
                }
            }
        })
        .await;
        Ok(())
    }
}

/// Device → peer info for members that are not paired directly: node id from the
/// library's `devices` table, addresses unknown (remembered ones are used when
/// the device is also paired).
pub(crate) fn member_peer(device: Uuid, node_id: String) -> Peer {
    Peer {
        device_id: device,
        name: device.to_string(),
        node_id,
        addrs: Vec::new(),
        paired_at: 0,
    }
}

/// Start a service for one library.
pub fn start_service(state: &Arc<NodeState>, library: Uuid) -> Result<SyncService, NetError> {
    if let Some(s) = state.service(library) {
        return Ok(s);
    }
    let svc = create_service(state, library)?;
    tokio::spawn(svc.clone().run());
    crate::jobs::start(state, library)?;
    Ok(svc)
}

/// Create a library's service and let it answer requests, without starting its
/// main loop yet (a joiner backfills first).
pub fn create_service(state: &Arc<NodeState>, library: Uuid) -> Result<SyncService, NetError> {
    let lib = state.library(library)?;
    let svc = SyncService::new(
        lib,
        Arc::new(IrohTransport::new(state.clone())),
        state.config.sync.clone(),
    )?;
    state.insert_service(library, svc.clone());
    Ok(svc)
}
