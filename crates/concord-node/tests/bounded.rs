//! Bounded peers: real nodes on 127.0.0.1, one of them (mallory, paired and
//! so allowed to speak the sync protocol) sending a compression bomb, a
//! compressed frame that hides its size, a thousand streams, or a frame it
//! never finishes. Each time the node cuts mallory's connection off
//! (`MISBEHAVING`), and an honest device's changes keep flowing to it over
//! its own connection, during and after.

use std::sync::Arc;
use std::time::Duration;

use concord::digest::{digest, Scope};
use concord::model::Tag;
use concord::{Change, Library, Uuid};
use concord_node::transport::{MAX_STREAMS_PER_PEER, MISBEHAVING};
use concord_node::Node;
use iroh::endpoint::{Connection, ConnectionError, VarInt};

mod support;
use support::{fast_config, pair, share_new_library, start, wait_for};

/// How long a test waits for anything (the node cuts a staller off after
/// `FRAME_READ_TIMEOUT`, 10 s).
const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    _tmp: tempfile::TempDir,
    a: Node,
    b: Node,
    m: Node,
    la: Arc<Library>,
    lb: Arc<Library>,
}

/// alpha and beta share a library; mallory is paired with alpha.
async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), fast_config("alpha", false)).await;
    let b = start(&tmp.path().join("b"), fast_config("beta", false)).await;
    let m = start(&tmp.path().join("m"), fast_config("mallory", false)).await;
    pair(&a, &b).await;
    pair(&a, &m).await;
    let lib = share_new_library(&a, &b, "photos").await;
    let la = a.state.library(lib).unwrap();
    let lb = b.state.library(lib).unwrap();
    Setup {
        _tmp: tmp,
        a,
        b,
        m,
        la,
        lb,
    }
}

impl Setup {
    /// A tag written on beta reaches alpha, and their digests agree.
    async fn honest_write_arrives(&self, name: &str) {
        self.lb
            .commit(Change::insert(&Tag {
                id: Uuid::now_v7(),
                name: name.into(),
                color: None,
            }))
            .unwrap();
        let la = self.la.clone();
        let lb = self.lb.clone();
        wait_for(&format!("{name} on alpha"), LIMIT, move || {
            la.read(|c| digest(c, Scope::All)).unwrap()
                == lb.read(|c| digest(c, Scope::All)).unwrap()
        })
        .await;
    }

    /// Mallory's own connection to alpha's sync protocol.
    async fn mallory_connects(&self) -> Connection {
        let addr = iroh::EndpointAddr::new(self.a.node_id()).with_ip_addr(self.a.addrs()[0]);
        self.m
            .state
            .endpoint
            .connect(addr, concord_node::SYNC_ALPN)
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
        self.m.shutdown().await;
    }
}

/// The connection ends, closed by alpha as misbehaving.
async fn cut_off(conn: &Connection) {
    let reason = tokio::time::timeout(LIMIT, conn.closed())
        .await
        .expect("alpha never closed the connection");
    match reason {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(MISBEHAVING), "{close:?}")
        }
        other => panic!("closed otherwise: {other:?}"),
    }
}

/// A sync frame: length prefix, flag byte, body.
fn frame(flag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(flag);
    f.extend_from_slice(body);
    f
}

/// A zstd frame header declaring `size` bytes of content (single segment,
/// 8-byte content size), then one RLE block: tiny on the wire, `size` bytes
/// if anyone believed it.
fn zstd_declaring(size: u64) -> Vec<u8> {
    let mut z = 0xFD2F_B528u32.to_le_bytes().to_vec();
    z.push(0xE0);
    z.extend_from_slice(&size.to_le_bytes());
    // Last block, RLE, one byte of block size.
    let header: u32 = 1 | (1 << 1) | (1 << 3);
    z.extend_from_slice(&header.to_le_bytes()[..3]);
    z.push(0);
    z
}

/// Open a stream and write `bytes` on it, leaving it open (returned): the
/// node must act without waiting for the stream's end.
async fn send_on_new_stream(
    conn: &Connection,
    bytes: &[u8],
) -> (iroh::endpoint::SendStream, iroh::endpoint::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_or_a_hidden_size_is_refused_before_inflating() {
    let s = setup().await;
    s.honest_write_arrives("before").await;

    // Declares 1 GiB: refused from its header, nothing inflated.
    let conn = s.mallory_connects().await;
    let _stream = send_on_new_stream(&conn, &frame(1, &zstd_declaring(1 << 30))).await;
    cut_off(&conn).await;
    s.honest_write_arrives("after-bomb").await;

    // A streamed zstd frame does not declare its size: refused too.
    let hidden = zstd::stream::encode_all(&vec![7u8; 100_000][..], 1).unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&hidden).unwrap(),
        None
    );
    let conn = s.mallory_connects().await;
    let _stream = send_on_new_stream(&conn, &frame(1, &hidden)).await;
    cut_off(&conn).await;
    s.honest_write_arrives("after-hidden").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_get_a_few_dozen_and_a_cut_connection() {
    let s = setup().await;
    let conn = s.mallory_connects().await;
    // Each stream announces a 1 MiB frame and sends ten bytes of it.
    let mut partial = (1u32 << 20).to_be_bytes().to_vec();
    partial.extend([0u8; 10]);
    let opener = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut opened = 0u32;
            let mut streams = Vec::new();
            for _ in 0..1000 {
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    break;
                };
                if send.write_all(&partial).await.is_err() {
                    break;
                }
                opened += 1;
                streams.push((send, recv));
            }
            opened
        })
    };
    // Honest traffic flows while mallory holds its streams.
    s.honest_write_arrives("during").await;
    cut_off(&conn).await;
    let opened = tokio::time::timeout(LIMIT, opener).await.unwrap().unwrap();
    assert!(
        opened <= MAX_STREAMS_PER_PEER,
        "{opened} streams open at once"
    );
    s.honest_write_arrives("after").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_mid_frame_is_cut_off() {
    let s = setup().await;
    let conn = s.mallory_connects().await;
    let mut partial = 1000u32.to_be_bytes().to_vec();
    partial.extend([0u8; 10]);
    let _stream = send_on_new_stream(&conn, &partial).await;
    s.honest_write_arrives("during").await;
    cut_off(&conn).await;
    s.honest_write_arrives("after").await;
    s.shutdown().await;
}
