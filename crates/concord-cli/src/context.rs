//! What a command runs against: the data dir, how libraries are opened, where
//! progress goes; and the one error type every command returns.

use std::sync::Arc;

use concord::datadir::DataDir;
use concord::{Error, Library, Uuid};

/// A failed command: one line telling the user what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(String);

impl CliError {
    /// An error with a message for people.
    pub fn new(msg: impl Into<String>) -> Self {
        CliError(msg.into())
    }

    /// The message on one line (the contract allows exactly one stderr line).
    pub fn line(&self) -> String {
        self.0
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line())
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError(match e {
            Error::Invalid(msg) => msg,
            Error::NotFound { model, id } => {
                format!("{} {id} not found", model.replace('_', " "))
            }
            Error::Deleted { model, id } => format!(
                "{} {id} was deleted; create a new one instead",
                model.replace('_', " ")
            ),
            Error::NotOwner { model, id, owner } => format!(
                "{} {id} belongs to device {owner}; only that device may change it",
                model.replace('_', " ")
            ),
            Error::Sqlite(e) => format!(
                "database error: {e}; if another concord process is using the library, retry"
            ),
            other => other.to_string(),
        })
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(format!("i/o error: {e}"))
    }
}

/// What every command returns.
pub type CliResult<T> = Result<T, CliError>;

/// Where long work (indexing) reports progress: `done` of `total` (unknown
/// while walking). The terminal shows a bar; a node could forward it.
pub trait ProgressSink: Send + Sync {
    fn update(&self, done: u64, total: Option<u64>);
    fn finish(&self);
}

/// Progress that goes nowhere (not a terminal, or a test).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn update(&self, _: u64, _: Option<u64>) {}
    fn finish(&self) {}
}

/// Everything a command runs against. A node keeps one for its lifetime, so
/// opened libraries can later be cached here without touching the commands.
pub struct Context {
    data_dir: DataDir,
    progress: Box<dyn ProgressSink>,
    opener: Option<Opener>,
}

/// How a node hands out its open libraries (one `Library` per library per process).
pub type Opener = Arc<dyn Fn(Uuid) -> CliResult<Arc<Library>> + Send + Sync>;

impl Context {
    /// Commands run against `data_dir`, opening libraries directly.
    pub fn new(data_dir: DataDir) -> Self {
        Context {
            data_dir,
            progress: Box::new(NoProgress),
            opener: None,
        }
    }

    /// Show long operations' progress on `progress`.
    pub fn with_progress(mut self, progress: Box<dyn ProgressSink>) -> Self {
        self.progress = progress;
        self
    }

    /// Open libraries through `opener` instead of opening them anew.
    pub fn with_opener(mut self, opener: Opener) -> Self {
        self.opener = Some(opener);
        self
    }

    fn open(&self, id: Uuid) -> CliResult<Arc<Library>> {
        match &self.opener {
            Some(open) => open(id),
            None => Ok(Arc::new(self.data_dir.open_library(id)?)),
        }
    }

    /// The data dir commands run against.
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// Where long operations report their progress.
    pub fn progress(&self) -> &dyn ProgressSink {
        self.progress.as_ref()
    }

    /// Open `LIB` (a UUID or a unique name).
    pub fn library(&self, key: &str) -> CliResult<Arc<Library>> {
        if let Ok(id) = Uuid::parse_str(key) {
            let db = self
                .data_dir
                .root()
                .join("libraries")
                .join(id.to_string())
                .join("library.db");
            if db.exists() {
                return self.open(id);
            }
            // else: maybe a library named like a UUID
        }
        let id = match self.data_dir.resolve_library(key) {
            Ok(id) => id,
            Err(Error::LibraryNotFound(_)) => {
                return Err(CliError::new(format!(
                    "no library is named {key:?} or has that UUID; see `concord library list`"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        self.open(id)
    }
}
