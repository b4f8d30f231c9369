//! Local disk: `./backups/backup-….backup` and `./backups/metadata/….json`.
//!
//! Every write goes to a temporary file in the destination directory, is
//! fsynced, then renamed into place (and the directory fsynced), so a crash
//! never leaves a partial file under a final name. The writer holds an
//! exclusive `flock` on its temporary file while it is open; the kernel
//! drops it when the process dies, so a prune can tell a live upload from
//! the leftovers of a killed one and sweep only those.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::fs::{self, File};
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{BackupStore, ObjectInfo, ObjectReader, ObjectUpload, StorageError, StoreRegion};

/// Prefix of temporary files; never listed.
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file is swept only when unlocked and untouched this long:
/// it is created a moment before its writer locks it.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Backup objects go straight into `root`; other keys into subfolders
    /// (`root/metadata/…`, `root/audit/…`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        let invalid = || StorageError::InvalidKey { key: key.to_owned() };
        let relative = key.strip_prefix("backups/").unwrap_or(key);
        let valid = !relative.is_empty()
            && !relative.starts_with('/')
            && relative.split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && !part.starts_with(TEMP_PREFIX)
            });
        if !valid {
            return Err(invalid());
        }
        Ok(self.root.join(relative))
    }

    fn key_of(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.root).ok()?.to_str()?.replace('\\', "/");
        if relative.contains('/') {
            Some(relative)
        } else {
            Some(format!("backups/{relative}"))
        }
    }
}

fn io_error<'k>(operation: &'static str, key: &'k str) -> impl FnOnce(io::Error) -> StorageError + 'k {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound { key: key.to_owned() }
        } else {
            StorageError::Io {
                operation,
                key: key.to_owned(),
                source,
            }
        }
    }
}

async fn info_of(path: &Path, key: &str) -> Result<ObjectInfo, StorageError> {
    let meta = fs::metadata(path).await.map_err(io_error("head", key))?;
    if !meta.is_file() {
        return Err(StorageError::NotFound { key: key.to_owned() });
    }
    let last_modified = meta
        .modified()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now());
    Ok(ObjectInfo {
        key: key.to_owned(),
        size: meta.len(),
        last_modified,
    })
}

async fn temp_file_beside(path: &Path, key: &str) -> Result<(PathBuf, File), StorageError> {
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::InvalidKey { key: key.to_owned() })?;
    fs::create_dir_all(dir)
        .await
        .map_err(io_error("create the folder", key))?;
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).map_err(|e| StorageError::Io {
        operation: "name a temporary file",
        key: key.to_owned(),
        source: io::Error::other(e),
    })?;
    let temp = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(random)));
    let file = File::create(&temp).await.map_err(io_error("create", key))?;
    let file = file.into_std().await;
    if let Err(error) = file.try_lock() {
        let _ = fs::remove_file(&temp).await;
        return Err(StorageError::Io {
            operation: "lock the temporary file",
            key: key.to_owned(),
            source: io::Error::from(error),
        });
    }
    Ok((temp, File::from_std(file)))
}

/// Temporary files under `root` whose writer is gone: unlocked and not
/// modified for [`ABANDONED_AFTER`]. Removes them unless `dry_run`.
fn sweep_temporary_files(root: &Path, dry_run: bool) -> io::Result<Vec<PathBuf>> {
    let mut swept = Vec::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                folders.push(entry.path());
                continue;
            }
            if !file_type.is_file() || !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let idle = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|idle| idle >= ABANDONED_AFTER);
            if !idle {
                continue;
            }
            let Ok(file) = std::fs::File::open(&path) else {
                continue; // gone meanwhile
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue, // a live upload
                Err(std::fs::TryLockError::Error(error)) => return Err(error),
            }
            if !dry_run {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            swept.push(path);
        }
    }
    Ok(swept)
}

/// fsync the file, rename it into place, fsync the directory.
async fn publish(mut file: File, temp: &Path, path: &Path, key: &str) -> Result<(), StorageError> {
    file.flush().await.map_err(io_error("flush", key))?;
    file.sync_all().await.map_err(io_error("fsync", key))?;
    drop(file);
    fs::rename(temp, path).await.map_err(io_error("rename", key))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir).await
    {
        // Makes the rename itself durable; not every platform supports it.
        let _ = dir.sync_all().await;
    }
    Ok(())
}

impl BackupStore for LocalStore {
    /// statvfs of the backup folder (or the nearest parent that exists):
    /// the blocks an unprivileged writer may still use.
    fn free_space(&self) -> BoxFuture<'_, Result<Option<u64>, StorageError>> {
        async move {
            let mut path = self.root.clone();
            while !path.exists() && path.pop() {}
            let path = if path.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                path
            };
            let stats = rustix::fs::statvfs(&path).map_err(|errno| StorageError::Io {
                operation: "free-space check",
                key: path.display().to_string(),
                source: errno.into(),
            })?;
            Ok(Some(stats.f_bavail.saturating_mul(stats.f_frsize)))
        }
        .boxed()
    }

    fn region(&self) -> BoxFuture<'_, Result<StoreRegion, StorageError>> {
        async { Ok(StoreRegion::ThisMachine) }.boxed()
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn location_of(&self, key: &str) -> String {
        let path = self.path_of(key).unwrap_or_else(|_| self.root.join(key));
        std::path::absolute(&path).unwrap_or(path).display().to_string()
    }

    fn begin_upload<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>> {
        async move {
            let path = self.path_of(key)?;
            let (temp, file) = temp_file_beside(&path, key).await?;
            Ok(Box::new(LocalUpload {
                file: Some(file),
                temp,
                path,
                key: key.to_owned(),
            }) as Box<dyn ObjectUpload>)
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let path = self.path_of(key)?;
            let (temp, mut file) = temp_file_beside(&path, key).await?;
            let written = async {
                file.write_all(&bytes).await.map_err(io_error("write", key))?;
                publish(file, &temp, &path, key).await
            }
            .await;
            if let Err(error) = written {
                let _ = fs::remove_file(&temp).await;
                return Err(error);
            }
            info_of(&path, key).await
        }
        .boxed()
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move {
            let path = self.path_of(key)?;
            let (temp, mut file) = temp_file_beside(&path, key).await?;
            let written = async {
                file.write_all(&bytes).await.map_err(io_error("write", key))?;
                file.flush().await.map_err(io_error("flush", key))?;
                file.sync_all().await.map_err(io_error("fsync", key))?;
                drop(file);
                // A link, unlike a rename, fails when the name is taken: the
                // complete file appears under the key only if nothing was there.
                match fs::hard_link(&temp, &path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Err(StorageError::AlreadyExists { key: key.to_owned() })
                    }
                    Err(e) => Err(io_error("link", key)(e)),
                }
            }
            .await;
            let _ = fs::remove_file(&temp).await;
            written?;
            if let Some(dir) = path.parent()
                && let Ok(dir) = File::open(dir).await
            {
                let _ = dir.sync_all().await;
            }
            info_of(&path, key).await
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
            let path = self.path_of(key)?;
            let mut file = File::open(&path).await.map_err(io_error("read", key))?;
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(io_error("seek", key))?;
            let reader = BufReader::with_capacity(256 * 1024, tokio::io::AsyncReadExt::take(file, length));
            Ok(Box::new(reader) as ObjectReader)
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        async move {
            let path = self.path_of(key)?;
            let file = File::open(&path).await.map_err(io_error("read", key))?;
            Ok(Box::new(BufReader::with_capacity(256 * 1024, file)) as ObjectReader)
        }
        .boxed()
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        async move { info_of(&self.path_of(key)?, key).await }.boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        async move {
            // The folder that holds keys with this prefix.
            let folder = prefix.rsplit_once('/').map_or("", |(folder, _)| folder);
            let dir = if folder == "backups" || folder.is_empty() {
                self.root.clone()
            } else {
                self.path_of(folder)?
            };
            let mut found = Vec::new();
            // Keys nest (audit/2026/11/26/…): walk down every folder that
            // can hold keys with this prefix.
            let mut folders = vec![dir];
            while let Some(dir) = folders.pop() {
                let mut entries = match fs::read_dir(&dir).await {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(StorageError::Io {
                            operation: "list",
                            key: prefix.to_owned(),
                            source,
                        });
                    }
                };
                while let Some(entry) = entries.next_entry().await.map_err(io_error("list", prefix))? {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(TEMP_PREFIX) {
                        continue;
                    }
                    let path = entry.path();
                    if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                        let Some(relative) = path.strip_prefix(&self.root).ok().and_then(Path::to_str) else {
                            continue;
                        };
                        let folder_key = format!("{}/", relative.replace('\\', "/"));
                        if prefix.starts_with(&folder_key) || folder_key.starts_with(prefix) {
                            folders.push(path);
                        }
                        continue;
                    }
                    let Some(key) = self.key_of(&path) else { continue };
                    if !key.starts_with(prefix) {
                        continue;
                    }
                    if let Ok(info) = info_of(&path, &key).await {
                        found.push(info);
                    }
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let path = self.path_of(key)?;
            match fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StorageError::Io {
                    operation: "delete",
                    key: key.to_owned(),
                    source,
                }),
            }
        }
        .boxed()
    }

    fn sweep_abandoned_uploads(&self, dry_run: bool) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        async move {
            let root = self.root.clone();
            let swept = tokio::task::spawn_blocking(move || sweep_temporary_files(&root, dry_run))
                .await
                .map_err(|join| StorageError::Io {
                    operation: "sweep",
                    key: self.describe(),
                    source: io::Error::other(join),
                })?
                .map_err(|source| StorageError::Io {
                    operation: "sweep",
                    key: self.describe(),
                    source,
                })?;
            Ok(swept
                .iter()
                .map(|path| self.key_of(path).unwrap_or_else(|| path.display().to_string()))
                .collect())
        }
        .boxed()
    }
}

struct LocalUpload {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    key: String,
}

impl AsyncWrite for LocalUpload {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.file.as_mut() {
            Some(file) => Pin::new(file).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.file.as_mut() {
            Some(file) => Pin::new(file).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Shutting the stream down only flushes: publishing is `complete`'s job.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl ObjectUpload for LocalUpload {
    fn complete(mut self: Box<Self>) -> BoxFuture<'static, Result<ObjectInfo, StorageError>> {
        async move {
            let file = self.file.take().ok_or_else(|| StorageError::Io {
                operation: "complete",
                key: self.key.clone(),
                source: io::ErrorKind::BrokenPipe.into(),
            })?;
            if let Err(error) = publish(file, &self.temp, &self.path, &self.key).await {
                let _ = fs::remove_file(&self.temp).await;
                return Err(error);
            }
            info_of(&self.path, &self.key).await
        }
        .boxed()
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        async move {
            drop(self.file.take());
            fs::remove_file(&self.temp)
                .await
                .map_err(io_error("abort", &self.key))
        }
        .boxed()
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // Neither completed nor aborted: never leave the temporary file.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
