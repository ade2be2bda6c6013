//! Running a [`Request`]: one function per command, grouped by area. Every
//! command returns its `--json` value; plain output is rendered from that value
//! (see `render.rs`), so a node can run the command and the client render it.
//!
//! A command checks and resolves all of its arguments before it writes, and
//! writes in one TransactionManager call where it can, so a failed command
//! changes nothing.

mod albums;
pub mod conduits;
mod library;
mod locations;
mod tags;

use serde_json::Value;

use crate::context::{CliResult, Context};
use crate::request::Request;

/// Run one command.
pub fn execute(ctx: &Context, req: Request) -> CliResult<Value> {
    match req {
        Request::Device => library::device(ctx),
        Request::LibraryCreate { name, private } => library::create(ctx, &name, private),
        Request::LibraryList => library::list(ctx),
        Request::LibraryDigest { library, shared } => library::digest(ctx, &library, shared),
        Request::LibraryExport { library } => library::export(ctx, &library),

        Request::TagCreate {
            library,
            name,
            color,
        } => tags::create(ctx, &library, &name, color.as_deref()),
        Request::TagRename { library, tag, name } => tags::rename(ctx, &library, &tag, &name),
        Request::TagRecolor {
            library,
            tag,
            color,
        } => tags::recolor(ctx, &library, &tag, &color),
        Request::TagDelete { library, tag } => tags::delete(ctx, &library, &tag),
        Request::TagList { library } => tags::list(ctx, &library),
        Request::TagApply {
            library,
            tag,
            entries,
        } => tags::apply(ctx, &library, &tag, &entries, true),
        Request::TagRemove {
            library,
            tag,
            entries,
        } => tags::apply(ctx, &library, &tag, &entries, false),

        Request::AlbumCreate { library, name } => albums::create(ctx, &library, &name),
        Request::AlbumRename {
            library,
            album,
            name,
        } => albums::rename(ctx, &library, &album, &name),
        Request::AlbumDelete { library, album } => albums::delete(ctx, &library, &album),
        Request::AlbumAdd {
            library,
            album,
            entries,
        } => albums::add(ctx, &library, &album, &entries, true),
        Request::AlbumRemove {
            library,
            album,
            entries,
        } => albums::add(ctx, &library, &album, &entries, false),
        Request::AlbumList { library } => albums::list(ctx, &library),

        Request::LocationAdd { library, path } => locations::add(ctx, &library, &path),
        Request::LocationList { library } => locations::list(ctx, &library),
        Request::LocationRescan { library, location } => {
            locations::rescan(ctx, &library, &location)
        }
        Request::LocationRemove { library, location } => {
            locations::remove(ctx, &library, &location)
        }
        Request::EntryList {
            library,
            location,
            device,
        } => locations::entries(ctx, &library, location.as_deref(), device.as_deref()),
        Request::SyncConflicts { library } => library::conflicts(ctx, &library),
        req @ (Request::ConduitCreate { .. }
        | Request::ConduitList { .. }
        | Request::ConduitStatus { .. }
        | Request::ConduitPause { .. }
        | Request::ConduitResume { .. }
        | Request::ConduitRemove { .. }) => conduits::execute(ctx, req),
        Request::DeviceList => library::device_list_offline(ctx),
        other => Err(crate::context::CliError::new(format!(
            "`{}` needs a running node for this data dir; start one with `concord start`",
            other.name()
        ))),
    }
}
