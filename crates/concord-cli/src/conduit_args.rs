//! The `conduit ...` subcommands (CLI.md, "Conduits") as clap parses them,
//! and their [`Request`]s. Kept apart from `main.rs` so the command tree of
//! one area stays in one file.

use clap::Subcommand;

use crate::context::CliResult;
use crate::request::Request;

#[derive(Subcommand, Debug)]
pub enum ConduitCmd {
    /// Create a conduit between two folders; prints its UUID
    Create {
        #[arg(value_name = "LIB")]
        library: String,
        /// Source: a location (UUID or name), optionally `:SUBDIR`
        #[arg(long, value_name = "LOCSPEC")]
        from: String,
        /// Destination: a location (UUID or name), optionally `:SUBDIR`
        #[arg(long, value_name = "LOCSPEC")]
        to: String,
        /// replicate, sync, archive or offload
        #[arg(long)]
        policy: String,
        /// Replicate: deletions on the source propagate (to the trash)
        #[arg(long)]
        delete: bool,
        /// instant, manual, or a period such as 15m [default: instant]
        #[arg(long)]
        cadence: Option<String>,
        /// Offload: free space to keep on the source (10G, 15%)
        #[arg(long, value_name = "SIZE|PCT")]
        min_free: Option<String>,
        /// Offload: never offload files with this tag [default: Pinned]
        #[arg(long, value_name = "NAME")]
        pin_tag: Option<String>,
    },
    /// Every conduit of the library
    List {
        #[arg(value_name = "LIB")]
        library: String,
    },
    /// Progress and health of a conduit
    Status {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "CONDUIT")]
        conduit: String,
    },
    /// Run a cycle now (needs a running node)
    Run {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "CONDUIT")]
        conduit: String,
        /// Return when the cycle is done; exit 1 if it paused or failed
        #[arg(long)]
        wait: bool,
    },
    /// Pause a conduit (reason `user`)
    Pause {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "CONDUIT")]
        conduit: String,
    },
    /// Resume a paused conduit
    Resume {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "CONDUIT")]
        conduit: String,
        /// Let the next cycle delete past the mass-delete guard
        #[arg(long)]
        allow_deletes: bool,
    },
    /// Remove a conduit (every file stays)
    Remove {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "CONDUIT")]
        conduit: String,
    },
}

/// `conduit ...` as a request.
pub fn conduit_request(c: ConduitCmd) -> CliResult<Request> {
    Ok(match c {
        ConduitCmd::Create {
            library,
            from,
            to,
            policy,
            delete,
            cadence,
            min_free,
            pin_tag,
        } => Request::ConduitCreate {
            library,
            from,
            to,
            policy,
            delete,
            cadence: cadence.unwrap_or_else(|| "instant".into()),
            min_free,
            pin_tag,
        },
        ConduitCmd::List { library } => Request::ConduitList { library },
        ConduitCmd::Status { library, conduit } => Request::ConduitStatus { library, conduit },
        ConduitCmd::Run {
            library,
            conduit,
            wait,
        } => Request::ConduitRun {
            library,
            conduit,
            wait,
        },
        ConduitCmd::Pause { library, conduit } => Request::ConduitPause { library, conduit },
        ConduitCmd::Resume {
            library,
            conduit,
            allow_deletes,
        } => Request::ConduitResume {
            library,
            conduit,
            allow_deletes,
        },
        ConduitCmd::Remove { library, conduit } => Request::ConduitRemove { library, conduit },
    })
}
