//! The write path and the log: [`txn`] (TransactionManager), [`log`] (sync log),
//! [`apply`] (merge rules), [`entry`] (the log entry and its encoding).

pub mod apply;
pub mod entry;
pub mod log;
pub(crate) mod segment;
pub mod txn;

/// Model name used by bulk-operation entries.
pub const BULK_MODEL: &str = "bulk_operation";
