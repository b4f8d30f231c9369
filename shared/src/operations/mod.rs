//! The operations the CLI and the Lambda functions run: create, list,
//! verify, restore, prune. Each reports through the audit trail, metrics and
//! webhook, and returns a serializable report.

mod create;
mod prune;
mod restore;
mod verify;

pub use create::{CreateRequest, create_backup};
pub use prune::{PruneFailure, PruneOutcome, PruneRequest, prune_backups};
pub use restore::{Confirmation, RestoreOutcome, RestoreRequest, restore_backup};
pub use verify::{TableCheck, VerifyReport, VerifyRequest, verify_backup};

use crate::audit::AuditTrail;
use crate::config::{ConfigError, Settings};
use crate::container::ContainerError;
use crate::keyring::{Keyring, KeyringError};
use crate::metadata::{BackupMetadata, MetadataError};
use crate::metrics::MetricsSink;
use crate::notify::Notifier;
use crate::postgres::PostgresError;
use crate::progress::{Progress, Silent};
use crate::repository::{BackupRepository, RepositoryError};
use crate::storage::{SharedStore, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("no database to {0}: set DATABASE_URL or pass --database-url")]
    MissingDatabaseUrl(&'static str),
    #[error(
        "no encryption key: set BACKUP_ENCRYPTION_KEY (64 hex characters; `backupctl keys generate` makes one)"
    )]
    MissingKey,
    #[error(
        "deep verification restores into a scratch database: set BACKUP_SCRATCH_DATABASE_URL or pass --scratch-url (a server where this role may CREATE DATABASE)"
    )]
    MissingScratchDatabase,
    #[error(
        "restore refused: it replaces data, so it needs explicit confirmation (--yes, or \"confirm\" set to the target database's name)"
    )]
    NotConfirmed,
    #[error("the stored object is {actual} bytes but {expected} were written; the upload was aborted")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("the safety backup of the current database failed, so nothing was restored")]
    SafetyBackupFailed(#[source] Box<OperationError>),
}

impl OperationError {
    /// The whole cause chain on one line, for CLI output and notifications.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

/// What every operation needs, built once per process (or Lambda cold start).
pub struct Services {
    pub repository: BackupRepository,
    pub audit: AuditTrail,
    pub notifier: Notifier,
    pub metrics: MetricsSink,
    pub keyring: Option<Keyring>,
    /// Who runs the operations (a user name, or the Lambda function).
    pub actor: String,
    pub progress: Box<dyn Progress>,
}

impl Services {
    pub fn new(
        store: SharedStore,
        settings: &Settings,
        actor: impl Into<String>,
        metrics: MetricsSink,
    ) -> Self {
        Self {
            repository: BackupRepository::new(store.clone()),
            audit: AuditTrail::new(store),
            notifier: Notifier::new(settings.webhook_url.clone(), settings.webhook_secret.clone()),
            metrics,
            keyring: settings.keyring.clone(),
            actor: actor.into(),
            progress: Box::new(Silent),
        }
    }

    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    fn keyring(&self) -> Result<&Keyring, OperationError> {
        self.keyring.as_ref().ok_or(OperationError::MissingKey)
    }

    /// Backups newest first, verification records merged in.
    pub async fn list(&self) -> Result<Vec<BackupMetadata>, OperationError> {
        Ok(self.repository.list().await?)
    }
}

fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
