//! erase: the right to deletion. Appends to the erasure ledger (which every
//! restore applies) and reports, per erasure, which backups still hold the
//! person and when retention removes the last of them.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;

use super::{Finished, Notification, Operation, OperationError, Services};
use crate::container::{BackupReader, ObjectSource};
use crate::erasure::{Erasure, ErasureOrder, LedgerRecord};
use crate::postgres::restore::read_schema;
use crate::storage::StoredObject;

/// Records an erasure request in the ledger; audited without the key
/// values (they are personal data), announced as `erasure_recorded`.
pub async fn erase_subject(
    services: &Services,
    order: &ErasureOrder,
) -> Result<LedgerRecord, OperationError> {
    let result = async {
        let keyring = services.keyring()?;
        check_against_newest_backup(services, keyring, order).await?;
        Ok::<_, OperationError>(services.ledger().append(keyring, order).await?)
    }
    .await;
    let mut finished = Finished::new(Operation::Erase);
    finished.actor = order.requested_by.clone();
    finished.reason = order.reason.clone();
    match &result {
        Ok(record) => {
            finished.details = json!({"erasureId": record.id, "table": record.table,
                                      "keyColumns": order.key.keys().collect::<Vec<_>>()});
            finished.notification = Notification::Event {
                event: "erasure_recorded",
                payload: json!({"erasureId": record.id, "table": record.table}),
            };
        }
        Err(error) => {
            let message = error.chain();
            finished.error = Some(message.clone());
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Erase, "table": order.table}),
            };
        }
    }
    services.report(finished).await;
    result
}

/// Break-glass: sets objects under `erasures/` that are not records aside
/// (recorded in the ledger head with who and why), so one junk object does
/// not refuse every restore. Audited, announced as `ledger_set_aside`.
pub async fn set_aside_ledger_objects(
    services: &Services,
    keys: &[String],
    reason: Option<&str>,
    requested_by: Option<&str>,
) -> Result<Vec<crate::erasure::SetAside>, OperationError> {
    let by = requested_by.unwrap_or(services.actor.as_str()).to_owned();
    let result = async {
        let keyring = services.keyring()?;
        let reason = reason.ok_or(crate::erasure::ErasureError::SetAsideWithoutReason)?;
        Ok::<_, OperationError>(services.ledger().set_aside(keyring, keys, &by, reason).await?)
    }
    .await;
    let mut finished = Finished::new(Operation::LedgerSetAside);
    finished.actor = Some(by);
    finished.reason = reason.map(str::to_owned);
    match &result {
        Ok(entries) => {
            let set: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| json!({"key": e.key, "sha256": e.sha256}))
                .collect();
            finished.details = json!({"setAside": set});
            finished.notification = Notification::Event {
                event: "ledger_set_aside",
                payload: json!({"setAside": keys}),
            };
        }
        Err(error) => {
            let message = error.chain();
            finished.error = Some(message.clone());
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::LedgerSetAside, "keys": keys}),
            };
        }
    }
    services.report(finished).await;
    result
}

/// How many of the newest backups are tried for one this keyring reads.
const CHECKED_BACKUPS: usize = 10;

/// An erasure names a table and key columns the newest backup holds, as it
/// spells them: a wrong name or case would record fine and erase nothing on
/// every restore. With no backup yet (or none of the newest readable with
/// this keyring) there is nothing to check against.
async fn check_against_newest_backup(
    services: &Services,
    keyring: &crate::keyring::Keyring,
    order: &ErasureOrder,
) -> Result<(), OperationError> {
    if order.table.trim().is_empty() || order.key.is_empty() || order.key.keys().any(|c| c.trim().is_empty())
    {
        return Err(crate::erasure::ErasureError::Incomplete.into());
    }
    // The newest backup this keyring can read (a warm function may not yet
    // know the key a rotation just put into use).
    let Some(newest) = services
        .repository
        .newest(CHECKED_BACKUPS)
        .await?
        .into_iter()
        .find(|m| keyring.get(m.key_id.as_str()).is_ok())
    else {
        tracing::warn!(
            "no recent backup this keyring can read: the erasure's table and columns are not checked"
        );
        return Ok(());
    };
    let store = services.repository.store();
    let source = StoredObject::open(store.as_ref(), &newest.id.object_key()).await?;
    let reader = BackupReader::open(&source, keyring).await?;
    let schema = read_schema(&reader).await?;
    let name = crate::erasure::table_name(&order.table);
    let Some(table) = schema.table(&name) else {
        return Err(crate::erasure::ErasureError::UnknownTable {
            table: name.to_string(),
            backup: newest.id.to_string(),
        }
        .into());
    };
    if let Some(column) = order.key.keys().find(|c| !table.copy_columns.contains(c)) {
        return Err(crate::erasure::ErasureError::UnknownColumn {
            table: name.to_string(),
            column: column.clone(),
            columns: table.copy_columns.join(", "),
            backup: newest.id.to_string(),
        }
        .into());
    }
    Ok(())
}

/// One erasure and the backups that still hold its subject.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureReport {
    pub erasure_id: String,
    pub recorded_at: String,
    pub table: String,
    pub backups_containing: Vec<String>,
    /// When retention deletes the newest of them (a backup kept as one of
    /// the newest verified may stay longer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_removed_by: Option<String>,
}

/// Reads every backup's copy of each erasure's table and reports where the
/// subject still is. Costs a read of those tables in every backup.
pub async fn erasure_report(services: &Services) -> Result<Vec<ErasureReport>, OperationError> {
    let keyring = services.keyring()?;
    let store = services.repository.store();
    let erasures = services.ledger().load(keyring).await?;
    let backups = services.repository.list().await?;
    let mut containing: Vec<Vec<(String, DateTime<Utc>)>> = vec![Vec::new(); erasures.len()];
    for backup in &backups {
        if !erasures.iter().any(|e| {
            backup
                .table_sections()
                .any(|s| s.display_name() == e.table.to_string())
        }) {
            continue;
        }
        let source = StoredObject::open(store.as_ref(), &backup.id.object_key()).await?;
        let reader = BackupReader::open(&source, keyring).await?;
        let schema = read_schema(&reader).await?;
        for (index, erasure) in erasures.iter().enumerate() {
            if holds_subject(&reader, &schema, erasure).await? {
                containing[index].push((backup.id.to_string(), backup.timestamp));
            }
        }
    }
    let retention = Duration::days(i64::from(services.retention_days));
    Ok(erasures
        .iter()
        .zip(containing)
        .map(|(erasure, held)| ErasureReport {
            erasure_id: erasure.id.clone(),
            recorded_at: erasure.recorded_at(),
            table: erasure.table.display(),
            last_removed_by: held
                .iter()
                .map(|(_, taken)| *taken)
                .max()
                .map(|newest| (newest + retention).to_rfc3339_opts(SecondsFormat::Secs, true)),
            backups_containing: held.into_iter().map(|(id, _)| id).collect(),
        })
        .collect())
}

/// Whether the backup's copy of the erasure's table has a row matching its key.
async fn holds_subject<S: ObjectSource>(
    reader: &BackupReader<'_, S>,
    schema: &crate::postgres::schema::DatabaseSchema,
    erasure: &Erasure,
) -> Result<bool, OperationError> {
    let Some(table) = schema.tables.iter().find(|t| t.name == erasure.table) else {
        return Ok(false);
    };
    let Some(entry) = reader.table(&erasure.table.schema, &erasure.table.name) else {
        return Ok(false);
    };
    let mut wanted = Vec::new();
    for (column, value) in &erasure.key {
        let Some(position) = table.copy_columns.iter().position(|c| c == column) else {
            return Ok(false);
        };
        wanted.push((position, value.as_str()));
    }
    if entry.copy_format() == crate::container::CopyFormat::Binary {
        // Binary rows hold each value in its type's own encoding, which
        // the ledger's text key cannot be compared with here: the backup
        // is counted as holding the subject (it is then reported until
        // retention removes it, never left out while it still holds it).
        return Ok(true);
    }
    let mut section = reader.open_table(&entry);
    let mut pending: Vec<u8> = Vec::new();
    while let Some(block) = section.next_block().await? {
        pending.extend_from_slice(&block);
        let complete = pending.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
        let found = pending[..complete]
            .split(|b| *b == b'\n')
            .any(|line| row_matches(line, &wanted));
        if found {
            return Ok(true);
        }
        pending.drain(..complete);
    }
    Ok(row_matches(&pending, &wanted))
}

/// A COPY text row whose fields at the given positions decode to the values.
fn row_matches(line: &[u8], wanted: &[(usize, &str)]) -> bool {
    if line.is_empty() {
        return false;
    }
    let fields: Vec<&[u8]> = line.split(|b| *b == b'\t').collect();
    wanted.iter().all(|(position, value)| {
        fields
            .get(*position)
            .and_then(|field| copy_text_value(field))
            .is_some_and(|decoded| decoded == value.as_bytes())
    })
}

/// A COPY text field as its value (`None` for `\N`).
fn copy_text_value(field: &[u8]) -> Option<Vec<u8>> {
    if field == b"\\N" {
        return None;
    }
    let mut value = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'\\' {
            value.push(byte);
            continue;
        }
        match bytes.next() {
            Some(b'n') => value.push(b'\n'),
            Some(b't') => value.push(b'\t'),
            Some(b'r') => value.push(b'\r'),
            Some(b'b') => value.push(0x08),
            Some(b'f') => value.push(0x0c),
            Some(b'v') => value.push(0x0b),
            Some(&other) => value.push(other),
            None => {}
        }
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_rows_are_matched_on_decoded_fields() {
        let row = b"7\tcl9x\\tz\t\\N\tanna@example.com";
        assert!(row_matches(row, &[(1, "cl9x\tz")]));
        assert!(row_matches(row, &[(0, "7"), (3, "anna@example.com")]));
        assert!(!row_matches(row, &[(2, "")]), "NULL matches nothing");
        assert!(!row_matches(row, &[(9, "7")]));
        assert!(!row_matches(b"", &[(0, "")]));
    }
}
