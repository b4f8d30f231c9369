//! The backup repository: backups as the storage holds them — metadata
//! documents, backup objects and verification records.

use std::str::FromStr;

use bytes::Bytes;

use crate::metadata::{BackupId, BackupMetadata, MetadataError, VerificationRecord, VerificationStatus};
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
    #[error("there are no backups yet{}", if *.verified_only { " that passed verification" } else { "" })]
    NoBackups { verified_only: bool },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(
        "metadata {key:?} describes backup {found}, not the backup its name says: it was moved or altered; do not trust it"
    )]
    MisplacedMetadata { key: String, found: String },
}

/// Which backup: a given id, or the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupSelector {
    Id(BackupId),
    Latest,
    LatestVerified,
}

impl FromStr for BackupSelector {
    type Err = MetadataError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "latest" => Ok(Self::Latest),
            "latest-verified" => Ok(Self::LatestVerified),
            id => id.parse().map(Self::Id),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackupRepository {
    store: SharedStore,
}

impl BackupRepository {
    pub fn new(store: SharedStore) -> Self {
        Self { store }
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
        backups.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then_with(|| b.id.cmp(&a.id)));
        Ok(backups)
    }

    /// The metadata of the selected backup (verification merged in).
    pub async fn resolve(&self, selector: &BackupSelector) -> Result<BackupMetadata, RepositoryError> {
        match selector {
            BackupSelector::Id(id) => {
                let mut metadata = match self.read_metadata(&id.metadata_key()).await {
                    Err(RepositoryError::Storage(e)) if e.is_not_found() => {
                        return Err(RepositoryError::UnknownBackup { id: id.to_string() });
                    }
                    other => other?,
                };
                metadata.verification = self.read_verification(id).await?;
                Ok(metadata)
            }
            BackupSelector::Latest | BackupSelector::LatestVerified => {
                let verified_only = *selector == BackupSelector::LatestVerified;
                self.list()
                    .await?
                    .into_iter()
                    .find(|m| {
                        !verified_only
                            || m.verification
                                .as_ref()
                                .is_some_and(|v| v.status == VerificationStatus::Passed)
                    })
                    .ok_or(RepositoryError::NoBackups { verified_only })
            }
        }
    }

    /// Reads a metadata document and checks it describes the backup its key
    /// names: a document copied over another's name is refused.
    async fn read_metadata(&self, key: &str) -> Result<BackupMetadata, RepositoryError> {
        let bytes = get_bytes(self.store.as_ref(), key, MAX_DOCUMENT_BYTES).await?;
        let metadata =
            BackupMetadata::from_json(&bytes).map_err(|source| RepositoryError::MalformedMetadata {
                key: key.to_owned(),
                source,
            })?;
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
    pub async fn save_metadata(&self, metadata: &BackupMetadata) -> Result<(), RepositoryError> {
        let mut document = metadata.clone();
        // The verification record lives beside the metadata, never inside it.
        document.verification = None;
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
