//! Who belongs to a library: typed reads of the `devices` table.
//!
//! The node (routing, pairing, joining) and the sync service ask these questions
//! constantly; answering them here keeps the table layout out of their code.
//! A device is a member once its `Device` row exists (it registered itself, or
//! was registered by the device that let it join) and until another member
//! removes it (`removed` set): a removed device's row stays, so that every
//! member keeps refusing it, but it counts for nothing here.

use std::collections::HashMap;

use rusqlite::OptionalExtension;
use uuid::Uuid;

use crate::error::Result;
use crate::model::Device;
use crate::sync::txn::Library;

/// Whether `device` is registered in the library, so that it may read and write it.
pub fn is_member(lib: &Library, device: Uuid) -> Result<bool> {
    lib.read(|c| {
        Ok(
            c.prepare_cached("SELECT COUNT(*) FROM devices WHERE uuid = ?1 AND removed IS NULL")?
                .query_row([device], |r| r.get::<_, i64>(0))?
                > 0,
        )
    })
}

/// The member device that registered the Iroh node id `node_id`, to tell who is
/// calling. `None` for a node no member registered, and for a removed device.
/// Should two rows name the same node id (a member registered another device
/// under a key already bound), the row the device bound itself wins, then the
/// oldest registration.
pub fn device_for_node(lib: &Library, node_id: &str) -> Result<Option<Uuid>> {
    lib.read(|c| {
        let found: Option<(Uuid, Option<i64>)> = c
            .prepare_cached(
                "SELECT uuid, removed FROM devices WHERE node_id = ?1
                 ORDER BY (COALESCE(node_id__dev, _dev) = uuid) DESC, _hlc, uuid LIMIT 1",
            )?
            .query_row([node_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(found.and_then(|(id, removed)| removed.is_none().then_some(id)))
    })
}

/// The removed device that registered `node_id`, if any: its connections
/// are kept only to hear the entries it pushes (the cutoff refuses all but
/// its removal of its remover), never to serve it.
pub fn removed_for_node(lib: &Library, node_id: &str) -> Result<Option<Uuid>> {
    lib.read(|c| {
        Ok(c.prepare_cached(
            "SELECT uuid FROM devices WHERE node_id = ?1 AND removed IS NOT NULL
                 ORDER BY (COALESCE(node_id__dev, _dev) = uuid) DESC, _hlc, uuid LIMIT 1",
        )?
        .query_row([node_id], |r| r.get(0))
        .optional()?)
    })
}

/// Whether `device` was removed from the library: it may not sync it, join it
/// again, or be shown it.
pub fn is_removed(lib: &Library, device: Uuid) -> Result<bool> {
    lib.read(|c| {
        Ok(
            c.prepare_cached("SELECT 1 FROM devices WHERE uuid = ?1 AND removed IS NOT NULL")?
                .query_row([device], |_| Ok(()))
                .optional()?
                .is_some(),
        )
    })
}

/// The node id a device's row binds it to, removed or not: a pairing that
/// claims the device with another key is refused.
pub fn bound_node(lib: &Library, device: Uuid) -> Result<Option<String>> {
    lib.read(|c| {
        Ok(
            c.prepare_cached("SELECT node_id FROM devices WHERE uuid = ?1")?
                .query_row([device], |r| r.get::<_, Option<String>>(0))
                .optional()?
                .flatten(),
        )
    })
}

/// A registered device's row (name, node id, addresses, removal): to tell
/// whether its registration is up to date, and how to reach it. `None` when
/// the device was never registered.
pub fn member(lib: &Library, device: Uuid) -> Result<Option<Device>> {
    lib.read(|c| {
        Ok(
            c.prepare_cached("SELECT name, node_id, addrs, removed FROM devices WHERE uuid = ?1")?
                .query_row([device], |r| {
                    Ok(Device {
                        id: device,
                        name: r.get(0)?,
                        node_id: r.get(1)?,
                        addrs: r.get(2)?,
                        removed: r.get(3)?,
                    })
                })
                .optional()?,
        )
    })
}

/// Registered devices, sorted by UUID (this device included): the set the sync
/// service talks to and elects leaders among.
pub fn member_ids(lib: &Library) -> Result<Vec<Uuid>> {
    lib.read(|c| {
        let mut stmt =
            c.prepare_cached("SELECT uuid FROM devices WHERE removed IS NULL ORDER BY uuid")?;
        let rows = stmt.query_map([], |r| r.get::<_, Uuid>(0))?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    })
}

/// How many devices are registered, for library listings.
pub fn member_count(lib: &Library) -> Result<u64> {
    lib.read(|c| {
        Ok(
            c.prepare_cached("SELECT COUNT(*) FROM devices WHERE removed IS NULL")?
                .query_row([], |r| r.get::<_, i64>(0))? as u64,
        )
    })
}

/// Registered devices and the time in ms (the physical part of the HLC that
/// created their row, `_hlc >> 16`) they joined: a device that joined recently
/// has not acknowledged anything yet and must not hold back pruning forever.
pub fn members_registered_at(lib: &Library) -> Result<HashMap<Uuid, u64>> {
    lib.read(|c| {
        let mut stmt = c.prepare_cached("SELECT uuid, _hlc FROM devices WHERE removed IS NULL")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Uuid>(0)?, (r.get::<_, i64>(1)? as u64) >> 16))
        })?;
        Ok(rows.collect::<std::result::Result<HashMap<_, _>, _>>()?)
    })
}
