//! The erasure ledger: the right to deletion for data that lives on in
//! backups. Backups are immutable (and may be under Object Lock), so they
//! are not rewritten; instead each erasure request is appended under
//! `erasures/` and every restore applies the whole ledger before it
//! commits, so an erased person never comes back from any backup. Old
//! backups age out under the retention policy (`backupctl erase --report`
//! says when). See `docs/GDPR.md`.
//!
//! A ledger record names the table in clear, but the key that identifies
//! the person (`id=…`) is sealed like backup data (AES-256-CBC + HMAC under
//! a per-record key from the master key), and the whole record carries a
//! MAC, so the ledger holds no readable personal data and cannot be forged
//! to delete other rows.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::envelope::{BackupKeys, ChunkPosition, FLAG_LAST_IN_SECTION, MetadataKey, SALT_LEN};
use crate::keyring::{Keyring, KeyringError};
use crate::metadata::{canonical_document, rfc3339_millis};
use crate::postgres::schema::QualifiedName;
use crate::storage::{SharedStore, StorageError, get_bytes};

/// HKDF `info` of the key that authenticates ledger records.
pub const ERASURE_MAC_INFO: &[u8] = b"pgbackup/v1 erasure mac";
const LEDGER_PREFIX: &str = "erasures/";
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Where a sealed key sits, for the chunk MAC: no backup has this section.
const SEALED_KEY_POSITION: ChunkPosition = ChunkPosition {
    section: u32::MAX,
    chunk: 0,
};

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("the erasure key {0:?} is not column=value (e.g. id=cl9x2…); give --key once per key column")]
    MalformedKey(String),
    #[error("an erasure needs a table and at least one key column, each with a name")]
    Incomplete,
    #[error(
        "no table {table} in the newest backup ({backup}), so this erasure would erase nothing and was not recorded; names are case-sensitive (run `backupctl list` and give the table as the backup holds it)"
    )]
    UnknownTable { table: String, backup: String },
    #[error(
        "table {table} in the newest backup ({backup}) has no column {column:?} (it has {columns}), so this erasure would erase nothing and was not recorded; names are case-sensitive"
    )]
    UnknownColumn {
        table: String,
        column: String,
        columns: String,
        backup: String,
    },
    #[error(
        "the erasure ledger record {key} fails its MAC: it was altered or forged, so no restore can trust the ledger; find out who can write to the backup store and restore the record from its versions"
    )]
    Tampered { key: String },
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
}

/// `id=cl9x2` → (`id`, `cl9x2`).
pub fn parse_key(text: &str) -> Result<(String, String), ErasureError> {
    match text.split_once('=') {
        Some((column, value)) if !column.trim().is_empty() => {
            Ok((column.trim().to_owned(), value.to_owned()))
        }
        _ => Err(ErasureError::MalformedKey(text.to_owned())),
    }
}

/// `User` (schema `public`) or `schema.Table`.
pub fn table_name(text: &str) -> QualifiedName {
    match text.trim().split_once('.') {
        Some((schema, name)) => QualifiedName::new(schema, name),
        None => QualifiedName::new("public", text.trim()),
    }
}

/// What an operator asks to erase.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErasureOrder {
    /// `User` or `schema.Table`.
    pub table: String,
    /// Key column → value; rows matching all of them are erased.
    pub key: BTreeMap<String, String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// One erasure, opened with the key: what a restore deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub id: String,
    pub time: DateTime<Utc>,
    pub table: QualifiedName,
    pub key: BTreeMap<String, String>,
}

/// A ledger record as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRecord {
    pub id: String,
    #[serde(with = "rfc3339_millis")]
    pub time: DateTime<Utc>,
    pub table: String,
    pub key_id: String,
    /// Hex: the per-record salt of the sealed key.
    pub salt: String,
    /// Hex: the key columns and values, sealed.
    pub sealed_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Hex HMAC-SHA256 of the canonical record without this field.
    #[serde(default)]
    pub mac: String,
}

impl LedgerRecord {
    fn mac_input(&self) -> Vec<u8> {
        let mut unsealed = self.clone();
        unsealed.mac = String::new();
        let mut value = serde_json::to_value(&unsealed).expect("ledger records serialize");
        if let Some(map) = value.as_object_mut() {
            map.remove("mac");
        }
        canonical_document(&value)
    }
}

/// The ledger under `erasures/` in the backup store.
#[derive(Clone)]
pub struct ErasureLedger {
    store: SharedStore,
}

impl ErasureLedger {
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Seals and appends one erasure; returns its record (the key sealed).
    pub async fn append(
        &self,
        keyring: &Keyring,
        order: &ErasureOrder,
    ) -> Result<LedgerRecord, ErasureError> {
        if order.table.trim().is_empty()
            || order.key.is_empty()
            || order.key.keys().any(|c| c.trim().is_empty())
        {
            return Err(ErasureError::Incomplete);
        }
        let time = Utc::now();
        let mut random = [0u8; 4 + SALT_LEN];
        getrandom::fill(&mut random).map_err(ErasureError::Randomness)?;
        let (suffix, salt) = random.split_at(4);
        let salt: [u8; SALT_LEN] = salt.try_into().expect("split at the salt length");
        let master = keyring.current();
        let plaintext = Zeroizing::new(serde_json::to_vec(&order.key).expect("keys serialize"));
        let mut sealed = Vec::new();
        BackupKeys::derive(master, &salt)
            .seal_chunk(SEALED_KEY_POSITION, FLAG_LAST_IN_SECTION, &plaintext, &mut sealed)
            .map_err(ErasureError::Randomness)?;
        let mut record = LedgerRecord {
            id: format!("erasure-{}-{}", time.timestamp_millis(), hex::encode(suffix)),
            time,
            table: table_name(&order.table).to_string(),
            key_id: master.id().to_string(),
            salt: hex::encode(salt),
            sealed_key: hex::encode(sealed),
            reason: order.reason.clone(),
            requested_by: order.requested_by.clone(),
            mac: String::new(),
        };
        record.mac = hex::encode(MetadataKey::derive_for(master, ERASURE_MAC_INFO).tag(&record.mac_input()));
        let json = serde_json::to_vec_pretty(&record).expect("ledger records serialize");
        self.store
            .put(&format!("{LEDGER_PREFIX}{}.json", record.id), Bytes::from(json))
            .await?;
        Ok(record)
    }

    /// Every erasure, oldest first, each authenticated and opened. A record
    /// that fails its MAC refuses the whole ledger (a forged record could
    /// delete other rows; an altered one could spare the person).
    pub async fn load(&self, keyring: &Keyring) -> Result<Vec<Erasure>, ErasureError> {
        let mut erasures = Vec::new();
        for info in self.store.list(LEDGER_PREFIX).await? {
            let tampered = || ErasureError::Tampered {
                key: info.key.clone(),
            };
            let bytes = get_bytes(self.store.as_ref(), &info.key, MAX_RECORD_BYTES).await?;
            let record: LedgerRecord = serde_json::from_slice(&bytes).map_err(|_| tampered())?;
            let master = keyring.get(&record.key_id)?;
            let mac = hex::decode(&record.mac).map_err(|_| tampered())?;
            MetadataKey::derive_for(master, ERASURE_MAC_INFO)
                .verify(&record.mac_input(), &mac)
                .map_err(|_| tampered())?;
            let salt: [u8; SALT_LEN] = hex::decode(&record.salt)
                .ok()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(tampered)?;
            let mut sealed = hex::decode(&record.sealed_key).map_err(|_| tampered())?;
            let (_, plaintext) = BackupKeys::derive(master, &salt)
                .open_chunk(SEALED_KEY_POSITION, &mut sealed)
                .map_err(|_| tampered())?;
            let key: BTreeMap<String, String> = serde_json::from_slice(plaintext).map_err(|_| tampered())?;
            erasures.push(Erasure {
                id: record.id,
                time: record.time,
                table: table_name(&record.table),
                key,
            });
        }
        erasures.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        Ok(erasures)
    }
}

impl Erasure {
    /// `DELETE FROM "public"."User" WHERE "id"::text = $1`, with its values.
    pub fn delete_statement(&self) -> (String, Vec<String>) {
        let conditions: Vec<String> = self
            .key
            .keys()
            .enumerate()
            .map(|(index, column)| {
                format!(
                    "{}::text = ${}",
                    crate::postgres::schema::quote_ident(column),
                    index + 1
                )
            })
            .collect();
        (
            format!(
                "DELETE FROM {} WHERE {}",
                self.table.quoted(),
                conditions.join(" AND ")
            ),
            self.key.values().cloned().collect(),
        )
    }

    pub fn recorded_at(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_and_tables_parse_and_make_one_parameterised_delete() {
        assert_eq!(parse_key("id=cl9=x").unwrap(), ("id".into(), "cl9=x".into()));
        assert!(parse_key("=x").is_err() && parse_key("id").is_err());
        let erasure = Erasure {
            id: "e".into(),
            time: Utc::now(),
            table: table_name("User"),
            key: BTreeMap::from([("email".into(), "a@b".into()), ("id".into(), "7".into())]),
        };
        let (sql, values) = erasure.delete_statement();
        assert_eq!(
            sql,
            "DELETE FROM \"public\".\"User\" WHERE \"email\"::text = $1 AND \"id\"::text = $2"
        );
        assert_eq!(values, ["a@b", "7"]);
        assert_eq!(table_name("audit.Event"), QualifiedName::new("audit", "Event"));
    }
}
