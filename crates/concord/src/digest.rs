//! The library digest and canonical export (CLI `library digest` / `export`).
//!
//! Both cover every synced row and field, present memberships and tombstones, in
//! canonical order (models in dependency order, rows by UUID), and nothing
//! device-local: no local ids, no device-local fields, no clocks. Two devices that
//! received the same entries print the same digest (invariant I2).

use rusqlite::Connection;
use serde_json::{json, Map, Value as Json};
use uuid::Uuid;

use crate::error::Result;
use crate::model::{registry, FileEntry, ModelInfo, ModelKind, Syncable, Value};

/// Which rows a digest covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    All,
    /// Everything but file-entry rows and their tombstones, which devices hold
    /// only once they pulled a location.
    Shared,
}

fn included(m: &ModelInfo, scope: Scope) -> bool {
    scope == Scope::All || m.name != FileEntry::INFO.name
}

fn select_sql(m: &ModelInfo) -> String {
    let cols: Vec<&str> = m.fields.iter().map(|f| f.name).collect();
    let filter = if m.kind == ModelKind::Membership {
        " WHERE present = 1"
    } else {
        ""
    };
    let sep = if cols.is_empty() { "" } else { ", " };
    format!(
        "SELECT uuid{sep}{} FROM {}{filter} ORDER BY uuid",
        cols.join(", "),
        m.table
    )
}

/// Visit every included row as `(model, uuid, values)` in canonical order, then
/// every included tombstone as `(model, uuid)`.
fn visit(
    conn: &Connection,
    scope: Scope,
    mut row: impl FnMut(&ModelInfo, Uuid, &[Value]),
    mut tomb: impl FnMut(&str, Uuid),
) -> Result<()> {
    for m in registry().iter().filter(|m| included(m, scope)) {
        let mut stmt = conn.prepare(&select_sql(m))?;
        let mut rows = stmt.query([])?;
        let mut values = Vec::with_capacity(m.fields.len());
        while let Some(r) = rows.next()? {
            let id: Uuid = r.get(0)?;
            values.clear();
            for (i, f) in m.fields.iter().enumerate() {
                values.push(Value::from_sql(f.kind, r.get_ref(i + 1)?)?);
            }
            row(m, id, &values);
        }
    }
    let mut stmt = conn.prepare("SELECT model, uuid FROM tombstones ORDER BY uuid")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let model: String = r.get(0)?;
        if scope == Scope::Shared && model == FileEntry::INFO.name {
            continue;
        }
        tomb(&model, r.get(1)?);
    }
    Ok(())
}

fn hash_value(h: &mut blake3::Hasher, v: &Value) {
    match v {
        Value::Null => {
            h.update(&[0]);
        }
        Value::Int(i) => {
            h.update(&[1]);
            h.update(&i.to_le_bytes());
        }
        Value::Text(s) => {
            h.update(&[2]);
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        Value::Uuid(u) => {
            h.update(&[3]);
            h.update(u.as_bytes());
        }
    }
}

/// The digest (hex) and the number of records (rows plus tombstones) it covers.
pub fn digest(conn: &Connection, scope: Scope) -> Result<(String, u64)> {
    let mut h = blake3::Hasher::new();
    h.update(b"concord-digest-v1\0");
    let mut rows = 0u64;
    let mut tomb_count = 0u64;
    let mut tombs = blake3::Hasher::new();
    visit(
        conn,
        scope,
        |m, id, values| {
            rows += 1;
            h.update(m.name.as_bytes());
            h.update(&[0]);
            h.update(id.as_bytes());
            for v in values {
                hash_value(&mut h, v);
            }
        },
        |model, id| {
            tomb_count += 1;
            tombs.update(model.as_bytes());
            tombs.update(&[0]);
            tombs.update(id.as_bytes());
        },
    )?;
    h.update(b"tombstones\0");
    h.update(tombs.finalize().as_bytes());
    Ok((h.finalize().to_hex().to_string(), rows + tomb_count))
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int(i) => json!(i),
        Value::Text(s) => json!(s),
        Value::Uuid(u) => json!(u.to_string()),
    }
}

/// The synced state as canonical JSON: `{"models": {model: [rows]}, "tombstones": [...]}`.
pub fn export(conn: &Connection, library: Uuid, scope: Scope) -> Result<Json> {
    let mut models: Map<String, Json> = Map::new();
    for m in registry().iter().filter(|m| included(m, scope)) {
        models.insert(m.name.to_string(), Json::Array(Vec::new()));
    }
    let mut tombstones = Vec::new();
    visit(
        conn,
        scope,
        |m, id, values| {
            let mut obj = Map::new();
            obj.insert("id".into(), json!(id.to_string()));
            for (f, v) in m.fields.iter().zip(values) {
                obj.insert(f.name.into(), to_json(v));
            }
            if let Some(Json::Array(a)) = models.get_mut(m.name) {
                a.push(Json::Object(obj));
            }
        },
        |model, id| tombstones.push(json!({"model": model, "id": id.to_string()})),
    )?;
    Ok(json!({
        "library": library.to_string(),
        "models": models,
        "tombstones": tombstones,
    }))
}
