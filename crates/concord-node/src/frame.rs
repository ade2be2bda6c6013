//! Length-prefixed frames on QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard.
//! Every reader passes the protocol's maximum frame size: a larger length closes
//! the stream with an error before anything is allocated.

use iroh::endpoint::{RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::NetError;

/// Write one message as a frame.
pub async fn write_msg<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), NetError> {
    let bytes =
        postcard::to_allocvec(msg).map_err(|e| NetError::Protocol(format!("encode: {e}")))?;
    let len = u32::try_from(bytes.len())
        .map_err(|_| NetError::Protocol("frame too large to send".into()))?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    send.write_all(&bytes)
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

/// zstd-compress a postcard encoding of `value`.
pub fn compress<T: Serialize>(value: &T) -> Result<Vec<u8>, NetError> {
    let raw =
        postcard::to_allocvec(value).map_err(|e| NetError::Protocol(format!("encode: {e}")))?;
    zstd::bulk::compress(&raw, 3).map_err(|e| NetError::Protocol(format!("compress: {e}")))
}

/// Inverse of [`compress`], refusing to inflate past `max` bytes.
pub fn decompress<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, NetError> {
    let raw = zstd::bulk::decompress(bytes, max)
        .map_err(|e| NetError::Protocol(format!("decompress: {e}")))?;
    postcard::from_bytes(&raw).map_err(|e| NetError::Protocol(format!("undecodable batch: {e}")))
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
