//! The bridge between QUIC streams (async) and the bao encoder and decoder
//! (blocking code on a blocking thread): a bounded channel of byte buffers in
//! each direction, so a transfer holds at most [`DEPTH`] × [`PIECE`] bytes in
//! flight whatever the file's size. The async halves count bytes (progress)
//! and cut a stream that makes no progress for [`STALL_TIMEOUT`].
//!
//! Buffers are large and always full but for the last: each one handed over
//! can wake the other thread, and QUIC yields a received stream one packet
//! (~1.2 KB) at a time, so forwarding what it yields as it comes cost a
//! thread wake per packet and kept so little queued that the stream's flow
//! control stalled the sender. Sent buffers go to QUIC as they are
//! ([`Bytes`], not copied).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::error::NetError;
use crate::transfer::wire::STALL_TIMEOUT;

/// Bytes per buffer handed between the two halves.
pub const PIECE: usize = 256 * 1024;
/// Buffers queued between the two halves.
pub const DEPTH: usize = 4;

/// A bounded channel for one direction of a transfer.
pub fn channel<T>() -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    mpsc::channel(DEPTH)
}

/// What the encoder queues for the stream: bytes, of which the first
/// `header` are the answer's header frame (not file content: not counted as
/// sent content, never corrupted by the test hook).
pub struct Piece {
    pub data: Vec<u8>,
    pub header: usize,
}

/// `std::io::Write` for the encoder: fills buffers of [`PIECE`] bytes and
/// queues them, blocking while the queue is full.
pub struct ChannelWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
    header: usize,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Piece>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(PIECE),
            header: 0,
        }
    }

    /// Queue the answer's header frame ahead of the content, in the same
    /// buffer (a small file's whole answer is one hand-over).
    pub fn write_header(&mut self, frame: &[u8]) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send_buf()?;
        }
        self.buf.extend_from_slice(frame);
        self.header = frame.len();
        Ok(())
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        let header = std::mem::take(&mut self.header);
        self.tx
            .blocking_send(Piece { data, header })
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the stream was closed"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// `std::io::Read` for the decoder: reads the queued buffers in order; the
/// end of the queue (the sender dropped) is the end of the data.
pub struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(next) => {
                    self.cur = next;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A stream error with its causes ("connection lost: ..."): QUIC's own
/// message names the effect only.
fn stream_error(e: impl std::error::Error) -> NetError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    NetError::Io(text)
}

/// A test hook: the stream offset of a byte to flip on its way out.
pub type Corruption = Option<u64>;

/// Write what the encoder queues to `send`, counting content bytes into
/// each of `sent`, then finish the stream. With `corrupt`, the byte at that
/// offset of the content (after the header) is flipped on the wire (tests
/// only).
pub async fn pump_out(
    mut rx: mpsc::Receiver<Piece>,
    send: &mut SendStream,
    sent: &[&AtomicU64],
    corrupt: Corruption,
) -> Result<(), NetError> {
    let mut offset = 0u64;
    while let Some(Piece { mut data, header }) = rx.recv().await {
        let len = data.len().saturating_sub(header) as u64;
        if let Some(at) = corrupt {
            if at >= offset && at < offset + len {
                data[header + (at - offset) as usize] ^= 0x01;
            }
        }
        offset += len;
        tokio::time::timeout(STALL_TIMEOUT, send.write_chunk(Bytes::from(data)))
            .await
            .map_err(|_| NetError::Timeout("the receiver stopped reading".into()))?
            .map_err(stream_error)?;
        for counter in sent {
            counter.fetch_add(len, Ordering::Relaxed);
        }
    }
    let _ = send.finish();
    Ok(())
}

/// Read `recv` to its end into the decoder's queue, counting into
/// `received`, in buffers of [`PIECE`] bytes (the last one shorter). Stops
/// early (dropping the queue, which the decoder sees as the end) when the
/// decoder has gone.
pub async fn pump_in(
    recv: &mut RecvStream,
    tx: mpsc::Sender<Vec<u8>>,
    received: &AtomicU64,
) -> Result<(), NetError> {
    let mut buf = Vec::with_capacity(PIECE);
    loop {
        let room = PIECE - buf.len();
        let chunk = tokio::time::timeout(STALL_TIMEOUT, recv.read_chunk(room))
            .await
            .map_err(|_| NetError::Timeout("the sender stalled".into()))?
            .map_err(stream_error)?;
        let end = match chunk {
            Some(chunk) => {
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk);
                false
            }
            None => true,
        };
        if buf.len() == PIECE || (end && !buf.is_empty()) {
            let full = std::mem::replace(&mut buf, Vec::with_capacity(PIECE));
            if tx.send(full).await.is_err() {
                return Ok(());
            }
        }
        if end {
            return Ok(());
        }
    }
}
