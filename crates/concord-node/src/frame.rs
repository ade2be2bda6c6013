//! Length-prefixed frames on QUIC streams, the two framings of the node's
//! protocols.
//!
//! Pairing and library setup: a 4-byte big-endian length followed by that many
//! bytes of postcard ([`write_msg`], [`read_msg`]). Every reader passes the
//! protocol's maximum frame size: a larger length closes the stream with an
//! error before anything is allocated.
//!
//! Sync (`concord/sync/1`): a 4-byte big-endian length, one flag byte (0:
//! postcard, 1: zstd-compressed postcard) and the encoded [`Envelope`]
//! ([`encode_envelope`], [`decode_envelope`]). The codec is pure (bytes in,
//! message or error out) so the decoder peers feed is fuzzed as it runs.

use concord::service::protocol::Envelope;
use iroh::endpoint::{RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::NetError;

/// One message as a frame's bytes (length prefix and body), for a writer
/// that is not a stream.
pub fn msg_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, NetError> {
    let body =
        postcard::to_allocvec(msg).map_err(|e| NetError::Protocol(format!("encode: {e}")))?;
    let len = u32::try_from(body.len())
        .map_err(|_| NetError::Protocol("frame too large to send".into()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Write one message as a frame.
pub async fn write_msg<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), NetError> {
    send.write_all(&msg_frame(msg)?)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    Ok(())
}

/// Read one frame of at most `max` bytes and decode it; `Ok(None)` at a clean end
/// of stream.
pub async fn read_msg<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, NetError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Io(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(NetError::Protocol(format!(
            "frame of {len} bytes exceeds the {max}-byte limit"
        )));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    postcard::from_bytes(&buf)
        .map(Some)
        .map_err(|e| NetError::Protocol(format!("undecodable message: {e}")))
}

/// Read one message that must be there.
pub async fn expect_msg<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<T, NetError> {
    read_msg(recv, max)
        .await?
        .ok_or_else(|| NetError::Protocol("stream ended early".into()))
}

/// Largest sync frame on the wire (flag byte and compressed body).
pub const MAX_ENVELOPE_FRAME: usize = 16 * 1024 * 1024;
/// Largest sync envelope after decompression.
pub const MAX_ENVELOPE_INFLATED: usize = 64 * 1024 * 1024;
/// Largest encoded envelope of a message type that carries no entries, rows
/// or pages (terms, cursors, version vectors of at most
/// `MAX_VV_ORIGINS` origins, error texts): its natural bound is far below
/// [`MAX_ENVELOPE_INFLATED`].
pub const MAX_SMALL_ENVELOPE: usize = 1024 * 1024;
/// Longest a peer may take to send one frame once its stream is open; a
/// peer that stalls mid-frame is cut off rather than holding memory.
pub const FRAME_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Envelopes larger than this are compressed.
const COMPRESS_ABOVE: usize = 4 * 1024;

/// A sync envelope as one frame: length prefix, flag byte and body. Returns the
/// frame and the size of the postcard encoding before compression (for the
/// traffic counters).
pub fn encode_envelope(env: &Envelope) -> Result<(Vec<u8>, usize), NetError> {
    let raw = postcard::to_allocvec(env).map_err(|e| NetError::Protocol(format!("encode: {e}")))?;
    let raw_len = raw.len();
    let (flag, body) = if raw.len() > COMPRESS_ABOVE {
        let packed = zstd::bulk::compress(&raw, 1)
            .map_err(|e| NetError::Protocol(format!("compress: {e}")))?;
        (1u8, packed)
    } else {
        (0u8, raw)
    };
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| NetError::Protocol("envelope too large".into()))?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(flag);
    frame.extend_from_slice(&body);
    Ok((frame, raw_len))
}

/// The length a sync frame's 4-byte prefix announces, refused outside
/// `1..=MAX_ENVELOPE_FRAME` before anything is allocated for it.
pub fn envelope_frame_len(prefix: [u8; 4]) -> Result<usize, NetError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 || len > MAX_ENVELOPE_FRAME {
        return Err(NetError::Protocol(format!(
            "frame of {len} bytes is outside 1..={MAX_ENVELOPE_FRAME}"
        )));
    }
    Ok(len)
}

/// Decode a sync frame's bytes after the length prefix (flag byte and body),
/// inflating at most `max_inflated` bytes ([`MAX_ENVELOPE_INFLATED`] on the
/// wire), and check the message's bounds.
pub fn decode_envelope(frame: &[u8], max_inflated: usize) -> Result<Envelope, NetError> {
    let Some((&flag, body)) = frame.split_first() else {
        return Err(NetError::Protocol("empty frame".into()));
    };
    if frame.len() > MAX_ENVELOPE_FRAME {
        return Err(NetError::Protocol(format!(
            "frame of {} bytes exceeds {MAX_ENVELOPE_FRAME}",
            frame.len()
        )));
    }
    let inflated;
    let raw = match flag {
        0 => body,
        1 => {
            // The size is checked before anything is inflated: the frame
            // must declare it, within the limit, and may not exceed it.
            let size = inflated_size(body, max_inflated)?;
            inflated = zstd::bulk::decompress(body, size)
                .map_err(|e| NetError::Protocol(format!("decompress: {e}")))?;
            &inflated[..]
        }
        f => return Err(NetError::Protocol(format!("unknown frame flag {f}"))),
    };
    check_type_bound(raw)?;
    let env: Envelope = postcard::from_bytes(raw)
        .map_err(|e| NetError::Protocol(format!("undecodable envelope: {e}")))?;
    env.msg.check_bounds().map_err(NetError::Protocol)?;
    Ok(env)
}

/// The size a zstd body declares it inflates to, refused when missing (a
/// streamed frame) or above `max`.
fn inflated_size(body: &[u8], max: usize) -> Result<usize, NetError> {
    match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(n)) if n <= max as u64 => Ok(n as usize),
        Ok(Some(n)) => Err(NetError::Protocol(format!(
            "compressed frame inflates to {n} bytes, over the {max}-byte limit"
        ))),
        Ok(None) => Err(NetError::Protocol(
            "compressed frame does not declare its size".into(),
        )),
        Err(_) => Err(NetError::Protocol("not a zstd frame".into())),
    }
}

/// The start of every encoded [`Envelope`], up to its message's variant
/// index: enough to learn the message type before decoding the rest.
#[derive(serde::Deserialize)]
struct EnvelopeHead {
    _id: u64,
    _library: concord::Uuid,
    _from: concord::Uuid,
    variant: u32,
}

/// Variant indices (in `Msg`'s declaration order) of the message types that
/// carry entries, snapshot rows or pages; every other type is bounded by
/// [`MAX_SMALL_ENVELOPE`]. `tests/decoders.rs` checks the indices.
pub const LARGE_VARIANTS: [u32; 8] = [
    0,  // NewEntries
    4,  // ProposeEntries
    6,  // PushEntries
    10, // EntriesResponse
    12, // ReconcileResponse
    13, // SnapshotChunk
    14, // PullPage
    18, // Sequenced
];

/// Refuse an encoding larger than its message type's natural bound, before
/// decoding it (a decoded version vector takes far more memory than its
/// encoding).
fn check_type_bound(raw: &[u8]) -> Result<(), NetError> {
    if raw.len() <= MAX_SMALL_ENVELOPE {
        return Ok(());
    }
    let (head, _) = postcard::take_from_bytes::<EnvelopeHead>(raw)
        .map_err(|e| NetError::Protocol(format!("undecodable envelope: {e}")))?;
    if LARGE_VARIANTS.contains(&head.variant) {
        return Ok(());
    }
    Err(NetError::Protocol(format!(
        "a message of type {} takes {} bytes; at most {MAX_SMALL_ENVELOPE} for its type",
        head.variant,
        raw.len()
    )))
}

/// Write one sync envelope; returns the frame's size and the raw encoding's
/// size (for the traffic counters).
pub async fn write_envelope(
    send: &mut SendStream,
    env: &Envelope,
) -> Result<(usize, usize), NetError> {
    let (frame, raw_len) = encode_envelope(env)?;
    send.write_all(&frame)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    Ok((frame.len(), raw_len))
}

/// Read one sync envelope. `received` is told the frame's size on the wire as
/// soon as it is read, whether or not it decodes. `decodes`, when given, is
/// the peer's share of buffers: a permit is held from the first byte after
/// the length prefix until the envelope is decoded, so a peer's many streams
/// cannot each hold a frame in memory at once. The whole frame must arrive
/// within [`FRAME_READ_TIMEOUT`].
pub async fn read_envelope(
    recv: &mut RecvStream,
    decodes: Option<&tokio::sync::Semaphore>,
    received: impl FnOnce(usize),
) -> Result<Envelope, NetError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    let len = envelope_frame_len(prefix)?;
    let _permit = match decodes {
        Some(s) => Some(
            s.acquire()
                .await
                .map_err(|_| NetError::Io("connection closing".into()))?,
        ),
        None => None,
    };
    let mut frame = vec![0u8; len];
    tokio::time::timeout(FRAME_READ_TIMEOUT, recv.read_exact(&mut frame))
        .await
        .map_err(|_| NetError::Timeout(format!("a frame of {len} bytes (stalled mid-frame)")))?
        .map_err(|e| NetError::Io(e.to_string()))?;
    received(len + 4);
    decode_envelope(&frame, MAX_ENVELOPE_INFLATED)
}

/// Serve every bidirectional stream a peer opens on `conn`, each on its own
/// task, until the connection ends. QUIC's stream limit bounds how many run at
/// once per connection.
pub async fn for_each_stream<F, Fut>(conn: &iroh::endpoint::Connection, mut serve: F)
where
    F: FnMut(SendStream, RecvStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve(send, recv));
    }
}
