//! Remote browsing (DESIGN §7): another device's file entries, pulled on demand
//! from their owner as a cursor-paginated state stream, cached locally as that
//! owner's rows, and refreshed incrementally.
//!
//! Rows written by `commit_bulk` never travel through the log, so a device sees
//! them only by pulling. A pull asks for the rows of one location whose clock
//! (row clock or any field clock) is above the position of the previous pull;
//! the first pull starts at 0 and takes everything. Each page is at most
//! [`MAX_SNAPSHOT_ROWS`] rows; the owner fixes the new position at the first
//! page, so a row changed while paging is sent again next time rather than lost.
//! Deletes need no pull: they always travel through the log.

use std::time::Instant;

use rusqlite::OptionalExtension;
use serde::Serialize;
use uuid::Uuid;

use super::protocol::{Msg, PullCursor, SnapshotRow, MAX_SNAPSHOT_ROWS};
use super::report::PullProgress;
use super::snapshot;
use super::state::SyncService;
use crate::error::{Error, Result};
use crate::model::{FileEntry, ModelInfo, Syncable, Value};
use crate::sync::txn::Library;

/// What a pull transferred.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullReport {
    /// The location pulled.
    pub location: Uuid,
    /// Rows taken.
    pub rows: u64,
    /// Pages (requests) it took.
    pub pages: u64,
}

/// The SQL for a row's newest clock: its own or any of its field clocks.
fn changed_expr(model: &ModelInfo) -> String {
    let mut parts = vec!["_hlc".to_string()];
    for f in model.fields.iter().filter(|f| !f.key && !f.owner) {
        parts.push(format!("COALESCE({}__hlc, 0)", f.name));
    }
    format!("MAX({})", parts.join(", "))
}

/// Owner side: one page of `location`'s entries changed after `cursor.since`.
pub fn page(lib: &Library, location: Uuid, cursor: &PullCursor) -> Result<Msg> {
    let model = FileEntry::INFO;
    let changed = changed_expr(model);
    let position = cursor.position.unwrap_or_else(|| lib.hlc().last());
    lib.read(|c| {
        let total = if cursor.position.is_none() {
            c.prepare_cached(&format!(
                "SELECT COUNT(*) FROM {} WHERE location = ?1 AND {changed} > ?2",
                model.table
            ))?
            .query_row(rusqlite::params![location, cursor.since as i64], |r| r.get::<_, i64>(0))?
                as u64
        } else {
            0
        };
        let cols = snapshot::row_columns(model);
        let sql = format!(
            // `+location`: walk the uuid index from `after` (one pass over the
            // table across all pages) instead of re-sorting the location's rows
            // for every page, which made a 1M-row pull quadratic.
            "SELECT {} FROM {} WHERE +location = ?1 AND uuid > ?2 AND {changed} > ?3 ORDER BY uuid LIMIT {}",
            cols.join(", "),
            model.table,
            MAX_SNAPSHOT_ROWS
        );
        let mut stmt = c.prepare_cached(&sql)?;
        let mut q = stmt.query(rusqlite::params![
            location,
            cursor.after.unwrap_or_default(),
            cursor.since as i64
        ])?;
        let mut rows = Vec::new();
        while let Some(r) = q.next()? {
            rows.push(snapshot::read_row(model, r, true)?);
        }
        let next = (rows.len() == MAX_SNAPSHOT_ROWS).then(|| PullCursor {
            since: cursor.since,
            after: rows.last().map(|r| r.uuid),
            position: Some(position),
        });
        Ok(Msg::PullPage {
            rows,
            next,
            total,
            position,
        })
    })
}

/// Rows a peer sent for `location` of `owner`: file entries of that location,
/// owned by that device, and nothing else.
fn check_page(rows: &[SnapshotRow], location: Uuid, owner: Uuid) -> Result<()> {
    let model = FileEntry::INFO;
    let loc = model.field_index("location").unwrap_or(usize::MAX);
    let own = model.owner_index().unwrap_or(usize::MAX);
    for r in rows {
        let ok = r.model == model.name
            && r.values.get(loc) == Some(&Value::Uuid(location))
            && r.values.get(own) == Some(&Value::Uuid(owner));
        if !ok {
            return Err(Error::Malformed(format!(
                "pulled row {} is not a file entry of location {location} owned by {owner}",
                r.uuid
            )));
        }
    }
    Ok(())
}

/// The owner of `location` (`None`: no such location) and the position the
/// last pull of it reached (0: never pulled).
fn pull_start(lib: &Library, location: Uuid) -> Result<(Option<Uuid>, u64)> {
    lib.read(|c| {
        let owner: Option<Uuid> = c
            .query_row(
                "SELECT device FROM locations WHERE uuid = ?1",
                [location],
                |r| r.get(0),
            )
            .optional()?;
        let since: Option<i64> = c
            .query_row(
                "SELECT position FROM pulls WHERE location = ?1",
                [location],
                |r| r.get(0),
            )
            .optional()?;
        Ok((owner, since.unwrap_or(0) as u64))
    })
}

/// Remember where a finished pull of `location` ended, so the next one asks
/// only for what changed since.
fn record_pull(
    lib: &Library,
    location: Uuid,
    owner: Uuid,
    position: u64,
    rows: u64,
    now_ms: u64,
) -> Result<()> {
    lib.with_lib_tx(|tx| {
        tx.execute(
            "INSERT INTO pulls (location, owner, position, rows, at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(location) DO UPDATE SET position = excluded.position,
               rows = pulls.rows + excluded.rows, at = excluded.at",
            rusqlite::params![location, owner, position as i64, rows as i64, now_ms as i64],
        )?;
        Ok(())
    })
}

impl SyncService {
    /// Pull (or refresh) another device's location from its owner.
    pub async fn pull_location(&self, location: Uuid) -> Result<PullReport> {
        let me = self.shared.me;
        let (owner, since) = self
            .run_sqlite(move |lib| pull_start(lib, location))
            .await?;
        let owner = owner.ok_or_else(|| Error::NotFound {
            model: "location",
            id: location,
        })?;
        let mut report = PullReport {
            location,
            ..PullReport::default()
        };
        if owner == me {
            return Ok(report);
        }
        // A removed device's rows are not browsed: it gets nothing new from
        // us and its later changes go nowhere.
        if !self.is_member(owner).await {
            return Err(Error::Invalid(format!(
                "device {owner} is not a member of this library (it was removed); its locations cannot be pulled"
            )));
        }
        let position = self.pull_pages(owner, location, since, &mut report).await?;
        let (rows, now) = (report.rows, self.now_ms());
        self.run_sqlite(move |lib| record_pull(lib, location, owner, position, rows, now))
            .await?;
        tracing::info!(library = %self.shared.lib.id(), %location, rows = report.rows, "pulled");
        Ok(report)
    }

    /// Take every page of `location` changed since `since` from `owner`,
    /// counting into `report` and `sync status`. Returns the position the
    /// owner fixed for the next pull.
    async fn pull_pages(
        &self,
        owner: Uuid,
        location: Uuid,
        since: u64,
        report: &mut PullReport,
    ) -> Result<u64> {
        let started = Instant::now();
        let mut cursor = PullCursor {
            since,
            after: None,
            position: None,
        };
        let mut total = 0;
        loop {
            let reply = self
                .send(
                    owner,
                    Msg::PullEntries {
                        location,
                        cursor: cursor.clone(),
                    },
                )
                .await
                .map_err(|e| Error::Other(format!("pulling from {owner}: {e}")))?;
            let Msg::PullPage {
                rows,
                next,
                total: t,
                position,
            } = reply
            else {
                return Err(Error::Other(format!(
                    "pull refused by {owner}: {}",
                    reply.name()
                )));
            };
            check_page(&rows, location, owner)?;
            if report.pages == 0 {
                total = t;
            }
            report.pages += 1;
            report.rows += rows.len() as u64;
            self.run_sqlite(move |lib| snapshot::apply(lib, rows, Vec::new(), Vec::new()))
                .await?;
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            self.state().pulls.insert(
                location,
                PullProgress {
                    location,
                    done: report.rows,
                    total,
                    rate: report.rows as f64 / secs,
                    finished: next.is_none(),
                },
            );
            match next {
                Some(next) => cursor = next,
                None => return Ok(position),
            }
        }
    }
}
