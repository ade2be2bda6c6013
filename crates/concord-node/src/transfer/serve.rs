//! The serving side of `concord/content/1`: [`ContentServer`], the handler
//! mounted on the node's router. Each stream carries one request; the peer
//! must be a paired device, a member of the library, and ask for a file
//! inside a location this device added ([`crate::transfer::source`]).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use concord::hlc::Clock;
use concord::Uuid;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::EndpointId;
use tokio::sync::Semaphore;

use crate::error::NetError;
use crate::frame::{expect_msg, msg_frame, write_msg};
use crate::state::NodeState;
use crate::transfer::apply::serve_apply;
use crate::transfer::fetch::ContentClient;
use crate::transfer::hold::{serve_hold, HoldCache};
use crate::transfer::listing::{serve_list, serve_release, ScanCache};
use crate::transfer::pipe::{channel, pump_out, ChannelWriter, Corruption};
use crate::transfer::progress::TransferProgress;
use crate::transfer::source::{AuthCache, Source};
use crate::transfer::wire::{
    decode_ranges, ContentCall, ContentHeader, ContentRequest, MAX_CONCURRENT_PER_PEER,
    MAX_REQUEST_FRAME, REQUEST_TIMEOUT,
};
use crate::transport::MISBEHAVING;

/// Serves file content to members; counts what it sends.
#[derive(Clone)]
pub struct ContentServer {
    state: Arc<NodeState>,
    progress: Arc<TransferProgress>,
    /// Bytes sent per location since the node started: what `conduit
    /// status` shows as a conduit's `bytes_sent` on its serving device.
    sent_from: Arc<Mutex<HashMap<Uuid, Arc<AtomicU64>>>>,
    corrupt: Arc<Mutex<Corruption>>,
    scans: Arc<ScanCache>,
    /// Hashes of what `Hold` calls checked here (Offload).
    holds: Arc<HoldCache>,
    /// Fetches what a Synchronize peer asks this end to copy from it.
    client: ContentClient,
}

impl std::fmt::Debug for ContentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentServer")
    }
}

impl ContentServer {
    /// Serves the locations of `state`'s libraries.
    pub fn new(state: Arc<NodeState>) -> Self {
        Self {
            state: state.clone(),
            progress: Arc::new(TransferProgress::default()),
            sent_from: Arc::default(),
            corrupt: Arc::new(Mutex::new(None)),
            scans: Arc::new(ScanCache::default()),
            holds: Arc::default(),
            client: ContentClient::new(state.clone()),
        }
    }

    /// What this device has sent (`bytes_sent`, `files_done`) since it started.
    pub fn progress(&self) -> &TransferProgress {
        &self.progress
    }

    /// Bytes of file content this device sent from `location` since it
    /// started (every peer, every call).
    pub fn sent_from(&self, location: Uuid) -> u64 {
        self.sent_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&location)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Test hook: flip the byte at `offset` of every content stream sent
    /// after this call (the data after the header), to prove the receiver
    /// detects it. `None` stops corrupting.
    #[doc(hidden)]
    pub fn corrupt_wire_byte(&self, offset: Option<u64>) {
        *self.corrupt.lock().unwrap_or_else(|e| e.into_inner()) = offset;
    }

    /// One stream: its call, answered.
    async fn serve(
        &self,
        (remote, device, auth): (EndpointId, Uuid, Arc<AuthCache>),
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        let call: ContentCall =
            tokio::time::timeout(REQUEST_TIMEOUT, expect_msg(&mut recv, MAX_REQUEST_FRAME))
                .await
                .map_err(|_| NetError::Timeout("the peer sent no complete request".into()))??;
        let now_ms = || concord::hlc::SystemClock.now_ms() as i64;
        let state = self.state.clone();
        match call {
            ContentCall::File(req) => {
                return self.serve_file((remote, device, auth), send, req).await
            }
            ContentCall::List(req) => {
                let scans = self.scans.clone();
                let page = tokio::task::spawn_blocking(move || {
                    serve_list(&state, &scans, remote, &req, now_ms())
                })
                .await
                .map_err(|e| NetError::Other(format!("listing task failed: {e}")))?;
                write_msg(&mut send, &page).await?;
            }
            ContentCall::Apply(req) => {
                let (client, handle) = (self.client.clone(), tokio::runtime::Handle::current());
                let answer = tokio::task::spawn_blocking(move || {
                    serve_apply(&state, &client, handle, remote, req, now_ms())
                })
                .await
                .map_err(|e| NetError::Other(format!("apply task failed: {e}")))?;
                write_msg(&mut send, &answer).await?;
            }
            ContentCall::Hold(req) => {
                let (client, handle) = (self.client.clone(), tokio::runtime::Handle::current());
                let holds = self.holds.clone();
                let answer = tokio::task::spawn_blocking(move || {
                    serve_hold(&state, &holds, &client, &handle, remote, req, now_ms())
                })
                .await
                .map_err(|e| NetError::Other(format!("hold task failed: {e}")))?;
                write_msg(&mut send, &answer).await?;
            }
            ContentCall::Release(req) => {
                let answer = tokio::task::spawn_blocking(move || {
                    serve_release(&state, remote, &req, now_ms())
                })
                .await
                .map_err(|e| NetError::Other(format!("release task failed: {e}")))?;
                write_msg(&mut send, &answer).await?;
            }
        }
        let _ = send.finish();
        Ok(())
    }

    /// A `File` call: the header, then the bao encoding of the wanted
    /// ranges. Authorising, opening, the header and the encoding run in one
    /// blocking task, so a small file's whole answer is one hand-over to
    /// the stream.
    async fn serve_file(
        &self,
        (remote, device, auth): (EndpointId, Uuid, Arc<AuthCache>),
        mut send: SendStream,
        req: ContentRequest,
    ) -> Result<(), NetError> {
        let wanted = decode_ranges(&req.wanted)?;
        let location = req.location;
        let (state, scans) = (self.state.clone(), self.scans.clone());
        let (tx, rx) = channel();
        let job = tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter::new(tx);
            let opened = auth
                .authorize(&state, remote, &req)
                .and_then(|root| Source::open(root, &req, &scans.trees));
            let source = match opened {
                Ok(source) => source,
                Err(e) => {
                    tracing::debug!(device = %device, "content request refused: {e}");
                    let reason = match e {
                        NetError::Refused(reason) => reason,
                        other => format!("cannot serve the file: {other}"),
                    };
                    out.write_header(&msg_frame(&ContentHeader::Refused { reason })?)?;
                    out.flush()?;
                    return Ok(false);
                }
            };
            out.write_header(&msg_frame(&source.header)?)?;
            source.encode(&wanted, &mut out)?;
            out.flush()?;
            Ok::<_, NetError>(true)
        });
        let corrupt = *self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        let from = self
            .sent_from
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(location)
            .or_default()
            .clone();
        let counters = [&self.progress.bytes_sent, &*from];
        let pumped = pump_out(rx, &mut send, &counters, corrupt).await;
        let served = job
            .await
            .map_err(|e| NetError::Other(format!("serving task failed: {e}")))?;
        match (served, pumped) {
            (Ok(sent), Ok(())) => {
                let _ = send.finish();
                if sent {
                    self.progress
                        .files_done
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => {
                // The receiver must not take a cut stream for a clean end.
                let _ = send.reset(1u32.into());
                Err(e)
            }
        }
    }
}

impl ProtocolHandler for ContentServer {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let remote = conn.remote_id();
        let device = match self.state.authorize(remote) {
            Ok(peer) => peer.device_id,
            Err(e) => {
                tracing::warn!(node = %remote.fmt_short(), "content connection refused: {e}");
                conn.close(3u32.into(), b"not paired");
                return Ok(());
            }
        };
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_PER_PEER));
        let auth = Arc::new(AuthCache::default());
        crate::frame::for_each_stream(&conn, |send, recv| {
            let server = self.clone();
            let slots = slots.clone();
            let auth = auth.clone();
            let conn = conn.clone();
            async move {
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                match server.serve((remote, device, auth), send, recv).await {
                    Ok(()) => {}
                    Err(e @ (NetError::Protocol(_) | NetError::Timeout(_))) => {
                        tracing::warn!(device = %device, "misbehaving peer disconnected: {e}");
                        conn.close(MISBEHAVING.into(), b"protocol violation");
                    }
                    Err(e) => tracing::debug!(device = %device, "content stream closed: {e}"),
                }
            }
        })
        .await;
        Ok(())
    }
}
