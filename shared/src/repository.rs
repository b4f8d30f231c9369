//! The backup repository: backups as the storage holds them — metadata
//! documents, backup objects and verification records.

use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::identity::RepositoryIdentity;
use crate::keyring::{Keyring, KeyringError};
use crate::metadata::{
    BackupId, BackupMetadata, MetadataError, MetadataIntegrity, Trigger, VerificationRecord,
    VerificationStatus,
};
use crate::storage::{ObjectInfo, SharedStore, StorageError, get_bytes};

/// Metadata and verification documents are small; larger ones are not ours.
const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("metadata {key:?} is unreadable")]
    MalformedMetadata {
        key: String,
        #[source]
        source: MetadataError,
    },
    #[error("no backup {id} (no metadata for it); run `backupctl list` to see the backups")]
    UnknownBackup { id: String },
    #[error("{prefix:?} starts the id of {count} backups ({matches}); give more of the id")]
    AmbiguousPrefix {
        prefix: String,
        count: usize,
        matches: String,
    },
    #[error("there are no backups yet{}", if *.verified_only { " that passed verification" } else { "" })]
    NoBackups { verified_only: bool },
    #[error(
        "no backup was taken before {}: the oldest kept backup is newer; run `backupctl list` to see them",
        .instant.to_rfc3339_opts(SecondsFormat::Secs, true)
    )]
    NoBackupBefore { instant: DateTime<Utc> },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(
        "metadata {key:?} describes backup {found}, not the backup its name says: it was moved or altered; do not trust it"
    )]
    MisplacedMetadata { key: String, found: String },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// Which backup: a given id, the newest, the newest before an instant, or
/// one drawn at random (restore tests of older backups, older keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupSelector {
    Id(BackupId),
    /// The start of one backup's id: `backup-17965253…`, or 8 or more hex
    /// digits of the id's random part (`c420b102`), as `list` shows it.
    Prefix(String),
    Latest,
    LatestVerified,
    /// `before:2026-11-20T10:00:00Z`: the newest backup taken before that
    /// instant, a verified one preferred.
    Before(DateTime<Utc>),
    /// `random`: any published backup, each equally likely.
    Random,
    /// The inner selector with safety backups (taken by in-place restores
    /// of the state they replaced) among the candidates.
    IncludingSafety(Box<BackupSelector>),
}

/// Shortest random-part prefix accepted: 8 hex digits (4 billion values)
/// keep a typo from landing on another backup.
const MIN_PREFIX_HEX: usize = 8;

fn is_id_prefix(text: &str) -> bool {
    match text.strip_prefix("backup-") {
        Some(rest) => {
            rest.len() >= MIN_PREFIX_HEX
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || matches!(b, b'a'..=b'f'))
        }
        None => text.len() >= MIN_PREFIX_HEX && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
    }
}

impl BackupSelector {
    /// The same choice, with safety backups among the candidates.
    pub fn including_safety(self) -> Self {
        match self {
            Self::IncludingSafety(_) => self,
            other => Self::IncludingSafety(Box::new(other)),
        }
    }
}

impl FromStr for BackupSelector {
    type Err = MetadataError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "latest" => Ok(Self::Latest),
            "latest-verified" => Ok(Self::LatestVerified),
            "random" => Ok(Self::Random),
            _ => {
                if let Some(instant) = text.strip_prefix("before:") {
                    return DateTime::parse_from_rfc3339(instant.trim())
                        .map(|at| Self::Before(at.with_timezone(&Utc)))
                        .map_err(|_| MetadataError::MalformedInstant(instant.to_owned()));
                }
                match text.parse() {
                    Ok(id) => Ok(Self::Id(id)),
                    Err(_) if is_id_prefix(text) => Ok(Self::Prefix(text.to_owned())),
                    Err(_) => Err(MetadataError::MalformedSelector(text.to_owned())),
                }
            }
        }
    }
}

impl std::fmt::Display for BackupSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Latest => f.write_str("latest"),
            Self::LatestVerified => f.write_str("latest-verified"),
            Self::Before(at) => write!(f, "before:{}", at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            Self::Random => f.write_str("random"),
            Self::Prefix(prefix) => f.write_str(prefix),
            Self::IncludingSafety(inner) => write!(f, "{inner} (safety backups included)"),
        }
    }
}

/// The backup a selector chose, and in words why, when the choice was not
/// simply the id given (shown to the operator and kept in the audit trail).
#[derive(Debug, Clone)]
pub struct Selection {
    pub metadata: BackupMetadata,
    pub explanation: Option<String>,
}

fn passed_verification(metadata: &BackupMetadata) -> bool {
    metadata
        .verification
        .as_ref()
        .is_some_and(|v| v.status == VerificationStatus::Passed)
}

fn failed_verification(metadata: &BackupMetadata) -> bool {
    metadata
        .verification
        .as_ref()
        .is_some_and(|v| v.status == VerificationStatus::Failed)
}

/// "3 h 20 min", "2 d 4 h": how far apart two instants are, for people.
pub fn human_age(age: chrono::Duration) -> String {
    let minutes = age.num_minutes().max(0);
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes} min"),
        (0, _) => format!("{hours} h {minutes} min"),
        _ => format!("{days} d {hours} h"),
    }
}

/// Picks among `backups` (newest first) the one taken before `instant`:
/// the newest that passed verification, else the newest that did not fail
/// it. A backup that failed verification is never chosen.
fn choose_before(backups: Vec<BackupMetadata>, instant: DateTime<Utc>) -> Result<Selection, RepositoryError> {
    let candidates: Vec<BackupMetadata> = backups
        .into_iter()
        .filter(|m| m.timestamp < instant && !failed_verification(m))
        .collect();
    let newest = candidates
        .first()
        .cloned()
        .ok_or(RepositoryError::NoBackupBefore { instant })?;
    let chosen = candidates
        .iter()
        .find(|m| passed_verification(m))
        .cloned()
        .unwrap_or_else(|| newest.clone());
    let at = instant.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut explanation = format!(
        "chose {} taken {} ({} before {at}), {}",
        chosen.id,
        chosen.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true),
        human_age(instant - chosen.timestamp),
        if passed_verification(&chosen) {
            "verified"
        } else {
            "not yet verified (no verified backup was taken before that instant)"
        }
    );
    if chosen.id != newest.id {
        explanation.push_str(&format!(
            "; the newer but unverified {} (taken {}) was passed over: give its id to restore it instead",
            newest.id,
            newest.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
    }
    Ok(Selection {
        metadata: chosen,
        explanation: Some(explanation),
    })
}

/// Splits `backups` into those a selector may choose and those it must
/// pass over (metadata naming a key not in the keyring, or a moved
/// timestamp), with the reason for each.
fn trusted(backups: Vec<BackupMetadata>) -> (Vec<BackupMetadata>, Vec<PassedOver>) {
    let mut passed = Vec::new();
    let kept = backups
        .into_iter()
        .filter(|m| match m.metadata_integrity.passed_over_because() {
            Some(reason) => {
                tracing::warn!(backup_id = %m.id, "passed over: {reason}");
                passed.push(PassedOver {
                    id: m.id.clone(),
                    claimed: m.timestamp,
                    reason,
                });
                false
            }
            None => true,
        })
        .collect();
    (kept, passed)
}

/// A backup a selector did not consider, and why.
#[derive(Debug, Clone)]
struct PassedOver {
    id: BackupId,
    /// The time its document claims (possibly moved).
    claimed: DateTime<Utc>,
    reason: &'static str,
}

impl PassedOver {
    /// Taken, or claiming to be taken, before `instant`.
    fn before(&self, instant: DateTime<Utc>) -> bool {
        self.claimed < instant || self.id.started_at().is_some_and(|at| at < instant)
    }
}

/// "b1 (reason); b2 (reason)", the first five.
fn describe_passed(passed: &[PassedOver]) -> String {
    let mut text = passed
        .iter()
        .take(5)
        .map(|p| format!("{} ({})", p.id, p.reason))
        .collect::<Vec<_>>()
        .join("; ");
    if passed.len() > 5 {
        text.push_str(&format!("; and {} more", passed.len() - 5));
    }
    text
}

/// The words for backups newer than `chosen` (or claiming to be) that
/// were passed over, if any.
fn passed_over_note(passed: &[PassedOver], chosen: &BackupMetadata) -> Option<String> {
    let newer: Vec<PassedOver> = passed
        .iter()
        .filter(|p| p.id > chosen.id || p.claimed > chosen.timestamp)
        .cloned()
        .collect();
    (!newer.is_empty()).then(|| {
        format!(
            "; passed over the newer {}: not trusted (restoring it by its id says why)",
            describe_passed(&newer)
        )
    })
}

#[derive(Clone)]
pub struct BackupRepository {
    store: SharedStore,
    /// Seals metadata on writing and checks it on reading; without it,
    /// documents are written unsealed and read as `unchecked`.
    keyring: Option<Keyring>,
    /// `repository.json` once read (shared by the clones: it never changes).
    identity: std::sync::Arc<std::sync::Mutex<Option<RepositoryIdentity>>>,
}

impl std::fmt::Debug for BackupRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupRepository")
            .field("store", &self.store)
            .field("keyring", &self.keyring.as_ref().map(|_| "<configured>"))
            .finish()
    }
}

impl BackupRepository {
    pub fn new(store: SharedStore) -> Self {
        Self {
            store,
            keyring: None,
            identity: std::sync::Arc::default(),
        }
    }

    pub fn with_keyring(mut self, keyring: Option<Keyring>) -> Self {
        self.keyring = keyring;
        self
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn verification_key(id: &BackupId) -> String {
        format!("verification/{id}.json")
    }

    /// Every backup whose metadata exists, newest first, each with its
    /// latest verification record merged in.
    pub async fn list(&self) -> Result<Vec<BackupMetadata>, RepositoryError> {
        let verifications: Vec<ObjectInfo> = self.store.list("verification/").await?;
        let mut backups = Vec::new();
        for info in self.store.list("metadata/").await? {
            let Some(id) = id_from_key(&info.key, "metadata/") else {
                continue;
            };
            let mut metadata = self.read_metadata(&info.key).await?;
            let verification_key = Self::verification_key(&id);
            if verifications.iter().any(|v| v.key == verification_key) {
                metadata.verification = self.read_verification(&id).await?;
            }
            backups.push(metadata);
        }
        // By the time in the id (then its random part), never by the
        // document's `timestamp`, which a bucket writer could move.
        backups.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(backups)
    }

    /// The newest `count` backups, newest first, reading only their
    /// metadata (no verification records): one listing and `count` reads,
    /// however many backups the store holds.
    pub async fn newest(&self, count: usize) -> Result<Vec<BackupMetadata>, RepositoryError> {
        let mut ids: Vec<BackupId> = self.published_ids().await?;
        ids.sort_by(|a, b| b.unix_ms().cmp(&a.unix_ms()).then_with(|| b.cmp(a)));
        let mut backups = Vec::new();
        for id in ids.into_iter().take(count) {
            backups.push(self.read_metadata(&id.metadata_key()).await?);
        }
        Ok(backups)
    }

    /// The metadata of the selected backup (verification merged in).
    pub async fn resolve(&self, selector: &BackupSelector) -> Result<BackupMetadata, RepositoryError> {
        Ok(self.select(selector).await?.metadata)
    }

    /// The selected backup and, for `before:` and `random`, why it was
    /// chosen (also logged).
    pub async fn select(&self, selector: &BackupSelector) -> Result<Selection, RepositoryError> {
        let selection = self.choose(selector).await?;
        if let Some(explanation) = &selection.explanation {
            tracing::info!(%selector, "{explanation}");
        }
        Ok(selection)
    }

    async fn choose(&self, selector: &BackupSelector) -> Result<Selection, RepositoryError> {
        match selector {
            BackupSelector::IncludingSafety(inner) => self.choose_among(inner, true).await,
            other => self.choose_among(other, false).await,
        }
    }

    /// Every backup, newest first, without safety backups unless asked.
    async fn candidates(&self, include_safety: bool) -> Result<Vec<BackupMetadata>, RepositoryError> {
        let mut backups = self.list().await?;
        if !include_safety {
            backups.retain(|m| m.trigger != Trigger::Safety);
        }
        Ok(backups)
    }

    async fn choose_among(
        &self,
        selector: &BackupSelector,
        include_safety: bool,
    ) -> Result<Selection, RepositoryError> {
        let plain = |metadata| Selection {
            metadata,
            explanation: None,
        };
        match selector {
            BackupSelector::IncludingSafety(inner) => Box::pin(self.choose_among(inner, true)).await,
            BackupSelector::Prefix(prefix) => {
                // An id, even in part, is an explicit ask: safety backups count.
                let mut matching: Vec<BackupMetadata> = self
                    .list()
                    .await?
                    .into_iter()
                    .filter(|m| {
                        let id = m.id.to_string();
                        id.starts_with(prefix.as_str())
                            || id
                                .rsplit('-')
                                .next()
                                .is_some_and(|random| random.starts_with(prefix.as_str()))
                    })
                    .collect();
                match matching.len() {
                    0 => Err(RepositoryError::UnknownBackup { id: prefix.clone() }),
                    1 => Ok(plain(matching.remove(0))),
                    count => Err(RepositoryError::AmbiguousPrefix {
                        prefix: prefix.clone(),
                        count,
                        matches: matching
                            .iter()
                            .take(5)
                            .map(|m| m.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
            BackupSelector::Id(id) => {
                let mut metadata = match self.read_metadata(&id.metadata_key()).await {
                    Err(RepositoryError::Storage(e)) if e.is_not_found() => {
                        return Err(RepositoryError::UnknownBackup { id: id.to_string() });
                    }
                    other => other?,
                };
                metadata.verification = self.read_verification(id).await?;
                Ok(plain(metadata))
            }
            BackupSelector::Latest | BackupSelector::LatestVerified => {
                let verified_only = *selector == BackupSelector::LatestVerified;
                let (backups, passed) = trusted(self.candidates(include_safety).await?);
                let chosen = backups
                    .into_iter()
                    .find(|m| !verified_only || passed_verification(m))
                    .ok_or(RepositoryError::NoBackups { verified_only })?;
                let explanation = passed_over_note(&passed, &chosen).map(|note| {
                    format!(
                        "chose {} taken {}, the newest{} backup whose metadata can be trusted{note}",
                        chosen.id,
                        chosen.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true),
                        if verified_only { " verified" } else { "" },
                    )
                });
                Ok(Selection {
                    metadata: chosen,
                    explanation,
                })
            }
            BackupSelector::Before(instant) => {
                let (backups, passed) = trusted(self.candidates(include_safety).await?);
                let passed: Vec<_> = passed.into_iter().filter(|p| p.before(*instant)).collect();
                let mut selection = choose_before(backups, *instant)?;
                if let (Some(explanation), Some(note)) = (
                    selection.explanation.as_mut(),
                    passed_over_note(&passed, &selection.metadata),
                ) {
                    explanation.push_str(&note);
                }
                Ok(selection)
            }
            BackupSelector::Random => {
                let (mut backups, passed) = trusted(self.candidates(include_safety).await?);
                if backups.is_empty() {
                    return Err(RepositoryError::NoBackups { verified_only: false });
                }
                let mut draw = [0u8; 8];
                getrandom::fill(&mut draw).map_err(MetadataError::Randomness)?;
                let count = backups.len();
                let index = usize::try_from(u64::from_le_bytes(draw) % count as u64).unwrap_or(0);
                let chosen = backups.swap_remove(index);
                let explanation = format!(
                    "drew {} at random from {count} backups (taken {}, {} ago, key {})",
                    chosen.id,
                    chosen.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true),
                    human_age(Utc::now() - chosen.timestamp),
                    chosen.key_id
                );
                let mut explanation = explanation;
                if !passed.is_empty() {
                    explanation.push_str(&format!(
                        "; {} backups were not in the draw: {}",
                        passed.len(),
                        describe_passed(&passed)
                    ));
                }
                Ok(Selection {
                    metadata: chosen,
                    explanation: Some(explanation),
                })
            }
        }
    }

    /// `repository.json`, read once and kept (it never changes once made).
    async fn identity(&self) -> Result<Option<RepositoryIdentity>, RepositoryError> {
        if let Some(identity) = self.identity.lock().ok().and_then(|known| known.clone()) {
            return Ok(Some(identity));
        }
        let identity = crate::identity::read(self.store.as_ref()).await?;
        if let (Some(found), Ok(mut known)) = (&identity, self.identity.lock()) {
            *known = Some(found.clone());
        }
        Ok(identity)
    }

    /// The identity, created by the first backup of a repository (listing
    /// the backups already there as legacy).
    async fn ensure_identity(&self) -> Result<RepositoryIdentity, RepositoryError> {
        if let Some(identity) = self.identity().await? {
            return Ok(identity);
        }
        let identity = crate::identity::ensure(self.store.as_ref()).await?;
        if let Ok(mut known) = self.identity.lock() {
            *known = Some(identity.clone());
        }
        Ok(identity)
    }

    /// Reads a metadata document and checks it describes the backup its key
    /// names: a document copied over another's name is refused.
    async fn read_metadata(&self, key: &str) -> Result<BackupMetadata, RepositoryError> {
        let bytes = get_bytes(self.store.as_ref(), key, MAX_DOCUMENT_BYTES).await?;
        let mut metadata =
            BackupMetadata::from_json(&bytes).map_err(|source| RepositoryError::MalformedMetadata {
                key: key.to_owned(),
                source,
            })?;
        let identity = match &self.keyring {
            // Without a key nothing is checked (prune), so the identity is
            // not read either (prune may not read it).
            Some(_) => self.identity().await?,
            None => None,
        };
        metadata.metadata_integrity =
            BackupMetadata::check_integrity(&bytes, self.keyring.as_ref(), identity.as_ref());
        // Only `verification/<id>.json` says how a backup verified: an
        // object embedded in the stored document is nobody's word (the MAC
        // does not cover it).
        metadata.verification = None;
        if metadata.metadata_integrity != MetadataIntegrity::Failed && !metadata.timestamp_matches_id() {
            tracing::error!(
                key,
                "metadata timestamp differs from the time in the backup id: it was altered"
            );
            metadata.metadata_integrity = MetadataIntegrity::Misdated;
        }
        if metadata.metadata_integrity == MetadataIntegrity::Failed {
            tracing::error!(
                key,
                "metadata document fails its MAC: it was altered after it was written"
            );
        }
        if metadata.id.metadata_key() != key {
            return Err(RepositoryError::MisplacedMetadata {
                key: key.to_owned(),
                found: metadata.id.to_string(),
            });
        }
        Ok(metadata)
    }

    async fn read_verification(&self, id: &BackupId) -> Result<Option<VerificationRecord>, RepositoryError> {
        let key = Self::verification_key(id);
        match get_bytes(self.store.as_ref(), &key, MAX_DOCUMENT_BYTES).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes a backup: written last, after the object is complete.
    /// Sealed with the MAC of the backup's master key.
    pub async fn save_metadata(&self, metadata: &BackupMetadata) -> Result<(), RepositoryError> {
        let mut document = metadata.clone();
        // The verification record lives beside the metadata, never inside it.
        document.verification = None;
        document.metadata_integrity = MetadataIntegrity::Unchecked;
        if let Some(keyring) = &self.keyring {
            let identity = self.ensure_identity().await?;
            document.seal(keyring, &identity.repository_id)?;
        }
        self.store
            .put(
                &metadata.id.metadata_key(),
                Bytes::from(document.to_json_pretty()),
            )
            .await?;
        Ok(())
    }

    pub async fn save_verification(
        &self,
        id: &BackupId,
        record: &VerificationRecord,
    ) -> Result<(), RepositoryError> {
        let json = serde_json::to_vec_pretty(record).expect("verification records serialize");
        self.store
            .put(&Self::verification_key(id), Bytes::from(json))
            .await?;
        Ok(())
    }

    /// Deletes a backup: metadata first (so it stops existing at once), then
    /// the object, then its verification record.
    pub async fn delete_backup(&self, id: &BackupId) -> Result<(), RepositoryError> {
        self.store.delete(&id.metadata_key()).await?;
        self.store.delete(&id.object_key()).await?;
        self.store.delete(&Self::verification_key(id)).await?;
        Ok(())
    }

    /// Backup objects with no metadata: left by runs that crashed before
    /// publishing. Returned with their storage info.
    pub async fn unpublished_objects(&self) -> Result<Vec<(BackupId, ObjectInfo)>, RepositoryError> {
        let metadata = self.published_ids().await?;
        Ok(self
            .store
            .list("backups/")
            .await?
            .into_iter()
            .filter_map(|info| id_from_key(&info.key, "backups/").map(|id| (id, info)))
            .filter(|(id, _)| !metadata.contains(id))
            .collect())
    }

    /// Verification records whose backup is gone.
    pub async fn stray_verification_records(&self) -> Result<Vec<String>, RepositoryError> {
        let metadata = self.published_ids().await?;
        Ok(self
            .store
            .list("verification/")
            .await?
            .into_iter()
            .filter(|info| id_from_key(&info.key, "verification/").is_some_and(|id| !metadata.contains(&id)))
            .map(|info| info.key)
            .collect())
    }
}

impl BackupRepository {
    /// Ids of the backups whose metadata exists.
    async fn published_ids(&self) -> Result<Vec<BackupId>, RepositoryError> {
        Ok(self
            .store
            .list("metadata/")
            .await?
            .iter()
            .filter_map(|info| id_from_key(&info.key, "metadata/"))
            .collect())
    }
}

/// `metadata/backup-1-00000000.json` → the id; anything else → `None`.
fn id_from_key(key: &str, prefix: &str) -> Option<BackupId> {
    let name = key.strip_prefix(prefix)?;
    let stem = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(".backup"))?;
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::metadata::{VerificationDepth, VerificationRecord};

    fn backup(at: &str, verification: Option<VerificationStatus>) -> BackupMetadata {
        let timestamp = DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc);
        let id: BackupId = format!("backup-{}-0000000a", timestamp.timestamp_millis())
            .parse()
            .unwrap();
        let json = serde_json::json!({
            "id": id, "timestamp": at, "version": "0", "tables": [], "recordCount": 0, "checksum": "",
            "encrypted": true, "compressed": true, "formatVersion": 1, "sizeBytes": 0, "keyId": "k",
            "compression": {"algorithm": "zstd", "level": 3}, "chunkSize": 1, "source": {"database": "d", "serverVersion": "15"},
            "durationMs": 0, "trigger": "schedule", "sections": []
        });
        let mut metadata: BackupMetadata = serde_json::from_value(json).unwrap();
        metadata.verification = verification.map(|status| VerificationRecord {
            status,
            depth: VerificationDepth::Full,
            verified_at: timestamp,
            duration_ms: 1,
            restore_duration_ms: None,
            error: None,
            drill: None,
        });
        metadata
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_moved_timestamp_neither_reorders_backups_nor_keeps_one_past_retention() {
        // Given last month's backup whose document claims it was taken today
        let mut old = backup("2026-10-20T10:00:00Z", None);
        old.timestamp = at("2026-11-20T13:00:00Z");
        let new = backup("2026-11-20T12:00:00Z", None);
        // Then it is misdated, and retention and ordering use the id's time
        assert!(!old.timestamp_matches_id() && new.timestamp_matches_id());
        let facts = crate::retention::BackupFacts::from(&old);
        assert_eq!(facts.taken_at, at("2026-10-20T10:00:00Z"));
        let plan = crate::retention::plan_prune(
            &[crate::retention::BackupFacts::from(&new), facts],
            crate::retention::RetentionPolicy {
                retention_days: 7,
                keep_newest: 1,
                ..Default::default()
            },
            at("2026-11-20T14:00:00Z"),
        );
        assert_eq!(plan.delete.len(), 1, "{plan:?}");
        assert_eq!(plan.delete[0].backup_id, old.id);
    }

    #[test]
    fn the_newest_backup_before_an_instant_is_chosen_verified_first_failed_never() {
        // Given hourly backups, newest first: 12:00 failed, 11:00 unverified, 10:00 passed
        let backups = vec![
            backup("2026-11-20T12:00:00Z", Some(VerificationStatus::Failed)),
            backup("2026-11-20T11:00:00Z", None),
            backup("2026-11-20T10:00:00Z", Some(VerificationStatus::Passed)),
            backup("2026-11-20T09:00:00Z", None),
        ];
        // Before 12:30 the verified 10:00 wins over the unverified 11:00, which is named
        let chosen = choose_before(backups.clone(), at("2026-11-20T12:30:00Z")).unwrap();
        assert_eq!(chosen.metadata.timestamp, at("2026-11-20T10:00:00Z"));
        let said = chosen.explanation.unwrap();
        assert!(said.contains("2 h 30 min before 2026-11-20T12:30:00Z"), "{said}");
        assert!(
            said.contains("newer but unverified backup-1795172400000-0000000a"),
            "{said}"
        );
        // Before 10:00 (exclusive) only the unverified 09:00 is left, and it says so
        let chosen = choose_before(backups.clone(), at("2026-11-20T10:00:00Z")).unwrap();
        assert_eq!(chosen.metadata.timestamp, at("2026-11-20T09:00:00Z"));
        assert!(chosen.explanation.unwrap().contains("not yet verified"));
        // Before 09:00 there is nothing
        assert!(matches!(
            choose_before(backups, at("2026-11-20T09:00:00Z")),
            Err(RepositoryError::NoBackupBefore { .. })
        ));
        assert_eq!(human_age(chrono::Duration::minutes(3 * 1440 + 125)), "3 d 2 h");
    }
}
