//! Table layout of `library.db`, generated from the models' descriptions.
//!
//! Every synced table has: `id` (local integer key, never leaves the device),
//! `uuid` (the record's identity), one column per synced field, the device-local
//! fields, the row clock `_hlc`/`_dev` (the stamp that created the row), and per
//! field an override clock `<f>__hlc`/`<f>__dev` that stays NULL until the field is
//! written after creation. A bulk-inserted row therefore carries one clock, not one
//! per field. Clocks compare as `(hlc, dev)`; `dev` is the device UUID as a blob, so
//! SQLite's row-value comparison orders them exactly as [`crate::hlc::Hlc`] does.
//! Memberships add `present`, whose clock is the row clock.

use crate::model::{ModelInfo, ModelKind};

/// Schema version of `library.db`; bump and add a step to [`LIBRARY_MIGRATIONS`].
pub const LIBRARY_SCHEMA_VERSION: i64 = 5;

/// `CREATE TABLE` and indexes for one model.
pub fn model_ddl(m: &ModelInfo) -> String {
    let mut cols = vec![
        "id INTEGER PRIMARY KEY".to_string(),
        "uuid BLOB NOT NULL UNIQUE".to_string(),
    ];
    for f in m.fields.iter().chain(m.local_fields) {
        cols.push(format!("{} {}", f.name, f.kind.sql_type()));
    }
    if m.kind == ModelKind::Membership {
        cols.push("present INTEGER NOT NULL DEFAULT 1".into());
    }
    cols.push("_hlc INTEGER NOT NULL".into());
    cols.push("_dev BLOB NOT NULL".into());
    if m.kind == ModelKind::Record {
        for f in m.fields.iter().filter(|f| !f.key && !f.owner) {
            cols.push(format!("{}__hlc INTEGER", f.name));
            cols.push(format!("{}__dev BLOB", f.name));
        }
    }
    let mut sql = format!("CREATE TABLE {} (\n  {}\n);\n", m.table, cols.join(",\n  "));
    for f in m.fields.iter().filter(|f| f.references.is_some()) {
        sql.push_str(&format!(
            "CREATE INDEX {t}_by_{f} ON {t}({f});\n",
            t = m.table,
            f = f.name
        ));
    }
    sql
}

/// Tables that are not models: tombstones, the conflict log, the outbox of local
/// entries not yet moved to `sync.db`, bulk operations seen, and metadata.
pub const LIBRARY_BASE_DDL: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE tombstones (
  uuid BLOB PRIMARY KEY,
  model TEXT NOT NULL,
  hlc INTEGER NOT NULL,
  dev BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE conflicts (
  id INTEGER PRIMARY KEY,
  model TEXT NOT NULL,
  record BLOB NOT NULL,
  field TEXT NOT NULL,
  kept TEXT NOT NULL,
  discarded TEXT NOT NULL,
  kept_hlc INTEGER NOT NULL,
  discarded_hlc INTEGER NOT NULL,
  origin BLOB NOT NULL,
  origin_seq INTEGER NOT NULL,
  at INTEGER NOT NULL,
  UNIQUE (origin, origin_seq, field)
);
CREATE TABLE outbox (
  origin BLOB NOT NULL,
  origin_seq INTEGER NOT NULL,
  hlc INTEGER NOT NULL,
  model TEXT NOT NULL,
  record BLOB NOT NULL,
  kind INTEGER NOT NULL,
  payload BLOB NOT NULL,
  PRIMARY KEY (origin, origin_seq)
) WITHOUT ROWID;
CREATE TABLE bulk_operations (
  origin BLOB NOT NULL,
  origin_seq INTEGER NOT NULL,
  hlc INTEGER NOT NULL,
  payload BLOB NOT NULL,
  state TEXT NOT NULL DEFAULT 'seen',
  PRIMARY KEY (origin, origin_seq)
) WITHOUT ROWID;
";

/// Migration steps: index `i` takes the schema from version `i` to `i + 1`.
pub fn library_migrations() -> Vec<String> {
    let mut v1 = LIBRARY_BASE_DDL.to_string();
    for m in crate::model::registry() {
        v1.push_str(&model_ddl(m));
    }
    // v2: remote browsing (pull positions per location) and lookups by path.
    let v2 = "
CREATE TABLE pulls (
  location BLOB PRIMARY KEY,
  owner BLOB NOT NULL,
  position INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX file_entries_by_location_path ON file_entries(location, path);
"
    .to_string();
    // v3 (performance): the outbox keeps one row per transaction, its entries in
    // one blob, instead of one row per entry (B1 in PERFORMANCE.md). Rows left in
    // the old `outbox` table are still moved into the log.
    let v3 = "
CREATE TABLE outbox_batches (id INTEGER PRIMARY KEY, entries BLOB NOT NULL);
"
    .to_string();
    // v4 (performance): the outbox row of a transaction is a log segment
    // (`sync::segment`), moved into `sync.db` without decoding. Rows of the
    // older outbox tables are still moved.
    let v4 = "
CREATE TABLE outbox_segments (
  id INTEGER PRIMARY KEY,
  origin BLOB NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  max_hlc INTEGER NOT NULL,
  entries BLOB NOT NULL
);
"
    .to_string();
    // v5 (durability): an outbox row belongs to the incarnation that wrote it,
    // and so does a bulk operation: two incarnations of one device number
    // their entries from 1 each (`sync::entry::replica_id`).
    let v5 = "
ALTER TABLE outbox_segments ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
CREATE TABLE bulk_operations_v5 (
  origin BLOB NOT NULL,
  incarnation INTEGER NOT NULL DEFAULT 0,
  origin_seq INTEGER NOT NULL,
  hlc INTEGER NOT NULL,
  payload BLOB NOT NULL,
  state TEXT NOT NULL DEFAULT 'seen',
  PRIMARY KEY (origin, incarnation, origin_seq)
) WITHOUT ROWID;
INSERT INTO bulk_operations_v5 (origin, origin_seq, hlc, payload, state)
  SELECT origin, origin_seq, hlc, payload, state FROM bulk_operations;
DROP TABLE bulk_operations;
ALTER TABLE bulk_operations_v5 RENAME TO bulk_operations;
"
    .to_string();
    vec![v1, v2, v3, v4, v5]
}

/// Columns of fields added to a model after its table was created, and the
/// tables of models added after the library was created (`conduit`).
///
/// **Decision**: a new *optional* field needs no numbered migration: the first
/// table layout (`v1`) is generated from today's models, so a fresh library
/// has every column already, and an older one gets the missing field columns
/// (value and override clock) here, on open. Rows written before hold NULL,
/// which is what an absent optional field means.
pub fn add_missing_columns(conn: &mut rusqlite::Connection) -> crate::Result<()> {
    let tx = conn.transaction()?;
    for m in crate::model::registry() {
        let have: Vec<String> = {
            let mut stmt = tx.prepare(&format!("PRAGMA table_info({})", m.table))?;
            let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
            names.collect::<rusqlite::Result<_>>()?
        };
        if have.is_empty() {
            // A model added after the library was created: its whole table.
            tx.execute_batch(&model_ddl(m))?;
            continue;
        }
        let synced = m.fields.iter().map(|f| (f, true));
        for (f, is_synced) in synced.chain(m.local_fields.iter().map(|f| (f, false))) {
            if have.iter().any(|c| c == f.name) {
                continue;
            }
            let mut sql = format!(
                "ALTER TABLE {t} ADD COLUMN {f} {ty};",
                t = m.table,
                f = f.name,
                ty = f.kind.sql_type()
            );
            if is_synced && m.kind == ModelKind::Record && !f.key && !f.owner {
                sql.push_str(&format!(
                    "ALTER TABLE {t} ADD COLUMN {f}__hlc INTEGER;
                     ALTER TABLE {t} ADD COLUMN {f}__dev BLOB;",
                    t = m.table,
                    f = f.name
                ));
            }
            tx.execute_batch(&sql)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Schema version of `sync.db`.
pub const SYNC_SCHEMA_VERSION: i64 = 6;

/// `sync.db` v6 (compact vectors): replicas retired from version vectors
/// (`SyncLog::retire`): superseded, and held by every member through
/// `last_seq`. Their `origins` rows stay.
const SYNC_V6: &str = "
CREATE TABLE IF NOT EXISTS retired (replica BLOB PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
";

/// `sync.db`: the append-only log and per-origin positions.
pub fn sync_migrations() -> Vec<String> {
    vec!["
CREATE TABLE log (
  id INTEGER PRIMARY KEY,
  origin BLOB NOT NULL,
  origin_seq INTEGER NOT NULL,
  hlc INTEGER NOT NULL,
  lib_seq INTEGER,
  epoch INTEGER,
  model TEXT NOT NULL,
  record BLOB NOT NULL,
  kind INTEGER NOT NULL,
  payload BLOB NOT NULL,
  UNIQUE (origin, origin_seq)
);
CREATE UNIQUE INDEX log_by_lib_seq ON log(lib_seq) WHERE lib_seq IS NOT NULL;
CREATE INDEX log_by_record ON log(record);
CREATE TABLE origins (
  origin BLOB PRIMARY KEY,
  contiguous INTEGER NOT NULL,
  max_seq INTEGER NOT NULL,
  max_hlc INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"
    .to_string(),
    // v2: the sync service's state: pruning floors and what each peer acknowledged.
    "
CREATE TABLE pruned (origin BLOB PRIMARY KEY, through INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE peer_acks (device BLOB PRIMARY KEY, vv BLOB NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX log_unsequenced ON log(id) WHERE lib_seq IS NULL;
"
    .to_string(),
    // v3 (performance): no index by record. Entries arrive in record order only
    // by chance, so each append touched a random page of this index, doubling the
    // pages a batch of remote updates writes (B2 in PERFORMANCE.md); nothing on a
    // hot path reads the log by record (`SyncLog::fetch_record` scans).
    "
DROP INDEX IF EXISTS log_by_record;
"
    .to_string(),
    // v4 (performance): the log is stored in segments, one row per run of
    // consecutive entries of one origin (`sync::segment`): a transaction of
    // 1,000 changes is one row, not 1,000 (B1 in PERFORMANCE.md). The rows of
    // the old `log` table are converted by `SyncLog::open`, which then drops it.
    "
CREATE TABLE segments (
  id INTEGER PRIMARY KEY,
  origin BLOB NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  lib_seq INTEGER,
  epoch INTEGER,
  entries BLOB NOT NULL
);
CREATE UNIQUE INDEX segments_by_origin ON segments(origin, last_seq);
CREATE UNIQUE INDEX segments_by_lib_seq ON segments(lib_seq) WHERE lib_seq IS NOT NULL;
CREATE INDEX segments_unsequenced ON segments(id) WHERE lib_seq IS NULL;
"
    .to_string(),
    // v5 (durability and trust): positions belong to replicas, one per incarnation of a
    // device (`sync::entry::replica_id`); `origin` holds the replica id, and
    // `device` and `incarnation` the device and incarnation behind it (NULL
    // and 0 for rows written before: the replica of incarnation 0 is the
    // device itself). Ids are never reused (AUTOINCREMENT): `library.db`'s
    // applied-log watermark, which a power cut may take back to an earlier
    // value, must never cover a segment appended after pruning emptied the
    // top of the log. Chunks carry seals (`seals`, below).
    "
CREATE TABLE segments_v5 (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  origin BLOB NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  lib_seq INTEGER,
  epoch INTEGER,
  entries BLOB NOT NULL,
  device BLOB,
  incarnation INTEGER NOT NULL DEFAULT 0
);
INSERT INTO segments_v5 (id, origin, first_seq, last_seq, lib_seq, epoch, entries)
  SELECT id, origin, first_seq, last_seq, lib_seq, epoch, entries FROM segments;
DROP TABLE segments;
ALTER TABLE segments_v5 RENAME TO segments;
CREATE UNIQUE INDEX segments_by_origin ON segments(origin, last_seq);
CREATE UNIQUE INDEX segments_by_lib_seq ON segments(lib_seq) WHERE lib_seq IS NOT NULL;
CREATE INDEX segments_unsequenced ON segments(id) WHERE lib_seq IS NULL;
-- Trust: the seals of sealed chunks (`sync::seal`), one row per chunk, keyed
-- like the entry that carries it (the chunk's last): its replica and position.
CREATE TABLE IF NOT EXISTS seals (
  origin BLOB NOT NULL,
  last_seq INTEGER NOT NULL,
  first_seq INTEGER NOT NULL,
  sig BLOB NOT NULL,
  PRIMARY KEY (origin, last_seq)
) WITHOUT ROWID;
"
    .to_string(),
    SYNC_V6.to_string()]
}
