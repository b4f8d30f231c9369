//! Backup metadata: the JSON document stored beside each backup object.
//!
//! The first eight fields are exactly the ones our first user's tooling
//! already reads (`id`, `timestamp`, `version`, `tables`, `recordCount`,
//! `checksum`, `encrypted`, `compressed`); everything after them is ours.
//! A backup exists only once its metadata exists, so the metadata is
//! always written last.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::container::{Compression, ContainerSummary, SectionEntry, SectionKind};
use crate::envelope::MetadataKey;
use crate::keyring::{Keyring, KeyringError};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{0:?} is not a backup id; ids look like backup-1764122400000-1a2b3c4d")]
    MalformedBackupId(String),
    #[error(
        "{0:?} is not a backup id (like backup-1764122400000-1a2b3c4d, or its first 8+ hex digits after the last dash, 1a2b3c4d), latest, latest-verified, random or before:<RFC 3339 instant>"
    )]
    MalformedSelector(String),
    #[error("the metadata document is not valid backup metadata JSON")]
    Malformed(#[source] serde_json::Error),
    #[error(
        "{0:?} is not an instant: write before:2026-11-20T10:00:00Z (RFC 3339, with Z or an offset such as +01:00)"
    )]
    MalformedInstant(String),
    #[error("depth {0:?} is not one of quick, full, deep")]
    UnknownDepth(String),
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
}

/// `backup-{unix_ms}-{8 lowercase hex}`. Parsing validates it, so an id is
/// always safe to use in a storage key or a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId {
    unix_ms: u64,
    suffix: String,
}

impl BackupId {
    pub fn new(at: DateTime<Utc>) -> Result<Self, MetadataError> {
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(MetadataError::Randomness)?;
        Ok(Self {
            unix_ms: u64::try_from(at.timestamp_millis()).unwrap_or(0),
            suffix: hex::encode(random),
        })
    }

    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// When the backup started, from the id alone.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(i64::try_from(self.unix_ms).ok()?)
    }

    /// Storage key of the backup object: `backups/{id}.backup`.
    pub fn object_key(&self) -> String {
        format!("backups/{self}.backup")
    }

    /// Storage key of the metadata: `metadata/{id}.json`.
    pub fn metadata_key(&self) -> String {
        format!("metadata/{self}.json")
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backup-{}-{}", self.unix_ms, self.suffix)
    }
}

impl FromStr for BackupId {
    type Err = MetadataError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || MetadataError::MalformedBackupId(text.to_owned());
        let rest = text.strip_prefix("backup-").ok_or_else(malformed)?;
        let (millis, suffix) = rest.split_once('-').ok_or_else(malformed)?;
        // Canonical digits only (no leading zero): one id, one spelling, so
        // an id always names the same object and metadata keys.
        let valid_millis = !millis.is_empty()
            && millis.len() <= 16
            && millis.bytes().all(|b| b.is_ascii_digit())
            && (millis == "0" || !millis.starts_with('0'));
        let valid_suffix =
            suffix.len() == 8 && suffix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid_millis || !valid_suffix {
            return Err(malformed());
        }
        Ok(Self {
            unix_ms: millis.parse().map_err(|_| malformed())?,
            suffix: suffix.to_owned(),
        })
    }
}

impl Serialize for BackupId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    /// The hourly schedule (for the RPO): kept only
    /// `BACKUP_HOURLY_RETENTION_HOURS`, as the nightly ones cover the rest.
    Hourly,
    Manual,
    PreDeployment,
    Emergency,
    /// Taken by an in-place restore of the state it replaces: never chosen
    /// by `latest`, `before:` or `random` unless asked for.
    Safety,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Schedule => "schedule",
            Self::Hourly => "hourly",
            Self::Manual => "manual",
            Self::PreDeployment => "pre-deployment",
            Self::Emergency => "emergency",
            Self::Safety => "safety",
        })
    }
}

/// The database a backup was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceDatabase {
    pub database: String,
    pub server_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerificationDepth {
    Quick,
    Full,
    Deep,
}

impl FromStr for VerificationDepth {
    type Err = MetadataError;

    /// The names serde uses: `quick`, `full`, `deep`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "quick" => Ok(Self::Quick),
            "full" => Ok(Self::Full),
            "deep" => Ok(Self::Deep),
            _ => Err(MetadataError::UnknownDepth(text.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerificationStatus {
    Passed,
    Failed,
}

/// The outcome of the latest verification of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationRecord {
    pub status: VerificationStatus,
    pub depth: VerificationDepth,
    #[serde(with = "rfc3339_millis")]
    pub verified_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Deep verification only: how long the restore into scratch took (the measured RTO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A disaster-recovery drill's outcome (deep verification with checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<crate::drill::DrillReport>,
}

/// Who asked for a backup and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRequest {
    pub trigger: Trigger,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// The metadata JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupMetadata {
    pub id: BackupId,
    #[serde(with = "rfc3339_millis")]
    pub timestamp: DateTime<Utc>,
    /// Version of the software that wrote the backup.
    pub version: String,
    /// Table names: `Booking` for the `public` schema, `schema.Table` otherwise.
    pub tables: Vec<String>,
    /// Rows over all tables.
    pub record_count: u64,
    /// Lowercase hex SHA-256 of the stored backup object.
    pub checksum: String,
    pub encrypted: bool,
    pub compressed: bool,

    pub format_version: u16,
    pub size_bytes: u64,
    pub key_id: String,
    pub compression: Compression,
    pub chunk_size: u32,
    pub source: SourceDatabase,
    pub duration_ms: u64,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Every data section: schema first, then one per table, with row
    /// counts, byte ranges in the object and SHA-256 of the table data.
    pub sections: Vec<SectionEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationRecord>,
    /// Objects this backup does not hold, accepted when it was taken
    /// (`BACKUP_ALLOW_SCHEMA_LOSS`); a restore brings back everything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_schema_loss: Vec<crate::postgres::fidelity::Uncaptured>,
    /// Where replay of captured changes starts for this backup (`restore
    /// --at`); absent when the database had no change-capture slot, and on
    /// backups taken before point-in-time recovery existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_stream: Option<crate::changes::StreamPosition>,
    /// HMAC-SHA256 (hex) of the canonical document under a key derived from
    /// the backup's master key ([`crate::envelope::MetadataKey`]); see
    /// `docs/FORMAT.md`. Absent on documents written before version 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_mac: Option<String>,
    /// The repository this document was sealed for (`repository.json`); its
    /// MAC key is bound to it. Absent on documents written before the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// What reading the stored document found about its MAC. Never stored;
    /// shown by `list` and `verify`.
    #[serde(
        default,
        skip_deserializing,
        skip_serializing_if = "MetadataIntegrity::is_unchecked"
    )]
    pub metadata_integrity: MetadataIntegrity,
}

/// Whether a stored metadata document is the one our key sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataIntegrity {
    /// Not checked: no keyring is configured.
    #[default]
    Unchecked,
    /// A keyring is configured but the document names a key it does not
    /// hold: either that key was dropped from the keyring (restore then
    /// says so once it has read the object's header), or someone without
    /// the key named another one to escape the MAC. Never treated as
    /// authentic: `latest`, `before:` and `random` pass it over, and
    /// restore refuses it unless the object's own header names the same
    /// key (then the key is missing, a configuration problem).
    #[serde(rename = "unknown-key")]
    UnknownKey,
    /// The document's `timestamp` is not the time its id was taken at: it
    /// was moved (to reorder `latest`, `before:` or retention). Refused.
    Misdated,
    /// The MAC matches: nobody without the master key changed a field.
    Authentic,
    /// No MAC: written before metadata MACs existed (or the MAC was removed).
    Unsigned,
    /// The MAC does not match: the document was altered. Restore refuses it.
    Failed,
}

impl MetadataIntegrity {
    pub fn is_unchecked(&self) -> bool {
        *self == Self::Unchecked
    }

    /// Why a selector (`latest`, `before:`, `random`) must not pick a
    /// document so judged, in words; `None` if it may.
    pub fn passed_over_because(&self) -> Option<&'static str> {
        match self {
            Self::UnknownKey => Some("its metadata names a key that is not in the keyring"),
            Self::Misdated => Some("its metadata timestamp differs from the time in its id"),
            Self::Unchecked | Self::Authentic | Self::Unsigned | Self::Failed => None,
        }
    }
}

/// Fields a metadata MAC does not cover: the MAC itself and what is merged
/// in on reading.
const UNSEALED_FIELDS: [&str; 3] = ["metadataMac", "verification", "metadataIntegrity"];

/// The bytes a metadata MAC covers: the document without
/// [`UNSEALED_FIELDS`], object keys sorted at every level, no whitespace
/// (serde_json's escaping, which Python's `json.dumps(doc, sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False)` reproduces).
pub fn canonical_document(document: &serde_json::Value) -> Vec<u8> {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let ordered: std::collections::BTreeMap<&String, serde_json::Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut document = sorted(document);
    if let Some(map) = document.as_object_mut() {
        for field in UNSEALED_FIELDS {
            map.remove(field);
        }
    }
    serde_json::to_vec(&document).expect("a JSON value serializes")
}

impl BackupMetadata {
    /// Describes a finished container.
    pub fn describe(
        id: BackupId,
        started_at: DateTime<Utc>,
        summary: &ContainerSummary,
        source: SourceDatabase,
        duration_ms: u64,
        request: BackupRequest,
    ) -> Self {
        let tables = summary
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::Table)
            .filter(|s| s.part == 0)
            .map(|s| listed_table_name(s.schema.as_deref(), &s.name))
            .collect();
        let record_count = summary
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::Table)
            .map(|s| s.rows)
            .sum();
        Self {
            id,
            timestamp: started_at,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tables,
            record_count,
            checksum: summary.sha256.clone(),
            encrypted: true,
            compressed: summary.compression.is_compressed(),
            format_version: summary.format_version,
            size_bytes: summary.size_bytes,
            key_id: summary.key_id.clone(),
            compression: summary.compression,
            chunk_size: summary.chunk_size,
            source,
            duration_ms,
            trigger: request.trigger,
            reason: request.reason,
            requested_by: request.requested_by,
            sections: summary.sections.clone(),
            verification: None,
            accepted_schema_loss: Vec::new(),
            change_stream: None,
            metadata_mac: None,
            repository_id: None,
            metadata_integrity: MetadataIntegrity::Unchecked,
        }
    }

    /// Seals the document with the MAC of its backup's master key, bound to
    /// the repository (HKDF `info` = [`BOUND_METADATA_MAC_INFO`] + its id).
    pub fn seal(&mut self, keyring: &Keyring, repository_id: &str) -> Result<(), KeyringError> {
        let master = keyring.get(self.key_id.as_str())?;
        self.metadata_mac = None;
        self.repository_id = Some(repository_id.to_owned());
        let value = serde_json::to_value(&*self).expect("metadata always serializes");
        let tag = bound_metadata_key(master, repository_id).tag(&canonical_document(&value));
        self.metadata_mac = Some(hex::encode(tag));
        Ok(())
    }

    /// Checks a stored document's MAC against the keyring, from the stored
    /// bytes (so fields this version does not know are covered too).
    ///
    /// `identity` is the repository's (`repository.json`): a document naming
    /// another repository fails, and one without a repository id (sealed
    /// before there was one) is checked under the old, unbound key only if
    /// the identity lists its backup as legacy (or there is no identity yet).
    pub fn check_integrity(
        stored: &[u8],
        keyring: Option<&Keyring>,
        identity: Option<&crate::identity::RepositoryIdentity>,
    ) -> MetadataIntegrity {
        let Ok(document) = serde_json::from_slice::<serde_json::Value>(stored) else {
            return MetadataIntegrity::Failed;
        };
        let Some(mac) = document.get("metadataMac") else {
            return MetadataIntegrity::Unsigned;
        };
        let Some(keyring) = keyring else {
            return MetadataIntegrity::Unchecked;
        };
        // With a keyring, a key it does not hold is not a reason to skip the
        // check: it is a finding of its own.
        let key_id = document.get("keyId").and_then(serde_json::Value::as_str);
        let Some(master) = key_id.and_then(|id| keyring.get(id).ok()) else {
            return MetadataIntegrity::UnknownKey;
        };
        let tag = mac.as_str().and_then(|text| hex::decode(text).ok());
        let key = match (document.get("repositoryId"), identity) {
            (Some(named), Some(identity)) if named.as_str() == Some(identity.repository_id.as_str()) => {
                bound_metadata_key(master, &identity.repository_id)
            }
            // Another repository's, or bound while this store has no identity.
            (Some(_), _) => return MetadataIntegrity::Failed,
            (None, None) => MetadataKey::derive(master),
            (None, Some(identity)) => {
                let id = document
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                if !identity.is_legacy(id) {
                    return MetadataIntegrity::Failed;
                }
                MetadataKey::derive(master)
            }
        };
        match tag.map(|tag| key.verify(&canonical_document(&document), &tag)) {
            Some(Ok(())) => MetadataIntegrity::Authentic,
            _ => MetadataIntegrity::Failed,
        }
    }

    /// When the backup was taken, from its id (which names the object and
    /// the document, so it cannot be moved without breaking both); the
    /// document's `timestamp` only if the id's time is out of range.
    pub fn taken_at(&self) -> DateTime<Utc> {
        self.id.started_at().unwrap_or(self.timestamp)
    }

    /// Whether `timestamp` is the instant the id was taken at (to the
    /// millisecond, as both are written): `latest`, `before:` and retention
    /// order backups by time, so a moved timestamp is a tampered document.
    pub fn timestamp_matches_id(&self) -> bool {
        u64::try_from(self.timestamp.timestamp_millis()).is_ok_and(|ms| ms == self.id.unix_ms())
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("metadata always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, MetadataError> {
        serde_json::from_slice(bytes).map_err(MetadataError::Malformed)
    }

    /// Table sections only (a table exported in parts has several).
    pub fn table_sections(&self) -> impl Iterator<Item = &SectionEntry> {
        self.sections.iter().filter(|s| s.kind == SectionKind::Table)
    }

    /// Each table's rows (`schema.name`), its parts summed, in the order the
    /// tables' first parts were written.
    pub fn table_rows(&self) -> Vec<(String, u64)> {
        let mut tables: Vec<(String, u64)> = Vec::new();
        for section in self.table_sections() {
            let name = section.display_name();
            match tables.iter_mut().find(|(known, _)| *known == name) {
                Some((_, rows)) => *rows += section.rows,
                None => tables.push((name, section.rows)),
            }
        }
        tables
    }
}

/// HKDF `info` prefix of the metadata MAC key bound to a repository; the
/// repository id follows. Documents written before it use
/// [`crate::envelope::METADATA_MAC_INFO`].
pub const BOUND_METADATA_MAC_INFO: &[u8] = b"pgbackup/v2 metadata mac ";

fn bound_metadata_key(master: &crate::keyring::MasterKey, repository_id: &str) -> MetadataKey {
    let mut info = BOUND_METADATA_MAC_INFO.to_vec();
    info.extend_from_slice(repository_id.as_bytes());
    MetadataKey::derive_for(master, &info)
}

/// A table as the metadata's `tables` list names it: `public` tables bare.
pub fn listed_table_name(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some("public") | None => name.to_owned(),
        Some(schema) => format!("{schema}.{name}"),
    }
}

/// RFC 3339 in UTC with milliseconds, as JavaScript's `toISOString()` writes.
pub mod rfc3339_millis {
    use super::*;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}
