//! The `concord` command line (contract: `CLI.md`).
//!
//! Flow: clap parses the arguments, [`request`] turns them into a [`Request`]
//! (paths made absolute, nothing looked up yet), [`ops::execute`] runs it
//! against a [`Context`] and returns the `--json` value, and [`render`] prints
//! that value, plainly or as JSON. When a node runs, the `Request` will be sent
//! to it instead and only the rendering happens here.

mod conduit_args;
mod conduit_node;
mod context;
mod daemon;
mod demo;
mod fetch;
mod fetch_back;
mod ops;
mod progress;
mod relay;
mod render;
mod request;
mod resolve;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use concord::datadir::DataDir;
use concord::Uuid;

use context::{CliError, CliResult, Context};
use request::{EntryRef, Request};

/// Keeps a file manager's library in sync across your devices.
#[derive(Parser, Debug)]
#[command(name = "concord", version)]
struct Cli {
    /// Data directory [default: $CONCORD_DATA_DIR, else the platform data directory]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print exactly one JSON value on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node in the foreground (libraries, networking, sync)
    Start {
        /// Name this device
        #[arg(long)]
        name: Option<String>,
        /// Socket address to listen on, e.g. 127.0.0.1:0
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// No LAN discovery (mDNS); it is also off when listening on loopback
        #[arg(long)]
        no_mdns: bool,
        /// Be reachable through this relay (repeatable); none by default
        #[arg(long, value_name = "URL")]
        relay: Vec<String>,
        /// Leader heartbeat interval in milliseconds [default: 30000]
        #[arg(long, value_name = "MS", hide = true)]
        heartbeat_ms: Option<u64>,
        /// Leader timeout in milliseconds [default: 60000]
        #[arg(long, value_name = "MS", hide = true)]
        leader_timeout_ms: Option<u64>,
        /// How often paired devices are contacted, in milliseconds [default: 15000]
        #[arg(long, value_name = "MS", hide = true)]
        presence_ms: Option<u64>,
        /// Log retention for absent devices, in milliseconds [default: 30 days]
        #[arg(long, value_name = "MS", hide = true)]
        retention_ms: Option<u64>,
    },
    /// Stop the running node
    Stop,
    /// Run a relay server for devices in networks with no route between them
    Relay {
        /// Socket address to serve on, e.g. 0.0.0.0:3340
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// TLS certificate chain (PEM)
        #[arg(long, value_name = "PEM", requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// TLS private key (PEM)
        #[arg(long, value_name = "PEM", requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// Serve plain HTTP (a trusted LAN or a test network only)
        #[arg(long, conflicts_with_all = ["cert", "key"])]
        insecure_http: bool,
    },
    /// Pair with another device
    #[command(subcommand)]
    Pair(PairCmd),
    /// This device (id, node id, name); `device list|remove` for paired devices
    Device {
        #[command(subcommand)]
        action: Option<DeviceCmd>,
    },
    /// Sync state of a library
    #[command(subcommand)]
    Sync(SyncCmd),
    /// Start several devices on this machine and show them syncing
    Demo {
        /// How many devices
        #[arg(long, default_value_t = 3)]
        devices: usize,
    },
    /// Create, list, digest and export libraries
    #[command(subcommand)]
    Library(LibraryCmd),
    /// Tags and tagging
    #[command(subcommand)]
    Tag(TagCmd),
    /// Albums and their entries
    #[command(subcommand)]
    Album(AlbumCmd),
    /// Indexed folders
    #[command(subcommand)]
    Location(LocationCmd),
    /// File entries
    #[command(subcommand)]
    Entry(EntryCmd),
    /// Sync conduits: file content kept flowing between folders
    #[command(subcommand)]
    Conduit(conduit_args::ConduitCmd),
}

#[derive(Subcommand, Debug)]
enum PairCmd {
    /// Make a one-time ticket (valid 5 minutes); prints it
    Invite {
        /// Validity in milliseconds (for tests; at most a day)
        #[arg(long, value_name = "MS", hide = true,
              value_parser = clap::value_parser!(u64).range(1..=concord_node::pairing::MAX_INVITE_TTL_MS))]
        ttl_ms: Option<u64>,
    },
    /// Pair with the device that made TICKET
    Join { ticket: String },
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Paired devices
    List,
    /// Unpair a device; it loses access at once
    Remove {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
}

#[derive(Subcommand, Debug)]
enum SyncCmd {
    /// Leader, epoch, version vector and peers of a library
    Status {
        #[arg(value_name = "LIB")]
        library: String,
    },
    /// Overridden writes recorded on this device
    Conflicts {
        #[arg(value_name = "LIB")]
        library: String,
    },
}

#[derive(Subcommand, Debug)]
enum LibraryCmd {
    /// Create a library; prints its UUID
    Create {
        name: String,
        /// Visible only to devices it is shared with (`library share`)
        #[arg(long)]
        private: bool,
    },
    /// Libraries of a paired device
    Remote {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Share a local library with a paired device
    Share {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Join a paired device's library and backfill it
    Join {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Local libraries
    List,
    /// Digest of the library's synced state
    Digest {
        #[arg(value_name = "LIB")]
        library: String,
        /// Leave file-entry rows out (they match only after `location pull`)
        #[arg(long)]
        shared: bool,
    },
    /// The synced state as canonical JSON
    Export {
        #[arg(value_name = "LIB")]
        library: String,
    },
}

#[derive(Subcommand, Debug)]
enum TagCmd {
    /// Create a tag; prints its UUID
    Create {
        #[arg(value_name = "LIB")]
        library: String,
        name: String,
        /// Colour as six hex digits, e.g. #ff8800
        #[arg(long, value_name = "HEX")]
        color: Option<String>,
    },
    /// Rename a tag
    Rename {
        #[arg(value_name = "LIB")]
        library: String,
        tag: String,
        new_name: String,
    },
    /// Change a tag's colour
    Recolor {
        #[arg(value_name = "LIB")]
        library: String,
        tag: String,
        #[arg(value_name = "HEX")]
        color: String,
    },
    /// Delete a tag (and its assignments)
    Delete {
        #[arg(value_name = "LIB")]
        library: String,
        tag: String,
    },
    /// Tags of a library
    List {
        #[arg(value_name = "LIB")]
        library: String,
    },
    /// Tag entries (UUIDs or paths)
    Apply {
        #[arg(value_name = "LIB")]
        library: String,
        tag: String,
        #[arg(value_name = "ENTRY", required = true)]
        entries: Vec<PathBuf>,
    },
    /// Untag entries (UUIDs or paths)
    Remove {
        #[arg(value_name = "LIB")]
        library: String,
        tag: String,
        #[arg(value_name = "ENTRY", required = true)]
        entries: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AlbumCmd {
    /// Create an album; prints its UUID
    Create {
        #[arg(value_name = "LIB")]
        library: String,
        name: String,
    },
    /// Rename an album
    Rename {
        #[arg(value_name = "LIB")]
        library: String,
        album: String,
        new_name: String,
    },
    /// Delete an album (not its files)
    Delete {
        #[arg(value_name = "LIB")]
        library: String,
        album: String,
    },
    /// Add entries (UUIDs or paths)
    Add {
        #[arg(value_name = "LIB")]
        library: String,
        album: String,
        #[arg(value_name = "ENTRY", required = true)]
        entries: Vec<PathBuf>,
    },
    /// Remove entries (UUIDs or paths)
    Remove {
        #[arg(value_name = "LIB")]
        library: String,
        album: String,
        #[arg(value_name = "ENTRY", required = true)]
        entries: Vec<PathBuf>,
    },
    /// Albums of a library
    List {
        #[arg(value_name = "LIB")]
        library: String,
    },
}

#[derive(Subcommand, Debug)]
enum LocationCmd {
    /// Index a folder; prints the location's UUID
    Add {
        #[arg(value_name = "LIB")]
        library: String,
        path: PathBuf,
    },
    /// Locations of every device
    List {
        #[arg(value_name = "LIB")]
        library: String,
    },
    /// Index a location of this device again
    Rescan {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "LOC")]
        location: String,
    },
    /// Fetch or refresh another device's location(s) now (all when LOC is omitted)
    Pull {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "LOC")]
        location: Option<String>,
    },
    /// Forget a location of this device and its entries (files stay on disk)
    Remove {
        #[arg(value_name = "LIB")]
        library: String,
        #[arg(value_name = "LOC")]
        location: String,
    },
}

#[derive(Subcommand, Debug)]
enum EntryCmd {
    /// File entries, with their tags
    List {
        #[arg(value_name = "LIB")]
        library: String,
        /// Only this location (UUID or name)
        #[arg(long, value_name = "LOC")]
        location: Option<String>,
        /// Only this device's entries (UUID or name)
        #[arg(long)]
        device: Option<String>,
    },
    /// Copy a file or folder of another device here (verified, resumable)
    Fetch {
        #[arg(value_name = "LIB")]
        library: String,
        /// The entry's UUID (see `entry list LIB --device DEVICE`)
        #[arg(value_name = "ENTRY")]
        entry: PathBuf,
        /// Where to put the copy (must not exist yet)
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
    },
}

/// A path argument made absolute against the current directory, as UTF-8.
fn absolute(p: &Path) -> CliResult<String> {
    if p.as_os_str().is_empty() {
        return Err(CliError::new(
            "an empty path was given; name a file or folder",
        ));
    }
    let abs = std::path::absolute(p)
        .map_err(|e| CliError::new(format!("cannot resolve {}: {e}", p.display())))?;
    abs.into_os_string().into_string().map_err(|raw| {
        CliError::new(format!(
            "{} is not valid UTF-8; concord handles UTF-8 paths only",
            Path::new(&raw).display()
        ))
    })
}

/// `ENTRY`: a UUID, unless a file of that name exists here; else a path.
fn entry_refs(args: Vec<PathBuf>) -> CliResult<Vec<EntryRef>> {
    args.into_iter()
        .map(|a| match a.to_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) if std::fs::symlink_metadata(&a).is_err() => Ok(EntryRef::Id(id)),
            _ => absolute(&a).map(EntryRef::Path),
        })
        .collect()
}

fn request(cmd: Command) -> CliResult<Request> {
    Ok(match cmd {
        Command::Start { .. } | Command::Demo { .. } | Command::Relay { .. } => {
            return Err(CliError::new("internal: start/demo are not requests"))
        }
        Command::Stop => Request::Stop,
        Command::Pair(PairCmd::Invite { ttl_ms }) => Request::PairInvite { ttl_ms },
        Command::Pair(PairCmd::Join { ticket }) => Request::PairJoin { ticket },
        Command::Device { action: None } => Request::Device,
        Command::Device {
            action: Some(DeviceCmd::List),
        } => Request::DeviceList,
        Command::Device {
            action: Some(DeviceCmd::Remove { device }),
        } => Request::DeviceRemove { device },
        Command::Sync(SyncCmd::Status { library }) => Request::SyncStatus { library },
        Command::Sync(SyncCmd::Conflicts { library }) => Request::SyncConflicts { library },
        Command::Library(c) => library_request(c),
        Command::Tag(c) => tag_request(c)?,
        Command::Album(c) => album_request(c)?,
        Command::Location(c) => location_request(c)?,
        Command::Conduit(c) => conduit_args::conduit_request(c)?,
        Command::Entry(EntryCmd::List {
            library,
            location,
            device,
        }) => Request::EntryList {
            library,
            location,
            device,
        },
        Command::Entry(EntryCmd::Fetch { library, entry, to }) => Request::EntryFetch {
            library,
            entry: entry_refs(vec![entry])?.remove(0),
            to: to.as_deref().map(absolute).transpose()?,
        },
    })
}

/// `library ...` as a request.
fn library_request(c: LibraryCmd) -> Request {
    match c {
        LibraryCmd::Create { name, private } => Request::LibraryCreate { name, private },
        LibraryCmd::Remote { device } => Request::LibraryRemote { device },
        LibraryCmd::Share { library, device } => Request::LibraryShare { library, device },
        LibraryCmd::Join { library, device } => Request::LibraryJoin { library, device },
        LibraryCmd::List => Request::LibraryList,
        LibraryCmd::Digest { library, shared } => Request::LibraryDigest { library, shared },
        LibraryCmd::Export { library } => Request::LibraryExport { library },
    }
}

/// `tag ...` as a request.
fn tag_request(c: TagCmd) -> CliResult<Request> {
    Ok(match c {
        TagCmd::Create {
            library,
            name,
            color,
        } => Request::TagCreate {
            library,
            name,
            color,
        },
        TagCmd::Rename {
            library,
            tag,
            new_name,
        } => Request::TagRename {
            library,
            tag,
            name: new_name,
        },
        TagCmd::Recolor {
            library,
            tag,
            color,
        } => Request::TagRecolor {
            library,
            tag,
            color,
        },
        TagCmd::Delete { library, tag } => Request::TagDelete { library, tag },
        TagCmd::List { library } => Request::TagList { library },
        TagCmd::Apply {
            library,
            tag,
            entries,
        } => Request::TagApply {
            library,
            tag,
            entries: entry_refs(entries)?,
        },
        TagCmd::Remove {
            library,
            tag,
            entries,
        } => Request::TagRemove {
            library,
            tag,
            entries: entry_refs(entries)?,
        },
    })
}

/// `album ...` as a request.
fn album_request(c: AlbumCmd) -> CliResult<Request> {
    Ok(match c {
        AlbumCmd::Create { library, name } => Request::AlbumCreate { library, name },
        AlbumCmd::Rename {
            library,
            album,
            new_name,
        } => Request::AlbumRename {
            library,
            album,
            name: new_name,
        },
        AlbumCmd::Delete { library, album } => Request::AlbumDelete { library, album },
        AlbumCmd::Add {
            library,
            album,
            entries,
        } => Request::AlbumAdd {
            library,
            album,
            entries: entry_refs(entries)?,
        },
        AlbumCmd::Remove {
            library,
            album,
            entries,
        } => Request::AlbumRemove {
            library,
            album,
            entries: entry_refs(entries)?,
        },
        AlbumCmd::List { library } => Request::AlbumList { library },
    })
}

/// `location ...` as a request (paths made absolute).
fn location_request(c: LocationCmd) -> CliResult<Request> {
    Ok(match c {
        LocationCmd::Add { library, path } => Request::LocationAdd {
            library,
            path: absolute(&path)?,
        },
        LocationCmd::List { library } => Request::LocationList { library },
        LocationCmd::Rescan { library, location } => Request::LocationRescan { library, location },
        LocationCmd::Pull { library, location } => Request::LocationPull { library, location },
        LocationCmd::Remove { library, location } => Request::LocationRemove { library, location },
    })
}

/// `--data-dir`, else `$CONCORD_DATA_DIR`, else the platform data directory.
fn data_dir(flag: Option<PathBuf>) -> CliResult<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = flag
        .filter(|d| !d.as_os_str().is_empty())
        .or_else(|| env("CONCORD_DATA_DIR"))
        .or_else(|| {
            if cfg!(target_os = "macos") {
                env("HOME").map(|h| h.join("Library/Application Support/concord"))
            } else {
                env("XDG_DATA_HOME")
                    .filter(|d| d.is_absolute())
                    .map(|d| d.join("concord"))
                    .or_else(|| env("HOME").map(|h| h.join(".local/share/concord")))
            }
        })
        .ok_or_else(|| {
            CliError::new("no data directory: pass --data-dir DIR or set CONCORD_DATA_DIR")
        })?;
    std::path::absolute(&dir)
        .map_err(|e| CliError::new(format!("cannot resolve {}: {e}", dir.display())))
}

/// Run the command; `(command name, --json value)` on success.
fn run(cli: Cli) -> CliResult<(&'static str, serde_json::Value)> {
    if let Command::Relay {
        listen,
        cert,
        key,
        insecure_http,
    } = cli.command
    {
        let opts = relay::RelayOptions {
            listen,
            cert,
            key,
            insecure_http,
        };
        relay::run(opts, cli.json)?;
        return Ok(("start", serde_json::Value::Null));
    }
    let dir = data_dir(cli.data_dir)?;
    match cli.command {
        Command::Start {
            name,
            listen,
            heartbeat_ms,
            leader_timeout_ms,
            presence_ms,
            retention_ms,
            no_mdns,
            relay,
        } => {
            let opts = daemon::StartOptions {
                name,
                listen,
                heartbeat_ms,
                leader_timeout_ms,
                presence_ms,
                retention_ms,
                no_mdns,
                relays: relay,
            };
            daemon::start(dir, opts, cli.json)?;
            Ok(("start", serde_json::Value::Null))
        }
        Command::Demo { devices } => Ok(("demo", demo::run(devices, cli.json)?)),
        command => run_request(dir, request(command)?),
    }
}

fn run_request(dir: PathBuf, req: Request) -> CliResult<(&'static str, serde_json::Value)> {
    let name = req.name();
    if let Some(answer) = daemon::forward(&dir, &req) {
        return answer.map(|v| (name, v));
    }
    if req.needs_node() {
        return Err(CliError::new(format!(
            "no node is running for {}; start one with `concord start` (`{name}` needs the network)",
            dir.display()
        )));
    }
    let mut ctx = Context::new(DataDir::open(&dir)?);
    if std::io::stderr().is_terminal() {
        ctx = ctx.with_progress(Box::<progress::TerminalProgress>::default());
    }
    let value = ops::execute(&ctx, req)?;
    Ok((name, value))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, quiet unless RUST_LOG asks (stdout is the command's output).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .try_init();
    let json = cli.json;
    match run(cli) {
        Ok(("start", _)) | Ok(("demo", serde_json::Value::Null)) => ExitCode::SUCCESS,
        Ok((name, value)) => {
            let skipped = value.get("skipped").and_then(|s| s.as_u64()).unwrap_or(0);
            if skipped > 0 {
                eprintln!(
                    "warning: skipped {skipped} entries that could not be read or whose names are not UTF-8"
                );
            }
            if let (false, "pair join", Some(warning)) =
                (json, name, value["clock_warning"].as_str())
            {
                eprintln!("warning: {}", render::escape(warning));
            }
            let out = render::output(name, &value, json);
            if !out.is_empty() {
                let mut stdout = std::io::stdout().lock();
                // A closed pipe (`| head`) is not an error worth reporting.
                let _ = writeln!(stdout, "{out}").and_then(|_| stdout.flush());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", render::escape(&e.line()));
            ExitCode::from(1)
        }
    }
}
