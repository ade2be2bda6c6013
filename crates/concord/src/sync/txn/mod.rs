//! The TransactionManager: the only code path that writes syncable data.
//!
//! ## Atomicity across two files (invariant I1)
//!
//! SQLite cannot commit one transaction atomically across two WAL databases, so
//! nothing here relies on it:
//!
//! - **Small local transactions** (and any that write device-local values) are
//!   applied to `library.db` together with their log entries, written to the
//!   outbox of the same database (`outbox_segments`: one row holding every entry
//!   of the transaction, encoded as a log segment), in one transaction. The
//!   outbox is moved into `sync.db` (skipping entries the log already holds) in
//!   bulk, whenever the log is read, and on open. A crash at any point leaves
//!   the change and its entries both committed or both absent.
//! - **Large local transactions** (`LOG_FIRST_AT` entries or more, nothing
//!   device-local) are logged first, as DESIGN §3 describes: the entries are
//!   committed to `sync.db`, then the change to `library.db` with the
//!   watermark past them. A crash in between leaves entries logged and not
//!   applied, which are applied on open like remote ones; the entries carry
//!   the whole change, so nothing of it is lost.
//! - **Remote entries** are appended to `sync.db` first, then applied to
//!   `library.db` in one transaction that also advances the `applied_log_id`
//!   watermark. On open, and at the next `apply_remote` after one failed, log
//!   entries past the watermark are applied again (applying is idempotent), and
//!   nothing moves the watermark past entries not applied yet.
//!
//! Every write holds one mutex, so the log position and the watermark move in step.
//!
//! ## Files
//!
//! [`change`] the change types, [`library`] the [`Library`] and its entry
//! points, [`options`] how it is opened and what a power cut may take
//! ([`Durability`]), [`context`] one transaction in progress ([`TxCtx`]), [`outbox`] the
//! outbox and the applied-log watermark. The conversion of outbox tables older
//! versions left is in [`crate::store::legacy`].

mod change;
mod context;
mod library;
mod options;
mod outbox;
mod remote;

pub use change::{ApplyReport, Change, ChangeOp, Receipt, ResourceChanged, Source};
pub use context::TxCtx;
pub use library::{Library, EVENT_CAPACITY};
pub use options::{Durability, LibraryOptions};
