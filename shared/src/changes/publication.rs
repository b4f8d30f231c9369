//! Setting change capture up and taking it down: `backupctl pitr enable`
//! and `pitr disable`.
//!
//! The publication lists tables one by one, never `FOR ALL TABLES`: once a
//! table is published, PostgreSQL refuses UPDATE and DELETE on it unless
//! it has a replica identity, so publishing a table without a primary key
//! (or an explicit replica identity) would break the application. Such
//! tables are named and left out.

use serde::Serialize;
use tokio_postgres::Client;

use super::{ChangesError, Lsn};
use crate::postgres::{self, QualifiedName};

pub const DEFAULT_SLOT: &str = "pgbackup_pitr";
pub const DEFAULT_PUBLICATION: &str = "pgbackup_pitr";
pub const SLOT_VARIABLE: &str = "BACKUP_PITR_SLOT";
pub const PUBLICATION_VARIABLE: &str = "BACKUP_PITR_PUBLICATION";

/// What the slot and the publication are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PitrNames {
    pub slot: String,
    pub publication: String,
}

impl PitrNames {
    /// From `BACKUP_PITR_SLOT` and `BACKUP_PITR_PUBLICATION` through `get`,
    /// defaults where unset. Both must be what PostgreSQL accepts as a slot
    /// name (lower-case letters, digits and `_`, at most 63), so neither
    /// ever needs quoting.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let name = |variable: &str, default: &str| {
            let value = get(variable).filter(|v| !v.trim().is_empty());
            let value = value.as_deref().map_or(default, str::trim).to_owned();
            let valid = value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if valid {
                Ok(value)
            } else {
                Err(format!(
                    "{variable}={value:?} is not a valid name: use lower-case letters, digits and _, at most 63"
                ))
            }
        };
        Ok(Self {
            slot: name(SLOT_VARIABLE, DEFAULT_SLOT)?,
            publication: name(PUBLICATION_VARIABLE, DEFAULT_PUBLICATION)?,
        })
    }

    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

impl Default for PitrNames {
    fn default() -> Self {
        Self {
            slot: DEFAULT_SLOT.to_owned(),
            publication: DEFAULT_PUBLICATION.to_owned(),
        }
    }
}

/// A table the publication leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeftOut {
    pub table: String,
    pub reason: String,
}

/// What `pitr enable` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnableReport {
    pub slot: String,
    pub publication: String,
    /// Published tables, `schema.name`.
    pub tables: Vec<String>,
    pub left_out: Vec<LeftOut>,
    /// Tables without a key set to `REPLICA IDENTITY FULL` on request
    /// (`--replica-identity-full`) and published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_full: Vec<String>,
    pub slot_created: bool,
    pub publication_created: bool,
    /// Where the slot's changes start.
    pub slot_position: Lsn,
    /// Settings that can hurt the database (an unlimited slot WAL keep size).
    pub warnings: Vec<String>,
}

/// What `pitr disable` dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DisableReport {
    pub slot: String,
    pub publication: String,
    pub slot_dropped: bool,
    pub publication_dropped: bool,
}

/// Checks what logical decoding needs, every missing piece in one message.
pub async fn check_prerequisites(client: &Client) -> Result<(), ChangesError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int AS version, current_setting('server_version') AS shown, \
                    current_setting('wal_level') AS wal_level, \
                    (SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles WHERE rolname = current_user) AS replication, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'rds_replication' \
                            AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')) AS rds_replication, \
                    current_setting('max_replication_slots')::int AS max_slots, current_user AS who",
            &[],
        )
        .await
        .map_err(ChangesError::query("reading the server's settings"))?;
    let mut missing = Vec::new();
    let version: i32 = row.get("version");
    if version < postgres::OLDEST_SUPPORTED_SERVER {
        let shown: String = row.get("shown");
        missing.push(format!(
            "the server runs PostgreSQL {shown}; change capture needs PostgreSQL 13 or newer"
        ));
    }
    let wal_level: String = row.get("wal_level");
    if wal_level != "logical" {
        missing.push(format!(
            "wal_level = {wal_level}, and logical decoding needs wal_level = logical (on RDS and Aurora: set rds.logical_replication = 1 in the instance's parameter group and reboot; elsewhere ALTER SYSTEM SET wal_level = logical and restart the server)"
        ));
    }
    let replication =
        row.get::<_, Option<bool>>("replication").unwrap_or(false) || row.get::<_, bool>("rds_replication");
    if !replication {
        let who: String = row.get("who");
        missing.push(format!(
            "role {who} may not use replication slots (on RDS: GRANT rds_replication TO {who}; elsewhere: ALTER ROLE {who} REPLICATION)"
        ));
    }
    let max_slots: i32 = row.get("max_slots");
    if max_slots < 1 {
        missing.push("max_replication_slots = 0: set it to at least 1 and restart the server".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ChangesError::Prerequisite(missing.join("; ")))
    }
}

/// The tables a backup takes (`only` narrows them, as `create --tables`
/// does), split into those that can be published and those left out.
/// Partitioned tables are published as their roots (the publication sends
/// their partitions' changes under the root's name); a partition is never
/// listed itself. With `identity_full`, the tables without a key are
/// returned apart (third list): the caller sets them to `REPLICA IDENTITY
/// FULL` and publishes them.
pub async fn publishable_tables(
    client: &Client,
    only: &[String],
    identity_full: bool,
) -> Result<(Vec<QualifiedName>, Vec<LeftOut>, Vec<QualifiedName>), ChangesError> {
    let rows = client
        .query(
            "SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind, c.relpersistence::text AS persistence, \
                    c.relreplident::text AS identity, c.relispartition AS is_partition, \
                    (SELECT rn.nspname::text FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
                     WHERE c.relispartition AND r.oid = pg_catalog.pg_partition_root(c.oid)) AS root_schema, \
                    (SELECT r.relname::text FROM pg_catalog.pg_class r \
                     WHERE c.relispartition AND r.oid = pg_catalog.pg_partition_root(c.oid)) AS root_name, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_key, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) AS has_identity_index \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_' \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(ChangesError::query("listing the tables"))?;
    let all: Vec<QualifiedName> = rows
        .iter()
        .map(|row| QualifiedName::new(row.get::<_, String>("schema"), row.get::<_, String>("name")))
        .collect();
    let wanted = if only.is_empty() {
        all.clone()
    } else {
        postgres::resolve_table_names(only, &all, "in the database")?
    };
    let mut published = Vec::new();
    let mut left_out = Vec::new();
    let mut to_full = Vec::new();
    for (row, name) in rows.iter().zip(&all) {
        if !wanted.contains(name) {
            continue;
        }
        let kind: String = row.get("kind");
        let identity: String = row.get("identity");
        let root_schema: Option<String> = row.get("root_schema");
        let root_name: Option<String> = row.get("root_name");
        let root = root_schema
            .zip(root_name)
            .map(|(schema, root)| QualifiedName::new(schema, root));
        let reason = if let Some(root) = &root {
            // Its changes travel as its root's (publish_via_partition_root),
            // as its rows travel in the root's section of a backup.
            if wanted.contains(root) {
                continue;
            }
            Some(format!(
                "a partition whose partitioned table {root} is not captured (partitions are captured through it)"
            ))
        } else if row.get::<_, String>("persistence") != "p" {
            Some("unlogged (its changes are not in the write-ahead log)".to_owned())
        } else {
            match identity.as_str() {
                "f" => None,
                "d" if row.get::<_, bool>("has_key") => None,
                "i" if row.get::<_, bool>("has_identity_index") => None,
                "n" => Some("REPLICA IDENTITY NOTHING".to_owned()),
                "d" if identity_full && kind != "p" => {
                    to_full.push(name.clone());
                    continue;
                }
                _ if kind == "p" => Some(
                    "a partitioned table without a primary key (REPLICA IDENTITY FULL is set per partition, not here)"
                        .to_owned(),
                ),
                _ => Some(
                    "no primary key or replica identity (`pitr enable --replica-identity-full` captures it by all its columns)"
                        .to_owned(),
                ),
            }
        };
        match reason {
            None => published.push(name.clone()),
            Some(reason) => left_out.push(LeftOut {
                table: name.to_string(),
                reason,
            }),
        }
    }
    Ok((published, left_out, to_full))
}

/// Creates (or brings up to date) the publication and creates the slot.
/// Run again, it sets the publication's tables to today's list and keeps
/// the slot (and the changes it holds).
pub async fn enable_pitr(
    database_url: &str,
    names: &PitrNames,
    only: &[String],
) -> Result<EnableReport, ChangesError> {
    enable_pitr_with(database_url, names, only, false).await
}

/// [`enable_pitr`]; with `identity_full`, the tables without a primary
/// key or replica identity are set to `REPLICA IDENTITY FULL` (which
/// takes a short ACCESS EXCLUSIVE lock on each and makes their UPDATE and
/// DELETE log the whole old row) and published, instead of left out.
pub async fn enable_pitr_with(
    database_url: &str,
    names: &PitrNames,
    only: &[String],
    identity_full: bool,
) -> Result<EnableReport, ChangesError> {
    let client = postgres::connect(database_url).await?;
    check_prerequisites(&client).await?;
    refuse_a_lost_slot(&client, &names.slot).await?;
    let (mut tables, left_out, to_full) = publishable_tables(&client, only, identity_full).await?;
    for table in &to_full {
        client
            .batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.quoted()))
            .await
            .map_err(ChangesError::query("setting REPLICA IDENTITY FULL"))?;
        tracing::warn!(table = %table, "set to REPLICA IDENTITY FULL for change capture");
    }
    tables.extend(to_full.iter().cloned());
    tables.sort();
    if tables.is_empty() {
        let named = if left_out.is_empty() {
            "the database has no tables".to_owned()
        } else {
            left_out
                .iter()
                .map(|l| format!("{} ({})", l.table, l.reason))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ChangesError::NothingToPublish(named));
    }
    for left in &left_out {
        tracing::warn!(table = %left.table, reason = %left.reason, "left out of change capture");
    }
    let list = tables
        .iter()
        .map(QualifiedName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let publication_exists = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&names.publication],
        )
        .await
        .map_err(ChangesError::query("looking for the publication"))?
        .get::<_, bool>(0);
    // Names are checked to need no quoting (PitrNames); tables are quoted.
    // Partitioned tables' changes arrive under the root's name, as their
    // rows are restored through it.
    let statement = if publication_exists {
        format!(
            "ALTER PUBLICATION {0} SET TABLE {list}; ALTER PUBLICATION {0} SET (publish_via_partition_root = true)",
            names.publication
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            names.publication
        )
    };
    client
        .batch_execute(&statement)
        .await
        .map_err(ChangesError::query("creating the publication"))?;
    let slot = existing_slot(&client, &names.slot).await?;
    let (slot_created, slot_position) = match slot {
        Some(position) => (false, position),
        None => {
            // Its own statement, outside any transaction: a logical slot
            // cannot be created in a transaction that has written.
            let created = client
                .query_one(
                    "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&names.slot],
                )
                .await;
            match created {
                Ok(row) => (true, parse_lsn(&row.get::<_, String>(0))?),
                Err(source) => {
                    // Leave nothing half set up.
                    if !publication_exists {
                        let _ = client
                            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", names.publication))
                            .await;
                    }
                    return Err(ChangesError::Query {
                        what: "creating the replication slot",
                        source,
                    });
                }
            }
        }
    };
    let mut warnings = Vec::new();
    let keep: String = client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .map_err(ChangesError::query("reading max_slot_wal_keep_size"))?
        .get(0);
    if keep == "-1" {
        let warning = format!(
            "max_slot_wal_keep_size is unlimited: if captures stop, slot {} keeps every WAL segment until the server's disk is full. Run captures regularly, set max_slot_wal_keep_size, or `backupctl pitr disable`",
            names.slot
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    // PostgreSQL publishes a partition's changes through its root, but not
    // a TRUNCATE of the partition alone: capture notices one (the
    // partition's file changes) and cuts the chain there, which costs a
    // base backup, so the operator should know.
    let partitioned: Vec<String> = client
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
             FROM pg_catalog.pg_publication p \
             JOIN pg_catalog.pg_publication_rel pr ON pr.prpubid = p.oid \
             JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1 AND c.relkind = 'p' ORDER BY 1",
            &[&names.publication],
        )
        .await
        .map_err(ChangesError::query("listing the published partitioned tables"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !partitioned.is_empty() {
        let warning = format!(
            "a TRUNCATE of a single partition of {} is not published (PostgreSQL publishes only a TRUNCATE of the partitioned table itself): capture detects one (so does a VACUUM FULL or CLUSTER of a partition) and cuts the change chain there, taking a base backup; instants in the segment that holds it cannot be restored. Truncate the partitioned table, or DELETE from the partition, to keep the chain whole",
            partitioned.join(", ")
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    Ok(EnableReport {
        slot: names.slot.clone(),
        publication: names.publication.clone(),
        tables: tables.iter().map(ToString::to_string).collect(),
        left_out,
        identity_full: to_full.iter().map(ToString::to_string).collect(),
        slot_created,
        publication_created: !publication_exists,
        slot_position,
        warnings,
    })
}

/// Drops the slot (releasing the WAL it holds) and the publication.
pub async fn disable_pitr(database_url: &str, names: &PitrNames) -> Result<DisableReport, ChangesError> {
    let client = postgres::connect(database_url).await?;
    let slot_dropped = existing_slot(&client, &names.slot).await?.is_some();
    if slot_dropped {
        client
            .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&names.slot])
            .await
            .map_err(ChangesError::query("dropping the replication slot"))?;
    }
    let publication_dropped = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&names.publication],
        )
        .await
        .map_err(ChangesError::query("looking for the publication"))?
        .get::<_, bool>(0);
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", names.publication))
        .await
        .map_err(ChangesError::query("dropping the publication"))?;
    Ok(DisableReport {
        slot: names.slot.clone(),
        publication: names.publication.clone(),
        slot_dropped,
        publication_dropped,
    })
}

/// A chain a base backup started after the old one broke: the slot it
/// (re)created and where the new chain begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartedChain {
    pub slot: String,
    /// Why the old chain could not go on: the slot was invalidated, or gone.
    pub reason: String,
    /// The new slot's position (a base backup taken next records it).
    pub slot_position: Lsn,
}

/// Before a base backup: when capture is on here (the publication exists)
/// but its slot was invalidated by the server or is gone (dropped, a
/// failover to a standby without failover slots), drops the dead slot and
/// creates a new one, so the backup about to be taken starts a new chain
/// (issue #29: "the next base backup starts a new chain"). The old chain
/// stays broken from its last stored change: capture and restore say so,
/// and only the instants in between are lost. `None`: nothing to restart
/// (capture off, the slot healthy, or a slot of that name that is not ours
/// to touch, which the backup then ignores).
///
/// Must run outside a transaction: a logical slot cannot be created in one
/// that has written, and the creation waits for the transactions running
/// at that moment to end (as `pitr enable` does).
pub async fn restart_broken_chain(
    client: &Client,
    names: &PitrNames,
) -> Result<Option<RestartedChain>, ChangesError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1) AS enabled, \
                    (SELECT to_jsonb(s) ->> 'wal_status' FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $2) AS wal_status, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $2) AS present, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $2 \
                            AND s.plugin = 'pgoutput' AND s.database = current_database()) AS ours",
            &[&names.publication, &names.slot],
        )
        .await
        .map_err(ChangesError::query("looking for the replication slot"))?;
    let (enabled, present, ours): (bool, bool, bool) =
        (row.get("enabled"), row.get("present"), row.get("ours"));
    let wal_status: Option<String> = row.get("wal_status");
    let reason = match (enabled, present, ours, wal_status.as_deref()) {
        (false, ..) => return Ok(None),
        (true, false, ..) => format!(
            "replication slot {} is gone (dropped, or lost in a failover to a standby without failover slots)",
            names.slot
        ),
        (true, true, true, Some("lost")) => {
            client
                .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&names.slot])
                .await
                .map_err(ChangesError::query("dropping the invalidated replication slot"))?;
            format!(
                "the server invalidated replication slot {} (wal_status = lost)",
                names.slot
            )
        }
        _ => return Ok(None),
    };
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&names.slot],
        )
        .await
        .map_err(ChangesError::query(
            "creating the replication slot for a new chain",
        ))?;
    Ok(Some(RestartedChain {
        slot: names.slot.clone(),
        reason,
        slot_position: parse_lsn(&row.get::<_, String>(0))?,
    }))
}

/// `enable` keeps an existing slot; one the server invalidated (`wal_status
/// = lost`) would then be reported as set up while it can never be read
/// again, so it is refused before anything changes, saying to drop it first.
async fn refuse_a_lost_slot(client: &Client, slot: &str) -> Result<(), ChangesError> {
    let lost = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND wal_status = 'lost')",
            &[&slot],
        )
        .await
        .map_err(ChangesError::query("looking for the replication slot"))?
        .get::<_, bool>(0);
    if lost {
        return Err(ChangesError::Prerequisite(format!(
            "replication slot {slot} was invalidated by the server (wal_status = lost) and can never be read again; run `backupctl pitr disable` first (it drops the slot), then `backupctl pitr enable`, then take a base backup to start a new chain; or just take the base backup (`backupctl create`): it replaces the slot and starts the new chain"
        )));
    }
    Ok(())
}

/// The slot's confirmed position, `None` when this database has no such
/// slot; a slot of that name that is not a pgoutput slot of this database
/// is refused.
pub(crate) async fn existing_slot(client: &Client, slot: &str) -> Result<Option<Lsn>, ChangesError> {
    let row = client
        .query_opt(
            "SELECT plugin, database = current_database() AS here, confirmed_flush_lsn::text AS position \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(ChangesError::query("looking for the replication slot"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let plugin: Option<String> = row.get("plugin");
    let here: Option<bool> = row.get("here");
    if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
        return Err(ChangesError::Prerequisite(format!(
            "a replication slot named {slot} exists but is not a pgoutput slot of this database; choose another name with BACKUP_PITR_SLOT"
        )));
    }
    let position: Option<String> = row.get("position");
    position.as_deref().map(parse_lsn).transpose()
}

pub(crate) fn parse_lsn(text: &str) -> Result<Lsn, ChangesError> {
    text.parse()
        .map_err(|reason: String| ChangesError::Sequence(format!("the server gave {reason}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_default_and_refuse_what_would_need_quoting() {
        let none = PitrNames::from_lookup(|_| None).unwrap();
        assert_eq!(none, PitrNames::default());
        let set = PitrNames::from_lookup(|name| match name {
            SLOT_VARIABLE => Some("carwash_slot".into()),
            _ => Some("  ".into()),
        })
        .unwrap();
        assert_eq!(set.slot, "carwash_slot");
        assert_eq!(set.publication, DEFAULT_PUBLICATION);
        for bad in ["Slot", "a-b", "x; DROP TABLE t", &"a".repeat(64)] {
            let error = PitrNames::from_lookup(|name| (name == PUBLICATION_VARIABLE).then(|| bad.to_owned()))
                .unwrap_err();
            assert!(error.contains(PUBLICATION_VARIABLE), "{error}");
        }
    }
}
