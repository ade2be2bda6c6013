//! The TransactionManager: the only code path that writes syncable data.
//!
//! ## Atomicity across two files (invariant I1)
//!
//! SQLite cannot commit one transaction atomically across two WAL databases, so
//! nothing here relies on it:
//!
//! - **Local transactions**, batches included, are applied to `library.db`
//!   together with their log entries, written to the outbox of the same
//!   database (`outbox_segments`: one row holding every entry of the
//!   transaction, encoded as a log segment), in one transaction. A crash or a
//!   power cut at any point leaves the change and its entries both committed
//!   or both absent. The outbox is moved into `sync.db` (skipping entries the
//!   log already holds) in bulk: once it holds `outbox::MOVE_AT_ENTRIES`
//!   entries or `outbox::MOVE_AT_BYTES`, whenever the log is read, on close
//!   and on open. **Decision** (issue 12): batches no longer log first.
//!   `sync.db` commits with `synchronous=FULL`, so logging a batch first cost
//!   one fsync per batch (B1 batches at 0.41–0.45 of plain SQLite); through
//!   the outbox one fsync covers every batch of a move, for writing the
//!   entries twice (outbox, then log).
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
