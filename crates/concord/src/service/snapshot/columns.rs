//! How a snapshot row is read: its UUID, every field and every field's clock
//! (the row clock where a field has none of its own).

use uuid::Uuid;

use crate::error::Result;
use crate::model::{ModelInfo, ModelKind, Value};
use crate::service::protocol::SnapshotRow;

/// Whether field `i` of `model` carries a clock of its own (record fields
/// other than keys and the owner); the others share the row clock.
pub(super) fn clocked(model: &ModelInfo, i: usize) -> bool {
    let f = &model.fields[i];
    model.kind == ModelKind::Record && !f.key && !f.owner
}

/// The SQL for each field's clock (time, device), the row clock standing in
/// where a field has none of its own.
pub(super) fn clock_cols(model: &ModelInfo) -> Vec<String> {
    (0..model.fields.len())
        .map(|i| {
            if clocked(model, i) {
                let n = model.fields[i].name;
                format!("COALESCE({n}__hlc, _hlc), COALESCE({n}__dev, _dev)")
            } else {
                "_hlc, _dev".into()
            }
        })
        .collect()
}

/// The columns that read a row of `model` as a [`SnapshotRow`] (with
/// [`read_row`]): its UUID, every field, then every field's clock.
pub(crate) fn row_columns(model: &ModelInfo) -> Vec<String> {
    let mut cols: Vec<String> = vec!["uuid".into()];
    cols.extend(model.fields.iter().map(|f| f.name.to_string()));
    cols.extend(clock_cols(model));
    cols
}

/// A row selected with [`row_columns`] first, as a snapshot row.
pub(crate) fn read_row(
    model: &ModelInfo,
    row: &rusqlite::Row<'_>,
    present: bool,
) -> Result<SnapshotRow> {
    let n = model.fields.len();
    let uuid: Uuid = row.get(0)?;
    let mut values = Vec::with_capacity(n);
    for (i, f) in model.fields.iter().enumerate() {
        values.push(Value::from_sql(f.kind, row.get_ref(1 + i)?)?);
    }
    let mut clocks = Vec::with_capacity(n);
    for i in 0..n {
        clocks.push((
            row.get::<_, i64>(1 + n + 2 * i)? as u64,
            row.get::<_, Uuid>(2 + n + 2 * i)?,
        ));
    }
    Ok(SnapshotRow {
        model: model.name.to_string(),
        uuid,
        values,
        clocks,
        present,
    })
}
