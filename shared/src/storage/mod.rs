//! Where backups live: one small object-store interface, several backends.
//!
//! Keys are `/`-separated: `backups/{id}.backup`, `metadata/{id}.json`,
//! `verification/{id}.json`, `audit/…`. Every backend implements the same
//! [`BackupStore`] trait and passes the same conformance suite.

pub mod azure;
pub mod local;
pub mod located;
pub(crate) mod multipart;
pub mod s3;

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::container::ObjectSource;

pub use azure::{AzureSettings, AzureStore};
pub use local::LocalStore;
pub use multipart::MultipartSettings;
pub use s3::{S3Settings, S3Store, S3WriteOptions};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{key} does not exist")]
    NotFound { key: String },
    /// A create-only write ([`BackupStore::put_if_absent`]) found the key
    /// taken: another writer got there first.
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("storage refused to delete {key}: it is locked (Object Lock retention or legal hold)")]
    Locked { key: String },
    #[error("storage key {key} is not valid")]
    InvalidKey { key: String },
    #[error("storage {operation} of {key} failed")]
    Io {
        operation: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("storage {operation} of {key} failed")]
    Backend {
        operation: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("storage backend {0:?} is not available in this build")]
    Unavailable(String),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
    }
}

/// What a listing or `head` tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

pub type ObjectReader = Box<dyn AsyncRead + Unpin + Send>;

/// A streaming upload: write to it, then [`ObjectUpload::complete`] to make
/// the object appear under its key, or [`ObjectUpload::abort`] to leave
/// nothing behind. Dropping it without either must not publish the object.
pub trait ObjectUpload: AsyncWrite + Unpin + Send {
    fn complete(self: Box<Self>) -> BoxFuture<'static, Result<ObjectInfo, StorageError>>;
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>>;
}

/// The narrow interface every storage backend implements.
pub trait BackupStore: Send + Sync + std::fmt::Debug {
    /// Human-readable location, e.g. `./backups` or `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// Where the object under `key` really is, for messages to a person.
    fn location_of(&self, key: &str) -> String {
        format!("{}/{key}", self.describe().trim_end_matches('/'))
    }
    /// Starts a streaming upload to `key`.
    fn begin_upload<'a>(&'a self, key: &'a str)
    -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>>;
    /// Stores a small object in one piece, atomically.
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>>;
    /// Stores a small object in one piece, atomically, only if no object has
    /// the key yet ([`StorageError::AlreadyExists`] otherwise). Two writers
    /// racing for the same key (two first backups creating the repository
    /// identity) then agree on one object instead of the last overwriting
    /// the first. Local disk: a hard link, which fails on an existing
    /// name; S3: `If-None-Match: *`; Azure: `If-None-Match: *` as well.
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>>;
    /// Reads `length` bytes from `offset`.
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: u64,
    ) -> BoxFuture<'a, Result<ObjectReader, StorageError>>;
    /// Reads the whole object as a stream.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>>;
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>>;
    /// Every object whose key starts with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>>;
    /// What the objects under `prefix` take up, as the provider bills it:
    /// the current objects, and the older versions a versioned bucket keeps
    /// after an overwrite or a delete (until its lifecycle expires them).
    /// Stores that keep no versions have only current bytes.
    fn stored_bytes<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<StoredBytes, StorageError>> {
        async move {
            let current = self.list(prefix).await?.iter().map(|info| info.size).sum();
            Ok(StoredBytes {
                current,
                noncurrent: 0,
            })
        }
        .boxed()
    }
    /// Deletes an object; deleting a missing object is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Removes what uploads that can never finish left behind and returns
    /// their keys (with `dry_run`, only returns them). Local disk: the
    /// temporary file of a process killed mid-write. S3 and Azure clean up
    /// after themselves (the template's lifecycle rule aborts incomplete
    /// multipart uploads after a day; Azure drops uncommitted blocks after
    /// seven), so by default there is nothing to sweep.
    /// Bytes free for new objects, where the store can tell (local disk);
    /// `None` for cloud stores, which do not run out.
    fn free_space(&self) -> BoxFuture<'_, Result<Option<u64>, StorageError>> {
        async { Ok(None) }.boxed()
    }
    /// Where the data is kept (S3: GetBucketLocation).
    fn region(&self) -> BoxFuture<'_, Result<StoreRegion, StorageError>> {
        async { Ok(StoreRegion::Unknown) }.boxed()
    }
    fn sweep_abandoned_uploads(&self, dry_run: bool) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        let _ = dry_run;
        async { Ok(Vec::new()) }.boxed()
    }
}

/// Bytes a prefix takes up (see [`BackupStore::stored_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredBytes {
    pub current: u64,
    /// Older versions and the data behind delete markers.
    pub noncurrent: u64,
}

/// Where a store keeps its data, for the region guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRegion {
    /// On this machine's disk: the data stays where the tool runs.
    ThisMachine,
    /// A cloud region, as its provider names it (`eu-west-1`).
    Cloud(String),
    /// A cloud store whose region its data API does not tell.
    Unknown,
}

pub type SharedStore = Arc<dyn BackupStore>;

/// Reads a small object completely (metadata, verification records).
pub async fn get_bytes(store: &dyn BackupStore, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
    let mut reader = store.get(key).await?;
    let mut bytes = Vec::new();
    (&mut reader)
        .take(limit)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| StorageError::Io {
            operation: "read",
            key: key.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// A stored backup object seen as a container source (ranged reads).
pub struct StoredObject<'s> {
    store: &'s dyn BackupStore,
    key: String,
    size: u64,
}

impl<'s> StoredObject<'s> {
    pub async fn open(store: &'s dyn BackupStore, key: &str) -> Result<Self, StorageError> {
        let info = store.head(key).await?;
        Ok(Self {
            store,
            key: key.to_owned(),
            size: info.size,
        })
    }
}

impl ObjectSource for StoredObject<'_> {
    type Reader = ObjectReader;

    fn size(&self) -> u64 {
        self.size
    }

    async fn read_range(&self, offset: u64, length: u64) -> io::Result<ObjectReader> {
        self.store
            .get_range(&self.key, offset, length)
            .await
            .map_err(|error| match error {
                StorageError::Io { source, .. } => source,
                other => io::Error::other(other),
            })
    }
}
