//! Pairing, ALPN `concord/pairing/1` (DESIGN §9, docs/PROTOCOL.md).
//!
//! The joiner dials the node id from the ticket, so QUIC authenticates the
//! inviter. Each side then proves knowledge of the one-time secret with a keyed
//! BLAKE3 MAC over the handshake transcript, which names both node ids, both
//! device ids, the invite id and both nonces: a MAC cannot be replayed on another
//! connection or for another pair of devices. A wrong, expired or reused secret
//! is refused and nothing is stored on either side. So is a device id that is
//! already bound to another node key (`NodeState::check_binding`): a device id
//! belongs to the key it was first paired or registered with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{EndpointAddr, EndpointId, PublicKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::NetError;
use crate::frame::{expect_msg, write_msg};
use crate::identity::random_bytes;
use crate::peers::Peer;
use crate::state::NodeState;
use crate::ticket::{Ticket, MAX_TICKET_ADDRS};
use crate::PAIRING_ALPN;

/// Protocol version inside the ALPN.
pub const VERSION: u32 = 1;
/// Largest pairing frame.
pub const MAX_FRAME: usize = 4 * 1024;
/// Longest validity of an invite: a ticket is a bearer secret, so it
/// should not outlive the moment it was made for.
pub const MAX_INVITE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Wrong proofs tolerated before an invite is burned.
const MAX_FAILED_PROOFS: u32 = 3;

/// An outstanding invite on the inviter: the one-time secret the joiner must
/// prove it knows, until when, and whether it is spent.
#[derive(Debug, Clone)]
pub struct Invite {
    pub secret: [u8; 32],
    pub expires_at: u64,
    pub used: bool,
    pub failures: u32,
}

#[derive(Debug, Serialize, Deserialize)]
enum PairMsg {
    /// Joiner → inviter.
    Hello {
        version: u32,
        invite_id: [u8; 8],
        device_id: Uuid,
        name: String,
        addrs: Vec<SocketAddr>,
        nonce: [u8; 32],
        /// Relays the joiner is reachable through (at most `MAX_RELAYS`).
        relays: Vec<String>,
    },
    /// Inviter → joiner. `now_ms`: the inviter's clock, so the joiner can
    /// tell its user when its own clock is too far off to sync.
    Challenge {
        device_id: Uuid,
        name: String,
        nonce: [u8; 32],
        now_ms: u64,
    },
    /// Joiner → inviter: MAC with role 1.
    Proof {
        mac: [u8; 32],
    },
    /// Inviter → joiner: MAC with role 2; both sides have stored each other.
    Welcome {
        mac: [u8; 32],
    },
    Refused {
        reason: String,
    },
}

struct Transcript<'a> {
    inviter_node: &'a PublicKey,
    joiner_node: &'a PublicKey,
    inviter_device: Uuid,
    joiner_device: Uuid,
    invite_id: [u8; 8],
    joiner_nonce: [u8; 32],
    inviter_nonce: [u8; 32],
}

impl Transcript<'_> {
    fn mac(&self, secret: &[u8; 32], role: u8) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(secret);
        h.update(b"concord/pairing/1 transcript\0");
        h.update(&[role]);
        h.update(self.inviter_node.as_bytes());
        h.update(self.joiner_node.as_bytes());
        h.update(self.inviter_device.as_bytes());
        h.update(self.joiner_device.as_bytes());
        h.update(&self.invite_id);
        h.update(&self.joiner_nonce);
        h.update(&self.inviter_nonce);
        h.finalize()
    }
}

/// The pairing protocol: the inviter's outstanding invites, the joiner's side
/// of the handshake ([`Pairing::join`]) and the inviter's side (its
/// [`ProtocolHandler`]). Cheap to clone: clones share the invites.
#[derive(Clone)]
pub struct Pairing {
    state: Arc<NodeState>,
    invites: Arc<Mutex<HashMap<[u8; 8], Invite>>>,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pairing")
    }
}

impl Pairing {
    /// Pairing for the node of `state`, with no invite outstanding.
    pub fn new(state: Arc<NodeState>) -> Self {
        Pairing {
            state,
            invites: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn invites(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Invite>> {
        self.invites.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make a one-time invite and its ticket, valid `ttl_ms` (the node's
    /// `invite_ttl` by default, at most [`MAX_INVITE_TTL_MS`]).
    pub fn invite(&self, ttl_ms: Option<u64>) -> Ticket {
        let state = &self.state;
        let ttl = ttl_ms
            .unwrap_or(state.config.invite_ttl.as_millis() as u64)
            .min(MAX_INVITE_TTL_MS);
        let secret: [u8; 32] = random_bytes();
        let invite_id: [u8; 8] = random_bytes();
        let expires_at = state.now_ms().saturating_add(ttl);
        let mut invites = self.invites();
        let now = state.now_ms();
        invites.retain(|_, i| i.expires_at > now && !i.used);
        invites.insert(
            invite_id,
            Invite {
                secret,
                expires_at,
                used: false,
                failures: 0,
            },
        );
        Ticket {
            node_id: *state.endpoint.id().as_bytes(),
            device_id: state.device_id(),
            addrs: state.local_addrs(),
            relays: state.relay_urls(),
            invite_id,
            secret,
            expires_at,
        }
    }

    /// Pair with the inviter of `ticket`. Returns the inviter as stored.
    pub async fn join(&self, ticket: &str) -> Result<Peer, NetError> {
        let state = &self.state;
        // Whether the ticket expired is the inviter's to judge, by its own
        // clock: this device's clock may be off by hours (a NAS without a
        // real-time clock), and the ticket's `expires_at` is on the inviter's.
        let ticket = Ticket::decode(ticket)?;
        let inviter_node = PublicKey::from_bytes(&ticket.node_id)
            .map_err(|_| NetError::Refused("invalid ticket: bad node id".into()))?;
        if inviter_node == state.endpoint.id() {
            return Err(NetError::Refused(
                "this ticket was made by this device".into(),
            ));
        }
        let mut addr = EndpointAddr::new(inviter_node);
        for a in &ticket.addrs {
            addr = addr.with_ip_addr(*a);
        }
        for url in crate::relays::usable(&ticket.relays) {
            addr = addr.with_relay_url(url);
        }
        let timeout = state.config.request_timeout;
        let conn = tokio::time::timeout(timeout, state.endpoint.connect(addr, PAIRING_ALPN))
            .await
            .map_err(|_| NetError::Unreachable("the inviting device (timed out)".into()))?
            .map_err(|e| NetError::Unreachable(format!("the inviting device: {e}")))?;
        let result =
            tokio::time::timeout(timeout, join_on(state, &conn, &ticket, inviter_node)).await;
        conn.close(0u32.into(), b"done");
        result.map_err(|_| NetError::Timeout("pairing handshake".into()))?
    }
}

async fn join_on(
    state: &NodeState,
    conn: &Connection,
    ticket: &Ticket,
    inviter_node: PublicKey,
) -> Result<Peer, NetError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| NetError::Io(e.to_string()))?;
    let joiner_nonce: [u8; 32] = random_bytes();
    write_msg(
        &mut send,
        &PairMsg::Hello {
            version: VERSION,
            invite_id: ticket.invite_id,
            device_id: state.device_id(),
            name: state.device_name(),
            addrs: state.local_addrs(),
            nonce: joiner_nonce,
            relays: state.relay_urls(),
        },
    )
    .await?;
    let (inviter_device, inviter_name, inviter_nonce) =
        match expect_msg(&mut recv, MAX_FRAME).await? {
            PairMsg::Challenge {
                device_id,
                name,
                nonce,
                now_ms,
            } => {
                state.skew.record(device_id, &name, state.now_ms(), now_ms);
                (device_id, name, nonce)
            }
            PairMsg::Refused { reason } => {
                return Err(NetError::Refused(format!("pairing refused: {reason}")))
            }
            _ => return Err(NetError::Protocol("unexpected pairing message".into())),
        };
    if inviter_device != ticket.device_id {
        return Err(NetError::Refused(
            "the inviting device does not match the ticket".into(),
        ));
    }
    concord::validate::name("device name", &inviter_name)
        .map_err(|e| NetError::Protocol(format!("inviter sent a bad name: {e}")))?;
    // Before the proof, so that a refusal leaves nothing stored on either side.
    state.check_binding(inviter_device, &inviter_node.to_string())?;
    let joiner_node = state.endpoint.id();
    let transcript = Transcript {
        inviter_node: &inviter_node,
        joiner_node: &joiner_node,
        inviter_device,
        joiner_device: state.device_id(),
        invite_id: ticket.invite_id,
        joiner_nonce,
        inviter_nonce,
    };
    write_msg(
        &mut send,
        &PairMsg::Proof {
            mac: *transcript.mac(&ticket.secret, 1).as_bytes(),
        },
    )
    .await?;
    match expect_msg(&mut recv, MAX_FRAME).await? {
        PairMsg::Welcome { mac } => {
            // `Hash` equality is constant-time.
            if blake3::Hash::from(mac) != transcript.mac(&ticket.secret, 2) {
                return Err(NetError::Refused(
                    "the inviting device failed to prove the secret".into(),
                ));
            }
        }
        PairMsg::Refused { reason } => {
            return Err(NetError::Refused(format!("pairing refused: {reason}")))
        }
        _ => return Err(NetError::Protocol("unexpected pairing message".into())),
    }
    let _ = send.finish();
    let peer = Peer {
        device_id: inviter_device,
        name: inviter_name,
        node_id: inviter_node.to_string(),
        addrs: ticket.addrs.clone(),
        paired_at: state.now_ms(),
        relays: crate::relays::sanitize(&ticket.relays),
    };
    state.peers.upsert(peer.clone())?;
    state.peers.mark_seen(peer.device_id, state.now_ms());
    Ok(peer)
}

/// The inviter's side of the handshake.
impl Pairing {
    async fn handle(&self, conn: &Connection) -> Result<(), NetError> {
        // Anyone who can reach the node may dial this protocol: the stream
        // and the whole handshake must come within the request timeout.
        let limit = self.state.config.request_timeout;
        let (mut send, mut recv) = tokio::time::timeout(limit, conn.accept_bi())
            .await
            .map_err(|_| NetError::Timeout("the joiner opened no stream".into()))?
            .map_err(|e| NetError::Io(e.to_string()))?;
        let joiner_node: EndpointId = conn.remote_id();
        let outcome =
            tokio::time::timeout(limit, self.handshake(&mut send, &mut recv, joiner_node))
                .await
                .unwrap_or_else(|_| Err(NetError::Timeout("pairing handshake".into())));
        if let Err(NetError::Refused(reason)) = &outcome {
            let _ = write_msg(
                &mut send,
                &PairMsg::Refused {
                    reason: reason.clone(),
                },
            )
            .await;
        }
        let _ = send.finish();
        // Let the last frame reach the joiner before the connection goes.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
        outcome
    }

    /// The secret of an invite that may still be used.
    fn open_invite(&self, invite_id: &[u8; 8]) -> Result<[u8; 32], NetError> {
        let invites = self.invites();
        let invite = invites.get(invite_id).ok_or_else(|| {
            NetError::Refused("unknown ticket (was it made by this device?)".into())
        })?;
        if invite.used {
            return Err(NetError::Refused(
                "this ticket was already used; make a new one".into(),
            ));
        }
        if invite.expires_at <= self.state.now_ms() {
            return Err(NetError::Refused(
                "this ticket has expired; make a new one".into(),
            ));
        }
        Ok(invite.secret)
    }

    /// Use up an invite once the joiner proved its secret (`proven`); a wrong
    /// proof counts against it, and burns it after [`MAX_FAILED_PROOFS`].
    fn spend_invite(
        &self,
        invite_id: &[u8; 8],
        proven: bool,
        joiner_node: EndpointId,
    ) -> Result<(), NetError> {
        let mut invites = self.invites();
        let Some(invite) = invites.get_mut(invite_id) else {
            return Err(NetError::Refused("unknown ticket".into()));
        };
        if invite.used {
            return Err(NetError::Refused(
                "this ticket was already used; make a new one".into(),
            ));
        }
        if !proven {
            invite.failures += 1;
            if invite.failures >= MAX_FAILED_PROOFS {
                invite.used = true;
            }
            tracing::warn!(node = %joiner_node.fmt_short(), "pairing refused: wrong secret");
            return Err(NetError::Refused("wrong secret".into()));
        }
        invite.used = true;
        Ok(())
    }

    async fn handshake(
        &self,
        send: &mut iroh::endpoint::SendStream,
        recv: &mut iroh::endpoint::RecvStream,
        joiner_node: EndpointId,
    ) -> Result<(), NetError> {
        let state = &self.state;
        let PairMsg::Hello {
            version,
            invite_id,
            device_id,
            name,
            addrs,
            nonce: joiner_nonce,
            relays,
        } = expect_msg(recv, MAX_FRAME).await?
        else {
            return Err(NetError::Protocol("expected Hello".into()));
        };
        if version != VERSION {
            return Err(NetError::Refused(format!(
                "unsupported pairing version {version}"
            )));
        }
        concord::validate::name("device name", &name)
            .map_err(|e| NetError::Refused(e.to_string()))?;
        if addrs.len() > MAX_TICKET_ADDRS {
            return Err(NetError::Refused("too many addresses".into()));
        }
        let secret = self.open_invite(&invite_id)?;
        let inviter_nonce: [u8; 32] = random_bytes();
        write_msg(
            send,
            &PairMsg::Challenge {
                device_id: state.device_id(),
                name: state.device_name(),
                nonce: inviter_nonce,
                now_ms: state.now_ms(),
            },
        )
        .await?;
        let PairMsg::Proof { mac } = expect_msg(recv, MAX_FRAME).await? else {
            return Err(NetError::Protocol("expected Proof".into()));
        };
        let inviter_node = state.endpoint.id();
        let transcript = Transcript {
            inviter_node: &inviter_node,
            joiner_node: &joiner_node,
            inviter_device: state.device_id(),
            joiner_device: device_id,
            invite_id,
            joiner_nonce,
            inviter_nonce,
        };
        let proven = blake3::Hash::from(mac) == transcript.mac(&secret, 1);
        if proven {
            // Only a joiner that proved the secret learns why it is refused.
            state.check_binding(device_id, &joiner_node.to_string())?;
        }
        self.spend_invite(&invite_id, proven, joiner_node)?;
        let peer = Peer {
            device_id,
            name,
            node_id: joiner_node.to_string(),
            addrs,
            paired_at: state.now_ms(),
            relays: crate::relays::sanitize(&relays),
        };
        state.peers.upsert(peer.clone())?;
        state.peers.mark_seen(device_id, state.now_ms());
        write_msg(
            send,
            &PairMsg::Welcome {
                mac: *transcript.mac(&secret, 2).as_bytes(),
            },
        )
        .await?;
        tracing::info!(device = %device_id, "paired");
        Ok(())
    }
}

impl ProtocolHandler for Pairing {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        if let Err(e) = self.handle(&conn).await {
            tracing::warn!(node = %conn.remote_id().fmt_short(), "pairing failed: {e}");
        }
        Ok(())
    }
}
