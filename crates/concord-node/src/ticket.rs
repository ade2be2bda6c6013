//! Pairing tickets: `concord1` followed by lowercase base32 of a postcard
//! encoding of the inviter's node id, device id, addresses, the invite id, a
//! 256-bit one-time secret and the expiry.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::NetError;

const PREFIX: &str = "concord1";
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
        let body = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("it does not start with concord1"))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad("it is not valid base32 (truncated or mistyped?)"))?;
        let ticket: Ticket =
            postcard::from_bytes(&bytes).map_err(|_| bad("it is truncated or corrupt"))?;
        if ticket.addrs.len() > MAX_TICKET_ADDRS {
            return Err(bad("too many addresses"));
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
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(Ticket::decode(&t.encode()).unwrap(), t);
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
