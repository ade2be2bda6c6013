//! Errors of the node layer.

/// Why a node operation failed, in the classes callers act on differently
/// (refusals are final, unreachable peers are retried later).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network i/o: {0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
    #[error("could not reach {0}")]
    Unreachable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error(transparent)]
    Core(#[from] concord::Error),
    #[error("{0}")]
    Other(String),
}

impl From<std::io::Error> for NetError {
    fn from(e: std::io::Error) -> Self {
        NetError::Io(e.to_string())
    }
}
