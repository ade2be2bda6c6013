//! The library host: starts and stops each open library's services, its
//! `SyncService` and its job runner (index jobs and the folder watcher).
//!
//! The node starts every library it has through the host, the setup protocol
//! starts a library it shares or joins through it, and the CLI daemon starts a
//! library it has just created through it: one place decides what "a running
//! library" means. The host sits above the node's state and below the protocol
//! handlers; the sync services reach other devices through the transport the
//! node hands it, so it imports no protocol handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use concord::service::transport::Transport;
use concord::service::SyncService;
use concord::Uuid;

use crate::error::NetError;
use crate::jobs::{JobRunners, JobStatus, WatchStatus};
use crate::state::NodeState;

/// The running services of the node's libraries. Cheap to clone: clones share
/// the same services.
#[derive(Clone)]
pub struct LibraryHost {
    inner: Arc<Hosted>,
}

struct Hosted {
    state: Arc<NodeState>,
    transport: Arc<dyn Transport>,
    services: Mutex<HashMap<Uuid, SyncService>>,
    job_runners: JobRunners,
}

impl LibraryHost {
    /// A host whose sync services reach other devices through `transport`.
    pub fn new(state: Arc<NodeState>, transport: Arc<dyn Transport>) -> Self {
        LibraryHost {
            inner: Arc::new(Hosted {
                state,
                transport,
                services: Mutex::new(HashMap::new()),
                job_runners: JobRunners::default(),
            }),
        }
    }

    /// Start a library's sync service and its job runner, unless running.
    pub fn start(&self, library: Uuid) -> Result<SyncService, NetError> {
        if let Some(service) = self.service(library) {
            return Ok(service);
        }
        let service = self.create_service(library)?;
        tokio::spawn(service.clone().run());
        self.start_jobs(library)?;
        Ok(service)
    }

    /// Create a library's service and let it answer requests, without starting
    /// its main loop yet (a joiner backfills first).
    pub fn create_service(&self, library: Uuid) -> Result<SyncService, NetError> {
        let state = &self.inner.state;
        let lib = state.library(library)?;
        let service =
            SyncService::new(lib, self.inner.transport.clone(), state.config.sync.clone())?;
        self.services().insert(library, service.clone());
        Ok(service)
    }

    /// Start the job runner (and folder watcher) of a library, unless running.
    pub fn start_jobs(&self, library: Uuid) -> Result<(), NetError> {
        let state = &self.inner.state;
        let lib = state.library(library)?;
        // Events inside the node's own data folder (a location that holds it)
        // are the node's own writes: watching them would refresh forever.
        let root = state.data.root();
        let ignore = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        self.inner
            .job_runners
            .start(lib, state.config.watch, ignore);
        Ok(())
    }

    /// The running sync service of a library.
    pub fn service(&self, library: Uuid) -> Option<SyncService> {
        self.services().get(&library).cloned()
    }

    /// Stop a library's services and forget them (a failed join).
    pub fn stop(&self, library: Uuid) {
        if let Some(service) = self.services().remove(&library) {
            service.stop();
        }
        self.inner.job_runners.stop(library);
    }

    /// Stop every library's services: the node is shutting down.
    pub fn stop_all(&self) {
        self.inner.job_runners.stop_all();
        for (_, service) in self.services().drain() {
            service.stop();
        }
    }

    /// Index jobs of a library: every peer's bulk operation and what this
    /// device did or is doing about it (see [`crate::jobs`]).
    pub fn jobs(&self, library: Uuid) -> Result<Vec<JobStatus>, NetError> {
        let lib = self.inner.state.library(library)?;
        self.inner.job_runners.list(&lib)
    }

    /// The locations of a library this node watches now.
    pub fn watching(&self, library: Uuid) -> Vec<WatchStatus> {
        self.inner.job_runners.watching(library)
    }

    fn services(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SyncService>> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
