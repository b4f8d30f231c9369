//! Amazon S3 (and S3-compatible servers) with `aws-sdk-s3`.
//!
//! Built from `aws-config`, so the standard credential chain, `AWS_REGION`
//! and `AWS_ENDPOINT_URL` work. Path-style addressing is used when
//! `S3_FORCE_PATH_STYLE=true`, or automatically when the endpoint's host is
//! an IP address or `localhost`.

use std::net::IpAddr;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode, ServerSideEncryption,
};
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::multipart::{MultipartSettings, PartReceipt, PartTarget, start_upload};
use super::{BackupStore, ObjectInfo, ObjectReader, ObjectUpload, StorageError, StoreRegion, StoredBytes};

/// How new objects are written.
#[derive(Debug, Clone, Default)]
pub struct S3WriteOptions {
    /// `AES256` or `aws:kms` (server-side encryption on top of ours).
    pub server_side_encryption: Option<String>,
    pub kms_key_id: Option<String>,
    /// `GOVERNANCE` or `COMPLIANCE` with a retention in days (bucket needs Object Lock).
    pub object_lock: Option<(String, u32)>,
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Optional key prefix, e.g. `carwash/` (keys become `carwash/backups/…`).
    pub prefix: String,
    pub force_path_style: Option<bool>,
    pub write: S3WriteOptions,
    pub multipart: MultipartSettings,
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    write: S3WriteOptions,
    multipart: MultipartSettings,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store(s3://{}/{})", self.bucket, self.prefix)
    }
}

fn backend<E: std::error::Error + Send + Sync + 'static>(
    operation: &'static str,
    key: &str,
    error: E,
) -> StorageError {
    StorageError::Backend {
        operation,
        key: key.to_owned(),
        source: Box::new(error),
    }
}

impl S3Store {
    /// A client from the standard AWS configuration chain.
    pub async fn connect(settings: S3Settings) -> Self {
        Self::connect_with(&aws_config::load_from_env().await, settings)
    }

    /// A client from a given AWS configuration.
    pub fn connect_with(shared: &aws_config::SdkConfig, settings: S3Settings) -> Self {
        let path_style = settings.force_path_style.unwrap_or_else(|| {
            shared
                .endpoint_url()
                .and_then(|url| url.split("://").nth(1))
                .and_then(|rest| rest.split(['/', ':']).next())
                .is_some_and(|host| host == "localhost" || host.parse::<IpAddr>().is_ok())
        });
        let config = aws_sdk_s3::config::Builder::from(shared)
            .force_path_style(path_style)
            .build();
        Self::with_client(Client::from_conf(config), settings)
    }

    pub fn with_client(client: Client, settings: S3Settings) -> Self {
        let prefix = match settings.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Self {
            client,
            bucket: settings.bucket,
            prefix,
            write: settings.write,
            multipart: settings.multipart,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == "..") {
            return Err(StorageError::InvalidKey { key: key.to_owned() });
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// GetObject, whole or an HTTP byte range, as a stream.
    async fn fetch(&self, key: &str, range: Option<String>) -> Result<ObjectReader, StorageError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .set_range(range)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(s) if s.is_no_such_key() => StorageError::NotFound { key: key.to_owned() },
                _ => backend("read", key, e),
            })?;
        Ok(Box::new(response.body.into_async_read()) as ObjectReader)
    }

    /// SSE and Object Lock settings for a new object, whichever request writes it.
    fn write_settings(&self) -> WriteSettings {
        WriteSettings {
            sse: self
                .write
                .server_side_encryption
                .as_deref()
                .map(ServerSideEncryption::from),
            kms_key_id: self.write.kms_key_id.clone(),
            lock: self.lock_until(),
        }
    }

    fn lock_until(&self) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        let (mode, days) = self.write.object_lock.as_ref()?;
        let until = Utc::now() + Duration::days(i64::from(*days));
        Some((
            ObjectLockMode::from(mode.as_str()),
            aws_sdk_s3::primitives::DateTime::from_millis(until.timestamp_millis()),
        ))
    }
}

struct WriteSettings {
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    lock: Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)>,
}

fn to_info(key: &str, size: Option<i64>, modified: Option<&aws_sdk_s3::primitives::DateTime>) -> ObjectInfo {
    ObjectInfo {
        key: key.to_owned(),
        size: size.unwrap_or(0).max(0) as u64,
        last_modified: modified
            .and_then(|t| DateTime::from_timestamp_millis(t.to_millis().ok()?))
            .unwrap_or_else(Utc::now),
    }
}

impl BackupStore for S3Store {
    /// GetBucketLocation: an empty constraint is us-east-1, `EU` the old
    /// name of eu-west-1.
    fn region(&self) -> BoxFuture<'_, Result<StoreRegion, StorageError>> {
        async move {
            let answer = self
                .client
                .get_bucket_location()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|error| backend("GetBucketLocation", &self.bucket, error))?;
            let region = match answer.location_constraint().map(|c| c.as_str()) {
                None | Some("") => "us-east-1".to_owned(),
                Some("EU") => "eu-west-1".to_owned(),
                Some(other) => other.to_owned(),
            };
            Ok(StoreRegion::Cloud(region))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn begin_upload<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>> {
        async move {
            let target = S3Target {
                store: self.clone(),
                key: key.to_owned(),
                full_key: self.full_key(key)?,
                upload_id: None,
            };
            Ok(start_upload(target, key.to_owned(), self.multipart))
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let mut target = S3Target {
                store: self.clone(),
                key: key.to_owned(),
                full_key: self.full_key(key)?,
                upload_id: None,
            };
            target.put_whole(bytes).await
        }
        .boxed()
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let target = S3Target {
                store: self.clone(),
                key: key.to_owned(),
                full_key: self.full_key(key)?,
                upload_id: None,
            };
            target.put_object(bytes, true).await
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
            self.fetch(key, Some(format!("bytes={offset}-{}", offset + length - 1)))
                .await
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        async move { self.fetch(key, None).await }.boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let response = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(self.full_key(key)?)
                .send()
                .await
                .map_err(|e| match e.as_service_error() {
                    Some(s) if s.is_not_found() => StorageError::NotFound { key: key.to_owned() },
                    _ => backend("head", key, e),
                })?;
            Ok(to_info(
                key,
                response.content_length,
                response.last_modified.as_ref(),
            ))
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        async move {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{}{prefix}", self.prefix))
                .into_paginator()
                .send();
            let mut found = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| backend("list", prefix, e))?;
                for object in page.contents() {
                    let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                        continue;
                    };
                    found.push(to_info(key, object.size, object.last_modified.as_ref()));
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        }
        .boxed()
    }

    /// Every version, current or not (a versioned bucket bills both; a
    /// pruned backup stays as a noncurrent version until the lifecycle
    /// expires it). Needs `s3:ListBucketVersions`.
    fn stored_bytes<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<StoredBytes, StorageError>> {
        async move {
            // (ListObjectVersions has no paginator: it pages by key and
            // version id markers.)
            let mut bytes = StoredBytes::default();
            let mut markers: (Option<String>, Option<String>) = (None, None);
            loop {
                let page = self
                    .client
                    .list_object_versions()
                    .bucket(&self.bucket)
                    .prefix(format!("{}{prefix}", self.prefix))
                    .set_key_marker(markers.0.take())
                    .set_version_id_marker(markers.1.take())
                    .send()
                    .await
                    .map_err(|e| backend("list the versions under", prefix, e))?;
                for version in page.versions() {
                    let size = u64::try_from(version.size().unwrap_or(0)).unwrap_or(0);
                    if version.is_latest().unwrap_or(true) {
                        bytes.current = bytes.current.saturating_add(size);
                    } else {
                        bytes.noncurrent = bytes.noncurrent.saturating_add(size);
                    }
                }
                if page.is_truncated() != Some(true) {
                    break;
                }
                markers = (
                    page.next_key_marker().map(str::to_owned),
                    page.next_version_id_marker().map(str::to_owned),
                );
                if markers.0.is_none() {
                    break;
                }
            }
            Ok(bytes)
        }
        .boxed()
    }

    /// Deletes the current version only: on a versioned bucket that adds a
    /// delete marker, and the data stays recoverable until the bucket's
    /// lifecycle expires the noncurrent version (after its Object Lock, if
    /// any). No role needs `s3:DeleteObjectVersion`, so no credential that
    /// runs prune can destroy history. A refusal (403) is `Locked`.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let deleted = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(key)?)
                .send()
                .await;
            match deleted {
                Ok(_) => Ok(()),
                Err(error) if error.raw_response().map(|r| r.status().as_u16()) == Some(403) => {
                    Err(StorageError::Locked { key: key.to_owned() })
                }
                Err(error) => Err(backend("delete", key, error)),
            }
        }
        .boxed()
    }
}

struct S3Target {
    store: S3Store,
    key: String,
    full_key: String,
    upload_id: Option<String>,
}

impl S3Target {
    /// One PutObject; `only_if_absent` adds `If-None-Match: *`, which S3
    /// answers with 412 when the key is taken (and 409 while a concurrent
    /// conditional write of the key is in flight: retried, as AWS advises).
    async fn put_object(&self, data: Bytes, only_if_absent: bool) -> Result<ObjectInfo, StorageError> {
        let size = data.len() as i64;
        let store = &self.store;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let settings = store.write_settings();
            let sent = store
                .client
                .put_object()
                .bucket(&store.bucket)
                .key(&self.full_key)
                .body(ByteStream::from(data.clone()))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .set_if_none_match(only_if_absent.then(|| "*".to_owned()))
                .set_server_side_encryption(settings.sse)
                .set_ssekms_key_id(settings.kms_key_id)
                .set_object_lock_mode(settings.lock.as_ref().map(|(mode, _)| mode.clone()))
                .set_object_lock_retain_until_date(settings.lock.map(|(_, until)| until))
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(to_info(&self.key, Some(size), None)),
                Err(e) if only_if_absent => match e.raw_response().map(|r| r.status().as_u16()) {
                    Some(412) => {
                        return Err(StorageError::AlreadyExists {
                            key: self.key.clone(),
                        });
                    }
                    Some(409) if attempt < 4 => {
                        tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                    }
                    _ => return Err(backend("upload", &self.key, e)),
                },
                Err(e) => return Err(backend("upload", &self.key, e)),
            }
        }
    }
}

impl PartTarget for S3Target {
    fn put_whole(&mut self, data: Bytes) -> BoxFuture<'_, Result<ObjectInfo, StorageError>> {
        async move { self.put_object(data, false).await }.boxed()
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            let store = &self.store;
            let settings = store.write_settings();
            let response = store
                .client
                .create_multipart_upload()
                .bucket(&store.bucket)
                .key(&self.full_key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .set_server_side_encryption(settings.sse)
                .set_ssekms_key_id(settings.kms_key_id)
                .set_object_lock_mode(settings.lock.as_ref().map(|(mode, _)| mode.clone()))
                .set_object_lock_retain_until_date(settings.lock.map(|(_, until)| until))
                .send()
                .await
                .map_err(|e| backend("start multipart upload", &self.key, e))?;
            self.upload_id = response.upload_id;
            Ok(())
        }
        .boxed()
    }

    fn upload_part(
        &mut self,
        number: u32,
        data: Bytes,
    ) -> BoxFuture<'static, Result<PartReceipt, StorageError>> {
        let request = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(&self.full_key)
            .set_upload_id(self.upload_id.clone())
            .part_number(number as i32)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(data));
        let key = self.key.clone();
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| backend("upload part", &key, e))?;
            Ok(PartReceipt {
                number,
                etag: response.e_tag,
                checksum_sha256: response.checksum_sha256,
            })
        }
        .boxed()
    }

    fn complete(&mut self, parts: Vec<PartReceipt>) -> BoxFuture<'_, Result<ObjectInfo, StorageError>> {
        async move {
            let completed = CompletedMultipartUpload::builder()
                .set_parts(Some(
                    parts
                        .into_iter()
                        .map(|p| {
                            CompletedPart::builder()
                                .part_number(p.number as i32)
                                .set_e_tag(p.etag)
                                .set_checksum_sha256(p.checksum_sha256)
                                .build()
                        })
                        .collect(),
                ))
                .build();
            self.store
                .client
                .complete_multipart_upload()
                .bucket(&self.store.bucket)
                .key(&self.full_key)
                .set_upload_id(self.upload_id.clone())
                .multipart_upload(completed)
                .send()
                .await
                .map_err(|e| backend("complete multipart upload", &self.key, e))?;
            self.upload_id = None;
            // Retention given at CreateMultipartUpload is not applied by every
            // S3-compatible server; setting it again on the object is harmless.
            if let Some((mode, until)) = self.store.lock_until() {
                let retention = aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(aws_sdk_s3::types::ObjectLockRetentionMode::from(mode.as_str()))
                    .retain_until_date(until)
                    .build();
                self.store
                    .client
                    .put_object_retention()
                    .bucket(&self.store.bucket)
                    .key(&self.full_key)
                    .retention(retention)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .send()
                    .await
                    .map_err(|e| backend("set retention", &self.key, e))?;
            }
            self.store.head(&self.key).await
        }
        .boxed()
    }

    fn abort(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            let Some(upload_id) = self.upload_id.take() else {
                return Ok(());
            };
            self.store
                .client
                .abort_multipart_upload()
                .bucket(&self.store.bucket)
                .key(&self.full_key)
                .upload_id(upload_id)
                .send()
                .await
                .map_err(|e| backend("abort multipart upload", &self.key, e))?;
            Ok(())
        }
        .boxed()
    }
}
