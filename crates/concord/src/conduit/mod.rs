//! Sync conduits (DESIGN §12): the part that needs no network. A conduit
//! keeps file content flowing between two folders under a policy; this
//! module holds its pure logic and a local executor, so the simulation and
//! property tests drive the same code the network engine will.
//!
//! One file per concept, each importing only those above it in this list:
//! `error`; `path` (what a conduit may touch: [`path::RelPath`],
//! [`path::SafeRoot`]); `settings` (the typed [`crate::model::Conduit`]
//! record); `ignore` (`.concordignore`); `conflict` (conflict copy names);
//! `tree` (an end's files, scanned and hashed); `agreed` (the last agreed
//! state); `plan` (actions) and `planner` (trees → plan); `trash`;
//! `content` (where bytes come from: [`content::ContentSource`]); `guard`;
//! `execute` (the local executor); `cycle` (one local cycle end to end);
//! `offload` (which files an Offload conduit moves, after `settings`) and
//! `offload_steps` (moving one without losing it, after `tree` and `content`).
//! Rules and decisions are in ARCHITECTURE.md, "Conduits".

pub mod agreed;
pub mod conflict;
pub mod content;
pub mod cycle;
pub mod error;
pub mod execute;
pub mod guard;
pub mod ignore;
pub mod offload;
pub mod offload_steps;
pub mod path;
pub mod plan;
pub mod planner;
pub mod settings;
pub mod trash;
pub mod tree;
