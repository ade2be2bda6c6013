//! The conduit layer's one error type: every failure says which path and
//! what the user can do, and none of them leaves a partial file behind.

use std::path::PathBuf;

/// Why a conduit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConduitError {
    /// A relative path or name that could escape its root or is out of bounds
    /// (from a peer, a file or a user: never trusted).
    #[error("invalid path {path:?}: {why}")]
    InvalidPath { path: String, why: &'static str },
    /// A component of a path inside a conduit root is a symbolic link (or not
    /// a folder where one is needed); conduits never follow links.
    #[error("{0} is a symbolic link or not a folder; conduits never follow links")]
    NotFollowed(PathBuf),
    /// A setting of a conduit record that does not parse.
    #[error("invalid conduit setting: {0}")]
    Invalid(String),
    /// A file changed between the scan and the moment it was used; the cycle
    /// leaves it alone and the next cycle sees its new state.
    #[error("{0} changed during the cycle; it is left for the next one")]
    Changed(PathBuf),
    /// Content that does not match the version the plan expects (a corrupted
    /// or changed source); nothing is written under the final name.
    #[error("content of {0} does not match its expected version")]
    Mismatch(PathBuf),
    /// A bound on untrusted input was exceeded.
    #[error("{what} exceeds its limit of {limit}")]
    TooLarge { what: &'static str, limit: u64 },
    /// The filesystem is full; the partial file was removed.
    #[error("no space left while writing {0}; the partial file was removed")]
    DiskFull(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConduitError {
    /// An i/o error on `path`, kept apart from a full disk (which pauses the
    /// conduit instead of failing one file).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::StorageFull {
            return ConduitError::DiskFull(path);
        }
        ConduitError::Io { path, source }
    }
}

/// The result type of the conduit layer.
pub type Result<T, E = ConduitError> = std::result::Result<T, E>;
