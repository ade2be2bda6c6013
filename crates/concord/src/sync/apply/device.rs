//! The membership rules: who may write a `Device` row, and the removal
//! cutoff that shuts a removed device out (ARCHITECTURE.md, "Membership").
//!
//! The rules are pure functions of the entries (and of the origin each entry
//! carries, which the entry signatures make authentic), so every member
//! computes the same rows whatever the order they arrive in:
//!
//! - **A device's own fields** (`name`, `node_id`, `addrs`): last-writer-wins
//!   on `(written by the device itself, clock)`. The device's own write beats
//!   any other member's, however new, so no member can rename a device, move
//!   its addresses, or rebind it to another key once the device registered
//!   itself; a member's write only fills a row the device has not written
//!   (the registration of a device that is joining).
//! - **Adding** a row for another device is an authorised membership change
//!   when its origin is a member: any member may register a device it paired
//!   with through the setup protocol (`library share`, `library join`).
//! - **Removing** (`removed`): any member may remove another, never itself;
//!   a removal is never undone (a `NULL` is ignored), and concurrent removals
//!   keep the highest cutoff, remembering the earliest remover. Deleting a
//!   `Device` row is refused: removal is the only way out.
//! - **The cutoff**: entries of a removed device past its cutoff are refused
//!   before they are logged ([`Cutoffs::refusal`]), so they are neither
//!   applied nor relayed, and a member that learns of a higher cutoff later
//!   can still fetch them.

use std::collections::HashMap;

use rusqlite::{params_from_iter, Connection};
use uuid::Uuid;

use super::{find, Applier, Outcome, StoredRow};
use crate::error::Result;
use crate::model::{Device, ModelInfo, Syncable, Value};
use crate::sync::entry::{FieldWrite, LogEntry, Op};

/// The removal of one device as this member knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// The last `origin_seq` of the removed device that members accept.
    pub through: u64,
    /// The member whose removal came first (by clock).
    pub remover: Uuid,
}

/// Every removed device of a library and its cutoff, read once per batch of
/// remote entries.
#[derive(Debug, Clone, Default)]
pub struct Cutoffs(HashMap<Uuid, Cutoff>);

impl Cutoffs {
    /// The removals recorded in `library.db`.
    pub fn load(c: &Connection) -> Result<Cutoffs> {
        let mut stmt = c.prepare_cached(
            "SELECT uuid, removed, COALESCE(removed__dev, _dev) FROM devices WHERE removed IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            let through: i64 = r.get(1)?;
            Ok((
                r.get::<_, Uuid>(0)?,
                Cutoff {
                    through: through.max(0) as u64,
                    remover: r.get(2)?,
                },
            ))
        })?;
        Ok(Cutoffs(rows.collect::<rusqlite::Result<_>>()?))
    }

    /// The removal of `device`, if it was removed.
    pub fn get(&self, device: Uuid) -> Option<Cutoff> {
        self.0.get(&device).copied()
    }

    /// Every removed device.
    pub fn iter(&self) -> impl Iterator<Item = (Uuid, Cutoff)> + '_ {
        self.0.iter().map(|(d, c)| (*d, *c))
    }

    /// Why `e` must not be logged, if it must not: it comes from a removed
    /// device and lies past its cutoff, or in a replica of it this member
    /// never held (`replica_held` false: a later incarnation, opened after the
    /// removal). The cutoff is per device and bounds positions in each of its
    /// replicas this member holds (ARCHITECTURE.md, "Identity and
    /// membership"). One exception keeps a concurrent mutual removal
    /// convergent: the removed device's removal of the very member that
    /// removed it passes, so both end removed on every member, whichever
    /// removal it heard first.
    pub fn refusal(&self, e: &LogEntry, replica_held: bool) -> Option<String> {
        let cut = self.get(e.origin)?;
        if replica_held && e.origin_seq <= cut.through {
            return None;
        }
        if e.model == Device::INFO.name && e.record == cut.remover && removal_in(e).is_some() {
            return None;
        }
        if !replica_held {
            return Some(format!(
                "device {} was removed from this library; entries of a replica of it this \
                 member never held (a later incarnation) are refused",
                e.origin
            ));
        }
        Some(format!(
            "device {} was removed from this library; its entries after #{} are refused",
            e.origin, cut.through
        ))
    }
}

/// The position of the `removed` field in `Device` entries.
fn removed_index() -> usize {
    Device::INFO
        .field_index("removed")
        .expect("Device has a removed field")
}

/// The cutoff a `Device` entry sets, when it is a removal.
fn removal_in(e: &LogEntry) -> Option<i64> {
    match find(e.op.writes(), removed_index()) {
        Some(Value::Int(v)) if *v >= 0 => Some(*v),
        _ => None,
    }
}

impl Applier<'_, '_> {
    /// Apply a `Device` entry by the membership rules (module doc).
    pub(super) fn apply_device(
        &self,
        e: &LogEntry,
        m: &'static ModelInfo,
        row: Option<StoredRow>,
    ) -> Result<Outcome> {
        let writes = match &e.op {
            Op::Insert(w) | Op::Update(w) => w,
            Op::Delete(_) => {
                return self.refuse(
                    e,
                    m,
                    "*",
                    format!(
                        "device {} cannot be deleted; members are removed with `device remove`",
                        e.record
                    ),
                )
            }
            Op::Bulk(_) => return Ok(Outcome::Unchanged),
        };
        let by_self = e.origin == e.record;
        let ri = removed_index();
        // A device never removes (or restores) itself; a removal is a cutoff.
        let kept: Vec<FieldWrite> = writes
            .iter()
            .filter(|w| w.field as usize != ri || (!by_self && removal_in(e).is_some()))
            .cloned()
            .collect();
        let Some(row) = row else {
            if kept.is_empty() {
                return Ok(Outcome::Unchanged);
            }
            self.insert_row(m, e.record, &kept, e.stamp(), matches!(e.op, Op::Insert(_)))?;
            return Ok(Outcome::Applied);
        };
        let stamp = e.stamp();
        let mut sets: Vec<String> = Vec::new();
        let mut vals: Vec<Value> = Vec::new();
        for w in &kept {
            let i = w.field as usize;
            let name = m.fields[i].name;
            let cur = row.clock(i);
            let (value, clock) = if i == ri {
                match (&row.values[i], &w.value) {
                    (Value::Int(c), Value::Int(v)) => (Value::Int((*c).max(*v)), cur.min(stamp)),
                    _ => (w.value.clone(), stamp),
                }
            } else if (by_self, stamp, &w.value) > (cur.device == e.record, cur, &row.values[i]) {
                (w.value.clone(), stamp)
            } else {
                continue;
            };
            if value == row.values[i] && clock == cur {
                continue;
            }
            sets.push(format!("{name} = ?, {name}__hlc = ?, {name}__dev = ?"));
            vals.push(value);
            vals.push(Value::Int(clock.time as i64));
            vals.push(Value::Uuid(clock.device));
        }
        if sets.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        vals.push(Value::Uuid(e.record));
        let sql = format!("UPDATE {} SET {} WHERE uuid = ?", m.table, sets.join(", "));
        self.tx
            .prepare_cached(&sql)?
            .execute(params_from_iter(vals.iter()))?;
        Ok(Outcome::Applied)
    }
}
