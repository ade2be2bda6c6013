//! Pairing tickets: `concord2` followed by lowercase base32 of a postcard
//! encoding of the inviter's node id, device id, addresses, the invite id, a
//! 256-bit one-time secret, the expiry and the inviter's relay URLs.
//! `concord1` tickets (the same without relays) are still accepted.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::NetError;
use crate::relays::MAX_RELAYS;

const PREFIX: &str = "concord2";
/// Tickets made before relays existed.
const PREFIX_V1: &str = "concord1";
/// Longest ticket string accepted.
pub const MAX_TICKET_LEN: usize = 2048;
/// Most addresses a ticket may carry.
pub const MAX_TICKET_ADDRS: usize = 16;

/// A one-time pairing invite as the joiner receives it: whom to dial and
/// the secret to prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub node_id: [u8; 32],
    pub device_id: Uuid,
    pub addrs: Vec<SocketAddr>,
    pub invite_id: [u8; 8],
    pub secret: [u8; 32],
    /// Milliseconds since the Unix epoch.
    pub expires_at: u64,
    /// Relays the inviter is reachable through (`--relay`), at most
    /// [`MAX_RELAYS`]; empty for a node without relays.
    pub relays: Vec<String>,
}

/// The `concord1` layout: a [`Ticket`] without relays.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct TicketV1 {
    node_id: [u8; 32],
    device_id: Uuid,
    addrs: Vec<SocketAddr>,
    invite_id: [u8; 8],
    secret: [u8; 32],
    expires_at: u64,
}

impl Ticket {
    /// The ticket as a `concord1…` string a user can paste.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }

    /// Parse a pasted ticket, refusing anything malformed or over the limits.
    pub fn decode(s: &str) -> Result<Ticket, NetError> {
        let s = s.trim();
        let bad = |why: &str| {
            NetError::Refused(format!(
                "invalid ticket: {why}; ask for a new one with `concord pair invite`"
            ))
        };
        if s.len() > MAX_TICKET_LEN {
            return Err(bad("too long"));
        }
        let (body, v1) = match (s.strip_prefix(PREFIX), s.strip_prefix(PREFIX_V1)) {
            (Some(body), _) => (body, false),
            (None, Some(body)) => (body, true),
            (None, None) => return Err(bad("it does not start with concord2 (or concord1)")),
        };
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad("it is not valid base32 (truncated or mistyped?)"))?;
        let corrupt = |_| bad("it is truncated or corrupt");
        let ticket = if v1 {
            let old: TicketV1 = postcard::from_bytes(&bytes).map_err(corrupt)?;
            Ticket {
                node_id: old.node_id,
                device_id: old.device_id,
                addrs: old.addrs,
                invite_id: old.invite_id,
                secret: old.secret,
                expires_at: old.expires_at,
                relays: Vec::new(),
            }
        } else {
            postcard::from_bytes::<Ticket>(&bytes).map_err(corrupt)?
        };
        if ticket.addrs.len() > MAX_TICKET_ADDRS {
            return Err(bad("too many addresses"));
        }
        if ticket.relays.len() > MAX_RELAYS {
            return Err(bad("too many relays"));
        }
        for url in &ticket.relays {
            crate::relays::parse(url).map_err(|e| bad(&e))?;
        }
        iroh::PublicKey::from_bytes(&ticket.node_id)
            .map_err(|_| bad("the node id is not a valid key"))?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            node_id: *iroh::SecretKey::generate().public().as_bytes(),
            device_id: Uuid::now_v7(),
            addrs: vec!["127.0.0.1:4242".parse().unwrap()],
            invite_id: [1; 8],
            secret: [7; 32],
            expires_at: 123,
            relays: vec!["http://10.0.0.1:3340/".into()],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(Ticket::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn concord1_tickets_still_decode() {
        let t = sample();
        let old = TicketV1 {
            node_id: t.node_id,
            device_id: t.device_id,
            addrs: t.addrs.clone(),
            invite_id: t.invite_id,
            secret: t.secret,
            expires_at: t.expires_at,
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let s = format!(
            "concord1{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        );
        let back = Ticket::decode(&s).unwrap();
        assert_eq!(back.secret, t.secret);
        assert!(back.relays.is_empty());
    }

    #[test]
    fn bad_relays_are_refused() {
        let mut t = sample();
        t.relays = vec!["ftp://nope".into()];
        assert!(Ticket::decode(&t.encode()).is_err());
        t.relays = vec!["http://10.0.0.1:1/".into(); MAX_RELAYS + 1];
        assert!(Ticket::decode(&t.encode()).is_err());
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        let s = sample().encode();
        assert!(Ticket::decode(&s[..s.len() / 2]).is_err());
        assert!(Ticket::decode("hello").is_err());
        assert!(Ticket::decode("concord1!!!!").is_err());
        assert!(Ticket::decode(&"concord1a".repeat(1000)).is_err());
        for cut in 0..s.len() {
            let _ = Ticket::decode(&s[..cut]); // never panics
        }
    }
}
