//! Errors of the library layer. Messages say what is wrong and what to do.

use uuid::Uuid;

use crate::hlc::HlcError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Clock(#[from] HlcError),
    #[error("{model} {id} not found")]
    NotFound { model: &'static str, id: Uuid },
    #[error("{model} {id} was deleted; deleted records cannot be changed (create a new one)")]
    Deleted { model: &'static str, id: Uuid },
    #[error("{model} {id} already exists")]
    AlreadyExists { model: &'static str, id: Uuid },
    #[error("{model} {id} belongs to device {owner}; only its owner may change it")]
    NotOwner {
        model: &'static str,
        id: Uuid,
        owner: Uuid,
    },
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("malformed log entry: {0}")]
    Malformed(String),
    #[error("library {0} not found")]
    LibraryNotFound(String),
    #[error("{0}")]
    Other(String),
}

/// Results of the core crate, so signatures name only what they return.
pub type Result<T, E = Error> = std::result::Result<T, E>;
