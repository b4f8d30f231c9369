//! Where the erasure ledger's head is kept: somewhere a writer of the
//! backup store cannot reach. The head (how many records the ledger holds
//! and the MAC of the last one, sealed) is what makes a deleted record
//! noticeable; kept in the bucket, whoever deletes a record could roll the
//! head back too. Locally it is a file (`BACKUP_LEDGER_HEAD_FILE`), kept
//! with the key rather than with the backups; in AWS a Secrets Manager
//! secret that only the restore role (which records erasures) may write
//! (`BACKUP_LEDGER_HEAD_SECRET_ARN`, see `functions/common`).

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum HeadStoreError {
    #[error("cannot read the erasure ledger head at {location}")]
    Read {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot write the erasure ledger head at {location}")]
    Write {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What reading or writing a head returns.
pub type HeadFuture<'a, T> = BoxFuture<'a, Result<T, HeadStoreError>>;

/// The place that holds the sealed head, as text (JSON).
pub trait LedgerHeadStore: Send + Sync + std::fmt::Debug {
    /// Where it is, by the setting that chose it (for messages).
    fn location(&self) -> String;
    /// The stored head, `None` when none was written yet.
    fn read(&self) -> HeadFuture<'_, Option<String>>;
    fn write<'a>(&'a self, head: &'a str) -> HeadFuture<'a, ()>;
}

pub type SharedHeadStore = Arc<dyn LedgerHeadStore>;

/// A head in a local file, replaced atomically (written beside, renamed).
#[derive(Debug, Clone)]
pub struct FileHeadStore {
    path: PathBuf,
}

impl FileHeadStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl LedgerHeadStore for FileHeadStore {
    fn location(&self) -> String {
        format!("{} (BACKUP_LEDGER_HEAD_FILE)", self.path.display())
    }

    fn read(&self) -> HeadFuture<'_, Option<String>> {
        Box::pin(async move {
            match tokio::fs::read_to_string(&self.path).await {
                Ok(text) => Ok(Some(text)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(HeadStoreError::Read {
                    location: self.location(),
                    source: Box::new(error),
                }),
            }
        })
    }

    fn write<'a>(&'a self, head: &'a str) -> HeadFuture<'a, ()> {
        Box::pin(async move {
            let failed = |error: std::io::Error| HeadStoreError::Write {
                location: self.location(),
                source: Box::new(error),
            };
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent).await.map_err(failed)?;
            }
            let mut partial = self.path.clone().into_os_string();
            partial.push(".partial");
            tokio::fs::write(&partial, head).await.map_err(failed)?;
            tokio::fs::rename(&partial, &self.path).await.map_err(failed)
        })
    }
}
