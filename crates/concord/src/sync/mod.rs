//! The write path and the log: [`txn`] (TransactionManager), [`log`] (sync log),
//! [`apply`] (merge rules), [`entry`] (the log entry and its encoding),
//! [`version_vector`] (what a log holds), [`gaps`] (what it holds past a
//! gap), [`term`] (the sequencing fence),
//! [`seal`] (signed chunks: every entry verifiable back to its origin).

pub mod apply;
pub mod entry;
pub mod gaps;
pub mod log;
pub mod seal;
pub(crate) mod segment;
pub mod term;
pub mod txn;
pub mod version_vector;

/// Model name used by bulk-operation entries.
pub const BULK_MODEL: &str = "bulk_operation";
