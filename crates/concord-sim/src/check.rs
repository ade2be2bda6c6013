//! The invariants checked at the end of a run (and, for clocks, all along).
//!
//! - **Convergence (I2)**: every device has the same shared digest
//!   (`Scope::Shared`), the same file entries among those that travel through
//!   the log (rows written by `commit_bulk` stay on their owner by design,
//!   DESIGN §7, so they are left out) and the same file-entry tombstones, the
//!   same version vector and the same term.
//! - **No acknowledged write lost**: every entry whose commit returned `Ok` is
//!   covered by every device's version vector, and its effect is visible there:
//!   the record is tombstoned, or each field it wrote carries its stamp or a
//!   later one (memberships: presence decided at or after it; bulk: the bulk
//!   operation is recorded).
//! - **Deletes are final**: a record whose delete was acknowledged is absent and
//!   tombstoned everywhere.
//! - **Clocks** (checked after every step): each device's HLC never goes
//!   backwards while it runs, restarts above every clock stored in its
//!   databases (a stamp issued for a commit that then failed was never used,
//!   so it need not survive a restart), and never runs further ahead of the
//!   highest wall-clock time that device has seen than the drift bound — a
//!   stamp from a device whose clock is out of bounds is refused, not obeyed.

use std::collections::BTreeSet;

use concord::digest::{digest, Scope};
use concord::model::{model_by_name, ModelInfo, ModelKind};
use concord::rusqlite::OptionalExtension;
use concord::sync::entry::Op;
use concord::sync::log::VersionVector;
use concord::{Library, Result};
use uuid::Uuid;

/// An entry whose commit was acknowledged to its author.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The device that wrote it.
    pub origin: Uuid,
    /// Its position: `(replica, seq)`.
    pub replica: Uuid,
    pub incarnation: u64,
    pub seq: u64,
    pub hlc: u64,
    pub model: String,
    pub record: Uuid,
    pub op: Op,
}

/// What convergence compares, per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub shared: String,
    pub files: String,
    pub vv: VersionVector,
}

/// What convergence compares on one device; `bulk` are the file entries written
/// by `commit_bulk`, which stay on their owner and are left out.
pub fn view(lib: &Library, bulk: &BTreeSet<Uuid>) -> Result<View> {
    let shared = lib.read(|c| digest(c, Scope::Shared))?.0;
    let files = lib.read(|c| {
        let mut h = blake3::Hasher::new();
        let mut stmt = c.prepare_cached(
            "SELECT uuid, device, location, parent, name, path, kind, size, modified
             FROM file_entries ORDER BY uuid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id: Uuid = r.get(0)?;
            if bulk.contains(&id) {
                continue;
            }
            h.update(id.as_bytes());
            for i in 1..9 {
                h.update(format!("{:?}|", r.get_ref(i)?).as_bytes());
            }
        }
        h.update(b"tombstones");
        let mut stmt = c.prepare_cached(
            "SELECT uuid FROM tombstones WHERE model = 'file_entry' ORDER BY uuid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            h.update(r.get::<_, Uuid>(0)?.as_bytes());
        }
        Ok(h.finalize().to_hex()[..16].to_string())
    })?;
    let vv = lib.with_log(|l| l.version_vector())?;
    Ok(View { shared, files, vv })
}

/// Check that every acknowledged entry is held and took effect on `lib`.
pub fn acked_effects(lib: &Library, acked: &[Acked]) -> std::result::Result<(), String> {
    let vv = lib
        .with_log(|l| l.version_vector())
        .map_err(|e| e.to_string())?;
    for a in acked {
        // Held beyond a gap counts: a device that went back in time may have
        // lost, for good, entries of its replica that no one else took (a
        // clock too far ahead), and the ones after them can then never be
        // contiguous.
        let covered = vv.get(&a.replica).copied().unwrap_or(0) >= a.seq
            || lib
                .with_log(|l| l.contains(a.replica, a.seq))
                .map_err(|e| e.to_string())?;
        if !covered {
            return Err(format!(
                "acknowledged entry {}:{} ({} {} {}) is not held by the log",
                a.origin,
                a.seq,
                a.model,
                a.record,
                op_name(&a.op)
            ));
        }
        effect(lib, a).map_err(|e| {
            format!(
                "acknowledged entry {}:{} ({} {} {}): {e}",
                a.origin,
                a.seq,
                a.model,
                a.record,
                op_name(&a.op)
            )
        })?;
    }
    Ok(())
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Insert(_) => "insert",
        Op::Update(_) => "update",
        Op::Delete(_) => "delete",
        Op::Bulk(_) => "bulk",
    }
}

/// Whether a read-only query finds a row, as the run's failure message on error.
fn exists(
    lib: &Library,
    sql: &str,
    params: impl concord::rusqlite::Params,
) -> std::result::Result<bool, String> {
    lib.read(|c| {
        Ok(c.query_row(sql, params, |_| Ok(()))
            .optional()
            .map(|r| r.is_some())?)
    })
    .map_err(|e| e.to_string())
}

/// The effect of one acknowledged entry is visible on `lib`: a bulk operation
/// is recorded; a record is tombstoned (and gone), or present with each field
/// it wrote stamped at or after it; a membership decided at or after it.
fn effect(lib: &Library, a: &Acked) -> std::result::Result<(), String> {
    if let Op::Bulk(_) = a.op {
        let held = exists(
            lib,
            "SELECT 1 FROM bulk_operations WHERE origin = ?1 AND origin_seq = ?2 AND incarnation = ?3",
            concord::rusqlite::params![a.origin, a.seq as i64, a.incarnation as i64],
        )?;
        return if held {
            Ok(())
        } else {
            Err("bulk operation missing".into())
        };
    }
    let model = model_by_name(&a.model).ok_or("unknown model")?;
    let tombstoned = exists(lib, "SELECT 1 FROM tombstones WHERE uuid = ?1", [a.record])?;
    let row_exists = exists(
        lib,
        &format!("SELECT 1 FROM {} WHERE uuid = ?1", model.table),
        [a.record],
    )?;
    if tombstoned {
        return if row_exists {
            Err("tombstoned but its row is back".into())
        } else {
            Ok(())
        };
    }
    if model.kind == ModelKind::Record && matches!(a.op, Op::Delete(_)) {
        return Err("deleted (acknowledged) but not tombstoned".into());
    }
    if !row_exists {
        return Err("its record is missing".into());
    }
    match model.kind {
        ModelKind::Membership => membership_decided(lib, model, a),
        ModelKind::Record => fields_stamped(lib, model, a),
    }
}

/// A membership's presence was decided at or after this write.
fn membership_decided(
    lib: &Library,
    model: &ModelInfo,
    a: &Acked,
) -> std::result::Result<(), String> {
    let add = !matches!(a.op, Op::Delete(_));
    let (t, present, d): (i64, i64, Uuid) = lib
        .read(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT _hlc, present, _dev FROM {} WHERE uuid = ?1",
                    model.table
                ),
                [a.record],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .map_err(|e| e.to_string())?;
    if (t as u64, present != 0, d) < (a.hlc, add, a.origin) {
        return Err(format!(
            "membership decided at ({t}, {present}) older than this write"
        ));
    }
    Ok(())
}

/// Every field this write set carries its stamp or a later one.
fn fields_stamped(lib: &Library, model: &ModelInfo, a: &Acked) -> std::result::Result<(), String> {
    let stamp = (a.hlc, a.origin);
    for write in a.op.writes() {
        let field = &model.fields[write.field as usize];
        if field.key || field.owner {
            continue;
        }
        let (t, d): (i64, Uuid) = lib
            .read(|c| {
                Ok(c.query_row(
                    &format!(
                        "SELECT COALESCE({0}__hlc, _hlc), COALESCE({0}__dev, _dev) FROM {1} WHERE uuid = ?1",
                        field.name, model.table
                    ),
                    [a.record],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .map_err(|e| e.to_string())?;
        if ((t as u64), d) < stamp {
            return Err(format!(
                "field {} has clock {t} older than this write ({})",
                field.name, a.hlc
            ));
        }
    }
    Ok(())
}

/// The highest HLC time stored anywhere in `lib`'s databases: row and field
/// clocks, tombstones, bulk operations and the sync log.
pub fn max_stored_clock(lib: &Library) -> Result<u64> {
    let mut cols: Vec<String> = vec![
        "SELECT MAX(hlc) FROM tombstones".into(),
        "SELECT MAX(hlc) FROM bulk_operations".into(),
    ];
    for m in concord::model::registry() {
        cols.push(format!("SELECT MAX(_hlc) FROM {}", m.table));
        if m.kind == ModelKind::Record {
            for f in m.fields.iter().filter(|f| !f.key && !f.owner) {
                cols.push(format!("SELECT MAX({}__hlc) FROM {}", f.name, m.table));
            }
        }
    }
    let sql = format!(
        "SELECT MAX(v) FROM ({})",
        cols.iter()
            .map(|c| format!("SELECT ({c}) AS v"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    );
    let stored: Option<i64> = lib.read(|c| Ok(c.query_row(&sql, [], |r| r.get(0))?))?;
    let logged = lib.with_log(|l| l.max_hlc())?;
    Ok((stored.unwrap_or(0) as u64).max(logged))
}
