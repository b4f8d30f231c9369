//! The repository's identity: a random id, created once, kept in the
//! store as `repository.json`, and part of the HKDF `info` of the keys that
//! authenticate metadata documents and erasure records. With one keyring
//! for two repositories (prod and staging, one prefix per app) a document or
//! record copied from one into the other then fails its MAC.
//!
//! Migration: a repository created before the id has documents sealed
//! without it. The identity is created by the first write that needs it
//! (a backup's metadata, an erasure) and lists, once, the backups whose
//! documents were there then (`legacyBackups`): only those may still carry
//! the old, unbound MAC. See `docs/SECURITY.md`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::metadata::rfc3339_millis;
use crate::storage::{BackupStore, StorageError, get_bytes};

/// Where the identity is kept in the store.
pub const REPOSITORY_IDENTITY_KEY: &str = "repository.json";
const MAX_IDENTITY_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{REPOSITORY_IDENTITY_KEY} is not a repository identity: it was altered; restore it from the bucket's versions"
    )]
    Malformed,
    #[error(
        "{REPOSITORY_IDENTITY_KEY} is missing, but backup {backup} was sealed for repository {repository}: it was deleted, and a new id would make every backup fail its MAC; restore it from the bucket's versions"
    )]
    Lost { backup: String, repository: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
}

/// `repository.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryIdentity {
    /// 32 hex digits, random.
    pub repository_id: String,
    #[serde(with = "rfc3339_millis")]
    pub created_at: DateTime<Utc>,
    /// Backups whose metadata was written before the id existed: the only
    /// ones whose documents may carry the unbound MAC.
    #[serde(default)]
    pub legacy_backups: Vec<String>,
}

impl RepositoryIdentity {
    pub fn is_legacy(&self, backup_id: &str) -> bool {
        self.legacy_backups.iter().any(|id| id == backup_id)
    }
}

/// The stored identity, `None` when there is none yet.
pub async fn read(store: &dyn BackupStore) -> Result<Option<RepositoryIdentity>, IdentityError> {
    match get_bytes(store, REPOSITORY_IDENTITY_KEY, MAX_IDENTITY_BYTES).await {
        Ok(bytes) => serde_json::from_slice::<RepositoryIdentity>(&bytes)
            .ok()
            .filter(|identity| {
                identity.repository_id.len() == 32
                    && identity.repository_id.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(Some)
            .ok_or(IdentityError::Malformed),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The stored identity, created when there is none: the backups already in
/// the store are listed as legacy. A store whose documents already name a
/// repository lost its identity: refused rather than replaced (a new id
/// would make every one of them fail its MAC).
pub async fn ensure(store: &dyn BackupStore) -> Result<RepositoryIdentity, IdentityError> {
    if let Some(identity) = read(store).await? {
        return Ok(identity);
    }
    let mut legacy_backups = Vec::new();
    for info in store.list("metadata/").await? {
        let Some(id) = info
            .key
            .strip_prefix("metadata/")
            .and_then(|name| name.strip_suffix(".json"))
        else {
            continue;
        };
        let bytes = get_bytes(store, &info.key, MAX_IDENTITY_BYTES).await?;
        let named = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|document| {
                document
                    .get("repositoryId")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            });
        if let Some(repository) = named {
            return Err(IdentityError::Lost {
                backup: id.to_owned(),
                repository,
            });
        }
        legacy_backups.push(id.to_owned());
    }
    legacy_backups.sort();
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(IdentityError::Randomness)?;
    let identity = RepositoryIdentity {
        repository_id: hex::encode(random),
        created_at: Utc::now(),
        legacy_backups,
    };
    let json = serde_json::to_vec_pretty(&identity).expect("identities serialize");
    // Create-only: when two first backups race, the one that loses takes the
    // winner's identity. An overwrite would leave the loser's metadata
    // sealed for an id no longer in the store: a backup failing its MAC.
    match store
        .put_if_absent(REPOSITORY_IDENTITY_KEY, Bytes::from(json))
        .await
    {
        Ok(_) => Ok(identity),
        Err(error) if error.is_already_exists() => {
            read(store).await?.ok_or_else(|| IdentityError::Storage(error))
        }
        Err(error) => Err(error.into()),
    }
}
