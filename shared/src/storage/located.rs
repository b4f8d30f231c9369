//! Errors that say where: a store wrapped so that every error names the
//! real place (the file path, or `s3://bucket/prefix/key`) and the setting
//! that chose it, instead of the store's internal key (`backups/…`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::AsyncWrite;

use super::{
    BackupStore, ObjectInfo, ObjectReader, ObjectUpload, SharedStore, StorageError, StoreRegion, StoredBytes,
};

/// A store whose errors name real locations.
#[derive(Debug)]
pub struct Located {
    inner: SharedStore,
    /// How the operator chose this store, e.g. `--backup-dir or BACKUP_DIR`.
    setting: &'static str,
}

impl Located {
    pub fn new(inner: SharedStore, setting: &'static str) -> Self {
        Self { inner, setting }
    }
}

/// Rewrites the key an error names into `location (set by …)`.
fn locate(error: StorageError, inner: &dyn BackupStore, setting: &'static str) -> StorageError {
    let at = |key: String| format!("{} (the backup store, set by {setting})", inner.location_of(&key));
    match error {
        StorageError::NotFound { key } => StorageError::NotFound { key: at(key) },
        StorageError::AlreadyExists { key } => StorageError::AlreadyExists { key: at(key) },
        StorageError::Locked { key } => StorageError::Locked { key: at(key) },
        StorageError::InvalidKey { key } => StorageError::InvalidKey { key: at(key) },
        StorageError::Io {
            operation,
            key,
            source,
        } => StorageError::Io {
            operation,
            key: at(key),
            source,
        },
        StorageError::Backend {
            operation,
            key,
            source,
        } => StorageError::Backend {
            operation,
            key: at(key),
            source,
        },
        other @ StorageError::Unavailable(_) => other,
    }
}

/// The future's error, if any, located.
fn located<'a, T: Send + 'a>(
    outcome: BoxFuture<'a, Result<T, StorageError>>,
    store: SharedStore,
    setting: &'static str,
) -> BoxFuture<'a, Result<T, StorageError>> {
    outcome
        .map(move |result| result.map_err(|error| locate(error, store.as_ref(), setting)))
        .boxed()
}

impl BackupStore for Located {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn location_of(&self, key: &str) -> String {
        self.inner.location_of(key)
    }

    fn begin_upload<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>> {
        async move {
            match self.inner.begin_upload(key).await {
                Ok(upload) => Ok(Box::new(LocatedUpload {
                    inner: upload,
                    store: self.inner.clone(),
                    setting: self.setting,
                }) as Box<dyn ObjectUpload>),
                Err(error) => Err(locate(error, self.inner.as_ref(), self.setting)),
            }
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        located(self.inner.put(key, bytes), self.inner.clone(), self.setting)
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        located(
            self.inner.put_if_absent(key, bytes),
            self.inner.clone(),
            self.setting,
        )
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: u64,
    ) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        located(
            self.inner.get_range(key, offset, length),
            self.inner.clone(),
            self.setting,
        )
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        located(self.inner.get(key), self.inner.clone(), self.setting)
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        located(self.inner.head(key), self.inner.clone(), self.setting)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        located(self.inner.list(prefix), self.inner.clone(), self.setting)
    }

    fn stored_bytes<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<StoredBytes, StorageError>> {
        located(self.inner.stored_bytes(prefix), self.inner.clone(), self.setting)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        located(self.inner.delete(key), self.inner.clone(), self.setting)
    }

    fn free_space(&self) -> BoxFuture<'_, Result<Option<u64>, StorageError>> {
        located(self.inner.free_space(), self.inner.clone(), self.setting)
    }

    fn region(&self) -> BoxFuture<'_, Result<StoreRegion, StorageError>> {
        located(self.inner.region(), self.inner.clone(), self.setting)
    }

    fn sweep_abandoned_uploads(&self, dry_run: bool) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        located(
            self.inner.sweep_abandoned_uploads(dry_run),
            self.inner.clone(),
            self.setting,
        )
    }
}

struct LocatedUpload {
    inner: Box<dyn ObjectUpload>,
    store: SharedStore,
    setting: &'static str,
}

impl AsyncWrite for LocatedUpload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl ObjectUpload for LocatedUpload {
    fn complete(self: Box<Self>) -> BoxFuture<'static, Result<ObjectInfo, StorageError>> {
        located(self.inner.complete(), self.store, self.setting)
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        located(self.inner.abort(), self.store, self.setting)
    }
}
