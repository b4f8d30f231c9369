//! Azure Blob Storage through `object_store` (block blobs, staged blocks).
//!
//! `AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY`, `AZURE_CONTAINER`; for the
//! Azurite emulator set `AZURE_STORAGE_USE_EMULATOR=true` (endpoint from
//! `AZURITE_BLOB_STORAGE_URL`, default `http://127.0.0.1:10000`).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, MultipartUpload, ObjectStore as _, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

use super::multipart::{MultipartSettings, PartReceipt, PartTarget, start_upload};
use super::{BackupStore, ObjectInfo, ObjectReader, ObjectUpload, StorageError};

#[derive(Clone)]
pub struct AzureSettings {
    pub account: String,
    pub access_key: String,
    pub container: String,
    pub use_emulator: bool,
    pub prefix: String,
    pub multipart: MultipartSettings,
}

/// Everything but the access key.
impl std::fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSettings")
            .field("account", &self.account)
            .field("access_key", &"<redacted>")
            .field("container", &self.container)
            .field("use_emulator", &self.use_emulator)
            .field("prefix", &self.prefix)
            .field("multipart", &self.multipart)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AzureStore {
    inner: Arc<MicrosoftAzure>,
    container: String,
    prefix: String,
    multipart: MultipartSettings,
}

fn backend(operation: &'static str, key: &str, error: object_store::Error) -> StorageError {
    match error {
        object_store::Error::NotFound { .. } => StorageError::NotFound { key: key.to_owned() },
        other => StorageError::Backend {
            operation,
            key: key.to_owned(),
            source: Box::new(other),
        },
    }
}

impl AzureStore {
    pub fn connect(settings: AzureSettings) -> Result<Self, StorageError> {
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&settings.account)
            .with_access_key(&settings.access_key)
            .with_container_name(&settings.container);
        if settings.use_emulator {
            builder = builder.with_use_emulator(true).with_allow_http(true);
        }
        let inner = builder
            .build()
            .map_err(|e| backend("configure", &settings.container, e))?;
        let prefix = match settings.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(Self {
            inner: Arc::new(inner),
            container: settings.container,
            prefix,
            multipart: settings.multipart,
        })
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        if key.is_empty()
            || key.starts_with('/')
            || key.ends_with('/')
            || key.split('/').any(|p| p == ".." || p == ".")
        {
            return Err(StorageError::InvalidKey { key: key.to_owned() });
        }
        Path::parse(format!("{}{key}", self.prefix))
            .map_err(|_| StorageError::InvalidKey { key: key.to_owned() })
    }

    fn info(&self, meta: &object_store::ObjectMeta) -> Option<ObjectInfo> {
        Some(ObjectInfo {
            key: meta.location.as_ref().strip_prefix(&self.prefix)?.to_owned(),
            size: meta.size,
            last_modified: meta.last_modified,
        })
    }

    async fn read(&self, key: &str, range: Option<GetRange>) -> Result<ObjectReader, StorageError> {
        let options = GetOptions {
            range,
            ..GetOptions::default()
        };
        let result = self
            .inner
            .get_opts(&self.path(key)?, options)
            .await
            .map_err(|e| backend("read", key, e))?;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)) as ObjectReader)
    }
}

impl BackupStore for AzureStore {
    fn describe(&self) -> String {
        format!("azure://{}/{}", self.container, self.prefix)
    }

    fn begin_upload<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>> {
        async move {
            let target = AzureTarget {
                store: self.clone(),
                key: key.to_owned(),
                path: self.path(key)?,
                upload: None,
                size: 0,
            };
            Ok(start_upload(target, key.to_owned(), self.multipart))
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let path = self.path(key)?;
            let size = bytes.len() as u64;
            self.inner
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| backend("upload", key, e))?;
            Ok(ObjectInfo {
                key: key.to_owned(),
                size,
                last_modified: chrono::Utc::now(),
            })
        }
        .boxed()
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let path = self.path(key)?;
            let size = bytes.len() as u64;
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self.inner.put_opts(&path, PutPayload::from(bytes), options).await {
                Ok(_) => Ok(ObjectInfo {
                    key: key.to_owned(),
                    size,
                    last_modified: chrono::Utc::now(),
                }),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    Err(StorageError::AlreadyExists { key: key.to_owned() })
                }
                Err(e) => Err(backend("upload", key, e)),
            }
        }
        .boxed()
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: u64,
    ) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        async move {
            if length == 0 {
                return Ok(Box::new(tokio::io::empty()) as ObjectReader);
            }
            self.read(key, Some(GetRange::Bounded(offset..offset + length)))
                .await
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        async move { self.read(key, None).await }.boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let meta = self
                .inner
                .head(&self.path(key)?)
                .await
                .map_err(|e| backend("head", key, e))?;
            self.info(&meta)
                .ok_or_else(|| StorageError::NotFound { key: key.to_owned() })
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        async move {
            // object_store lists whole path segments: list the folder, filter the rest.
            let folder = format!(
                "{}{}",
                self.prefix,
                prefix.rsplit_once('/').map(|(f, _)| f).unwrap_or("")
            );
            let folder = folder.trim_end_matches('/');
            let folder_path = (!folder.is_empty()).then(|| Path::from(folder));
            let mut listing = self.inner.list(folder_path.as_ref());
            let mut found = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| backend("list", prefix, e))?;
                if let Some(info) = self.info(&meta)
                    && info.key.starts_with(prefix)
                {
                    found.push(info);
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            match self.inner.delete(&self.path(key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(backend("delete", key, e)),
            }
        }
        .boxed()
    }
}

struct AzureTarget {
    store: AzureStore,
    key: String,
    path: Path,
    upload: Option<Box<dyn MultipartUpload>>,
    size: u64,
}

impl PartTarget for AzureTarget {
    fn put_whole(&mut self, data: Bytes) -> BoxFuture<'_, Result<ObjectInfo, StorageError>> {
        async move { self.store.put(&self.key, data).await }.boxed()
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            let upload = self
                .store
                .inner
                .put_multipart(&self.path)
                .await
                .map_err(|e| backend("start block upload of", &self.key, e))?;
            self.upload = Some(upload);
            Ok(())
        }
        .boxed()
    }

    fn upload_part(
        &mut self,
        number: u32,
        data: Bytes,
    ) -> BoxFuture<'static, Result<PartReceipt, StorageError>> {
        self.size += data.len() as u64;
        let key = self.key.clone();
        let Some(upload) = self.upload.as_mut() else {
            return async move { Err(StorageError::InvalidKey { key }) }.boxed();
        };
        let part = upload.put_part(PutPayload::from(data));
        async move {
            part.await.map_err(|e| backend("upload block of", &key, e))?;
            Ok(PartReceipt {
                number,
                ..PartReceipt::default()
            })
        }
        .boxed()
    }

    fn complete(&mut self, _parts: Vec<PartReceipt>) -> BoxFuture<'_, Result<ObjectInfo, StorageError>> {
        async move {
            if let Some(mut upload) = self.upload.take() {
                upload
                    .complete()
                    .await
                    .map_err(|e| backend("commit block list of", &self.key, e))?;
            }
            self.store.head(&self.key).await
        }
        .boxed()
    }

    /// Azure has no "abort": staged blocks stay on the account, uncommitted,
    /// for up to a week (object_store's `abort` does nothing). Writing an
    /// empty blob over the key discards them, and deleting it leaves the key
    /// as it was. A backup key is fresh (its id is new), so nothing
    /// committed can be lost; the check below makes sure of it.
    fn abort(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            let Some(mut upload) = self.upload.take() else {
                return Ok(());
            };
            upload
                .abort()
                .await
                .map_err(|e| backend("abort block upload of", &self.key, e))?;
            match self.store.head(&self.key).await {
                Err(StorageError::NotFound { .. }) => {
                    self.store.put(&self.key, Bytes::new()).await?;
                    self.store.delete(&self.key).await
                }
                Ok(_) => {
                    tracing::warn!(
                        key = self.key,
                        "a committed blob exists under an aborted upload's key; left as it is"
                    );
                    Ok(())
                }
                Err(other) => Err(other),
            }
        }
        .boxed()
    }
}
