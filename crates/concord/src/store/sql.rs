//! Builders for the SQL text that depends on a table's columns, so that the
//! statement shapes over the generated schema ([`super::schema`]) have one owner.

use crate::model::ModelInfo;

/// `?, ?, ..., ?` with `n` placeholders.
pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `INSERT INTO {table} ({columns}) VALUES (?, ...)`, one placeholder per column.
pub fn insert_sql<S: AsRef<str>>(table: &str, columns: &[S]) -> String {
    let names: Vec<&str> = columns.iter().map(AsRef::as_ref).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        placeholders(names.len())
    )
}

/// The INSERT of a whole new row of a record model written by this device:
/// `uuid`, every synced field, the first `local` device-local fields and the
/// row clock (`_hlc`, `_dev`), in that order.
pub fn new_row_insert_sql(m: &ModelInfo, local: usize) -> String {
    let mut cols: Vec<&str> = vec!["uuid"];
    cols.extend(m.fields.iter().map(|f| f.name));
    cols.extend(m.local_fields.iter().take(local).map(|f| f.name));
    cols.extend(["_hlc", "_dev"]);
    insert_sql(m.table, &cols)
}
