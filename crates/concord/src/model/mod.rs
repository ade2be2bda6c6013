//! The library's models and the `Syncable` contract they share.
//!
//! A model is described once, by `#[derive(Syncable)]`, as a static [`ModelInfo`]:
//! its name, table, ownership and fields. The store builds its tables from that
//! description and the merge code works on it generically, so the conflict rules
//! live in one place (`sync/apply.rs`) rather than once per model.

mod types;

pub use types::*;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One synced field value as it travels in log entries and sits in SQLite.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Uuid(Uuid),
}

impl Value {
    /// The UUID this value holds, for reading owner and key fields.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Value::Uuid(u) => Some(*u),
            _ => None,
        }
    }
}

// Conversions for building changes: `Change::set("name", "x")`.
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Int(b as i64)
    }
}
impl From<Uuid> for Value {
    fn from(u: Uuid) -> Self {
        Value::Uuid(u)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Uuid(u) => ToSqlOutput::Borrowed(ValueRef::Blob(u.as_bytes())),
        })
    }
}

impl Value {
    /// Read a column back as the value kind the field declares.
    pub fn from_sql(
        kind: FieldKind,
        v: rusqlite::types::ValueRef<'_>,
    ) -> Result<Value, ModelError> {
        use rusqlite::types::ValueRef;
        Ok(match (kind, v) {
            (_, ValueRef::Null) => Value::Null,
            (FieldKind::Int | FieldKind::Bool, ValueRef::Integer(i)) => Value::Int(i),
            (FieldKind::Text, ValueRef::Text(t)) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|_| ModelError::Corrupt("text column is not UTF-8".into()))?
                    .to_owned(),
            ),
            (FieldKind::Uuid, ValueRef::Blob(b)) => Value::Uuid(
                Uuid::from_slice(b)
                    .map_err(|_| ModelError::Corrupt("uuid column is not 16 bytes".into()))?,
            ),
            (kind, other) => {
                return Err(ModelError::Corrupt(format!(
                    "column of kind {kind:?} holds {:?}",
                    other.data_type()
                )))
            }
        })
    }
}

/// The storage kind of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Int,
    Bool,
    Text,
    Uuid,
}

impl FieldKind {
    pub fn sql_type(self) -> &'static str {
        match self {
            FieldKind::Int | FieldKind::Bool => "INTEGER",
            FieldKind::Text => "TEXT",
            FieldKind::Uuid => "BLOB",
        }
    }
}

/// Who may write a model's records (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Written only by the device named in the record's owner field.
    DeviceOwned,
    /// Written by any member device; field-level last-writer-wins.
    Shared,
}

/// How a model's records live and die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A record with an identity of its own; deleting it leaves a final tombstone.
    Record,
    /// A set membership keyed by its key fields: added and removed by
    /// last-writer-wins on presence, an exact tie keeps the member.
    Membership,
}

/// One synced or device-local field of a model.
#[derive(Debug, Clone, Copy)]
pub struct FieldDef {
    pub name: &'static str,
    pub kind: FieldKind,
    pub nullable: bool,
    /// The model whose record this field names by UUID, if any.
    pub references: Option<&'static str>,
    /// Key fields are immutable, travel in every log entry for the record, and bind
    /// the record's life to the record they reference (a delete there cascades here).
    pub key: bool,
    /// The device that owns the record (device-owned models only).
    pub owner: bool,
    /// Fields the derive marked `#[sync(skip)]`: device-local, never synced.
    pub local: bool,
}

/// Static description of a model, produced by `#[derive(Syncable)]`.
#[derive(Debug)]
pub struct ModelInfo {
    pub name: &'static str,
    pub table: &'static str,
    pub ownership: Ownership,
    pub kind: ModelKind,
    /// Synced fields, in declaration order; the index is the field's wire id.
    pub fields: &'static [FieldDef],
    /// Device-local fields (`#[sync(skip)]`).
    pub local_fields: &'static [FieldDef],
    /// Models this one references; they come first in dependency order.
    pub depends_on: &'static [&'static str],
}

impl ModelInfo {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
    pub fn owner_index(&self) -> Option<usize> {
        self.fields.iter().position(|f| f.owner)
    }
    pub fn key_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.key || f.owner)
            .map(|(i, _)| i)
    }
}

/// A library model that can be written through the TransactionManager.
pub trait Syncable: Sized {
    const INFO: &'static ModelInfo;
    /// The record's UUID.
    fn id(&self) -> Uuid;
    /// Synced field values in `INFO.fields` order.
    fn to_values(&self) -> Vec<Value>;
    /// Device-local field values in `INFO.local_fields` order.
    fn to_local_values(&self) -> Vec<Value>;
    /// Rebuild from the UUID, synced values and local values (missing local values
    /// take their defaults).
    fn from_values(id: Uuid, values: &[Value], local: &[Value]) -> Result<Self, ModelError>;
}

/// Conversion of a Rust field type to and from [`Value`]; the derive relies on it so
/// that it never has to understand types itself.
pub trait FieldValue: Sized {
    const KIND: FieldKind;
    const NULLABLE: bool;
    fn to_value(&self) -> Value;
    fn from_value(v: &Value) -> Result<Self, ModelError>;
}

macro_rules! field_value {
    ($t:ty, $kind:expr, $variant:ident, $conv_to:expr, $conv_from:expr) => {
        impl FieldValue for $t {
            const KIND: FieldKind = $kind;
            const NULLABLE: bool = false;
            fn to_value(&self) -> Value {
                #[allow(clippy::redundant_closure_call)]
                Value::$variant(($conv_to)(self))
            }
            fn from_value(v: &Value) -> Result<Self, ModelError> {
                match v {
                    #[allow(clippy::redundant_closure_call)]
                    Value::$variant(x) => Ok(($conv_from)(x)),
                    other => Err(ModelError::WrongType {
                        expected: stringify!($t),
                        found: format!("{other:?}"),
                    }),
                }
            }
        }
    };
}

field_value!(i64, FieldKind::Int, Int, |x: &i64| *x, |x: &i64| *x);
field_value!(
    bool,
    FieldKind::Bool,
    Int,
    |x: &bool| *x as i64,
    |x: &i64| *x != 0
);
field_value!(
    String,
    FieldKind::Text,
    Text,
    |x: &String| x.clone(),
    |x: &String| x.clone()
);
field_value!(Uuid, FieldKind::Uuid, Uuid, |x: &Uuid| *x, |x: &Uuid| *x);

impl<T: FieldValue> FieldValue for Option<T> {
    const KIND: FieldKind = T::KIND;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
    fn from_value(v: &Value) -> Result<Self, ModelError> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// Errors converting between models and stored values.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("field has the wrong type: expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    #[error("model {model} has {found} values, expected {expected}")]
    Arity {
        model: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// Every library model, in dependency order (a model comes after those it references).
pub fn registry() -> &'static [&'static ModelInfo] {
    static MODELS: [&ModelInfo; 9] = [
        Device::INFO,
        Tag::INFO,
        Album::INFO,
        Volume::INFO,
        Location::INFO,
        FileEntry::INFO,
        TagAssignment::INFO,
        AlbumItem::INFO,
        UserMetadata::INFO,
    ];
    &MODELS
}

/// Look a model up by its wire name.
pub fn model_by_name(name: &str) -> Option<&'static ModelInfo> {
    registry().iter().copied().find(|m| m.name == name)
}

/// Deterministic record UUID for memberships and per-record singletons, so that
/// concurrent creation on two devices names the same record.
pub fn derived_uuid(model: &str, parts: &[Uuid]) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"concord-derived-uuid\0");
    h.update(model.as_bytes());
    for p in parts {
        h.update(p.as_bytes());
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_in_dependency_order() {
        let models = registry();
        for (i, m) in models.iter().enumerate() {
            for dep in m.depends_on {
                let pos = models.iter().position(|x| x.name == *dep);
                assert!(
                    matches!(pos, Some(p) if p < i),
                    "{} depends on {dep}, which must come first",
                    m.name
                );
            }
        }
    }

    #[test]
    fn derived_uuid_is_stable_and_distinct() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(derived_uuid("x", &[a, b]), derived_uuid("x", &[a, b]));
        assert_ne!(derived_uuid("x", &[a, b]), derived_uuid("x", &[b, a]));
        assert_ne!(derived_uuid("x", &[a]), derived_uuid("y", &[a]));
    }
}
