//! How the SyncService reaches other devices. Production uses Iroh
//! (`concord-node`); the simulation uses an in-memory network. Both deliver
//! inbound requests to [`super::SyncService::handle`].

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use super::protocol::Envelope;

/// The future a [`Transport`] returns (boxed, so the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a request got no response.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("device {0} is unreachable")]
    Unreachable(Uuid),
    #[error("request to {0} timed out")]
    Timeout(Uuid),
    #[error("connection to {0} failed: {1}")]
    Failed(Uuid, String),
}

/// Request/response messaging between the devices of a library.
pub trait Transport: Send + Sync + 'static {
    /// Send `request` to device `to` and wait for its response (with a timeout).
    fn request(
        &self,
        to: Uuid,
        request: Envelope,
    ) -> BoxFuture<'_, Result<Envelope, TransportError>>;
}
