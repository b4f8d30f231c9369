//! The operations the CLI and the Lambda functions run: create, list,
//! verify, restore, prune. Each reports through the audit trail, metrics and
//! webhook, and returns a serializable report.

mod capture;
mod create;
mod erase;
mod prune;
mod report;
mod restore;
mod verify;
mod verify_changes;

use serde::Serialize;
use serde_json::Value;

pub use capture::{BaseBackupAfterCut, CaptureRun, CaptureRunReport, capture_and_report};
pub use create::{CreateRequest, create_backup};
pub use erase::{ErasureReport, erase_subject, erasure_report, set_aside_ledger_objects};
pub use prune::{PruneFailure, PruneOutcome, PruneRequest, prune_backups};
pub use report::{AuditReport, AuditReportRequest, build_audit_report, publish_audit_report};
pub use restore::{Confirmation, RestoreOutcome, RestoreRequest, restore_backup};
pub use verify::{TableCheck, VerifyReport, VerifyRequest, verify_backup};
pub use verify_changes::{
    BaseChain, ChangesVerifyReport, SegmentFailure, VerifyChangesRequest, verify_changes,
};

use crate::audit::{AuditRecord, AuditTrail, Outcome};
use crate::config::{ConfigError, Settings};
use crate::container::ContainerError;
use crate::keyring::{Keyring, KeyringError};
use crate::metadata::{BackupMetadata, MetadataError, Trigger};
use crate::metrics::{MetricSet, MetricsSink, Unit};
use crate::notify::Notifier;
use crate::postgres::PostgresError;
use crate::progress::{Progress, Silent};
use crate::repository::{BackupRepository, RepositoryError};
use crate::request::RequestError;
use crate::storage::{SharedStore, StorageError};

/// Log target of an operation's closing failure line. The Lambda logs keep
/// it (CloudWatch is where a failure is read); the CLI prints the same
/// failure itself as one `backupctl:` line, so it filters this target out
/// by default rather than say everything twice.
pub const OUTCOME_LOG: &str = "backup_core::outcome";

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
    #[error(transparent)]
    Request(#[from] RequestError),
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
    #[error("could not connect to the restore target set by {setting}: {advice}")]
    TargetUnreachable {
        setting: &'static str,
        advice: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A request a person refused or did not confirm (the CLI's words).
    #[error("{0}")]
    Refused(String),
    #[error("the stored object is {actual} bytes but {expected} were written; the upload was aborted")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(
        "the stored object for backup {requested} is not that backup (it holds {found}); it was replaced or altered, so nothing was restored. Restore another backup"
    )]
    WrongBackupObject { requested: String, found: String },
    #[error(
        "the metadata of backup {id} fails its MAC: it was altered after it was written (or by someone without the key), so it is not trusted and nothing was restored. Restore another backup, and find out who can write to the backup store"
    )]
    TamperedMetadata { id: String },
    #[error(
        "the metadata of backup {id} was altered: {reason}; so it is not trusted and nothing was restored. Restore another backup, and find out who can write to the backup store"
    )]
    AlteredMetadata { id: String, reason: String },
    #[error(
        "backups may only be written to {allowed} (BACKUP_ALLOWED_REGIONS), but {store} is in {region}; no backup was written. Use a bucket in an allowed region"
    )]
    RegionNotAllowed {
        store: String,
        region: String,
        allowed: String,
    },
    #[error(
        "BACKUP_ALLOWED_REGIONS is set, but the region of {store} cannot be read through its data API, so no backup was written; use S3 or local storage, or unset it"
    )]
    RegionUnknown { store: String },
    #[error(
        "application checks run on a restored copy: ask for --depth deep (with a scratch database) to run them"
    )]
    ChecksNeedDeepVerification,
    #[error(transparent)]
    Drill(#[from] crate::drill::DrillError),
    #[error(transparent)]
    Changes(#[from] crate::changes::ChangesError),
    #[error(transparent)]
    Erasure(#[from] crate::erasure::ErasureError),
    #[error(
        "not enough free space for a backup in {store}: {free} bytes free, and a backup needs about {needed} (the last one plus a tenth); free some space (or prune) and try again"
    )]
    InsufficientSpace { store: String, free: u64, needed: u64 },
    #[error(
        "cannot check backup {backup_id}: it was encrypted with key id {key_id}, which is not in the configured keyring (it holds {configured}); nothing was recorded about the backup. Add that key to BACKUP_ENCRYPTION_KEY or the keyring secret (old keys stay needed after a rotation)"
    )]
    KeyNotInKeyring {
        backup_id: String,
        key_id: crate::keyring::ShownId,
        configured: String,
    },
    #[error("the safety backup of the current database failed, so nothing was restored")]
    SafetyBackupFailed(#[source] Box<OperationError>),
    /// The segment is stored and the slot advanced; only the new chain's
    /// start is missing.
    #[error(
        "{} (change segment {}, first commit {} at {}), and the base backup that starts a new change chain failed: instants after {} cannot be restored until a base backup succeeds. The next capture run tries again; or run `backupctl create` (or invoke the create function) now",
        cut.reason, cut.segment, cut.first_commit_lsn, cut.first_commit_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), cut.previous_end
    )]
    BaseBackupAfterCut {
        slot: String,
        cut: Box<crate::changes::ChainCut>,
        #[source]
        source: Box<OperationError>,
    },
    #[error("interrupted ({reason}); {outcome}")]
    Interrupted {
        reason: &'static str,
        /// What was left: "nothing was published", …
        outcome: &'static str,
    },
}

impl OperationError {
    /// The backup's object is sealed with `key_id`, which `keyring` lacks.
    pub(crate) fn key_not_in_keyring(
        metadata: &crate::BackupMetadata,
        key_id: &str,
        keyring: &Keyring,
    ) -> Self {
        Self::KeyNotInKeyring {
            backup_id: metadata.id.to_string(),
            key_id: crate::keyring::ShownId::of(key_id),
            configured: keyring
                .key_ids()
                .map(|id| id.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

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

    /// Whether the operation stopped because it was interrupted from
    /// outside (a signal, a deadline) rather than failing on its own.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Self::Interrupted { .. } => true,
            Self::Postgres(error) => error.is_interrupted(),
            Self::SafetyBackupFailed(inner) => inner.is_interrupted(),
            Self::BaseBackupAfterCut { source, .. } => source.is_interrupted(),
            _ => false,
        }
    }

    /// Whether a failed restore left objects of its own in the target
    /// (removing them failed too; the error lists them).
    pub fn left_objects_in_target(&self) -> bool {
        matches!(self, Self::Postgres(PostgresError::RestoreLeftObjects { .. }))
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
    /// Regions backups may be written to; empty: any.
    pub allowed_regions: Vec<String>,
    /// Change from the median of the last backups that counts as an anomaly (0: off).
    pub anomaly_threshold_percent: u32,
    /// The storage the backups may use; prune warns at 80 %.
    pub storage_budget_bytes: Option<u64>,
    /// `BACKUP_RETENTION_DAYS`, for when erased subjects age out of the backups.
    pub retention_days: u32,
    /// Connections a backup reads the database with (one snapshot).
    pub export_connections: usize,
    /// Connections a restore into new tables loads with.
    pub restore_connections: usize,
    /// Stops a create or a restore from outside (SIGINT / SIGTERM in the
    /// CLI, the deadline in Lambda); never triggered unless someone does.
    pub interrupt: crate::interrupt::Interrupt,
    /// Where the erasure ledger's head is kept (a file locally, a secret
    /// in AWS); `None`: the ledger is checked as a chain only.
    pub ledger_head: Option<crate::ledger_head::SharedHeadStore>,
    /// The change-capture slot (`BACKUP_PITR_SLOT`): a backup of a database
    /// that has it records where replay starts. `None`: never looked for.
    pub pitr_slot: Option<String>,
    /// The change-capture publication (`BACKUP_PITR_PUBLICATION`), whose
    /// tables' catalog fingerprint a backup with the slot records.
    pub pitr_publication: Option<String>,
}

impl Services {
    pub fn new(
        store: SharedStore,
        settings: &Settings,
        actor: impl Into<String>,
        metrics: MetricsSink,
    ) -> Self {
        Self {
            repository: BackupRepository::new(store.clone()).with_keyring(settings.keyring.clone()),
            audit: AuditTrail::new(store),
            notifier: Notifier::new(settings.webhook_url.clone(), settings.webhook_secret.clone()),
            metrics,
            keyring: settings.keyring.clone(),
            actor: actor.into(),
            progress: Box::new(Silent),
            allowed_regions: settings.allowed_regions.clone(),
            anomaly_threshold_percent: settings.anomaly_threshold_percent,
            storage_budget_bytes: settings.storage_budget_bytes,
            retention_days: settings.retention.retention_days,
            export_connections: settings.export_connections,
            restore_connections: settings.restore_connections,
            interrupt: crate::interrupt::Interrupt::new(),
            ledger_head: settings.ledger_head_file.as_ref().map(|path| {
                std::sync::Arc::new(crate::ledger_head::FileHeadStore::new(path))
                    as crate::ledger_head::SharedHeadStore
            }),
            // An invalid name is refused by `pitr` itself; a backup only
            // records the position of a slot that is there.
            pitr_slot: crate::changes::PitrNames::from_env().ok().map(|names| names.slot),
            pitr_publication: crate::changes::PitrNames::from_env()
                .ok()
                .map(|names| names.publication),
        }
    }

    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The erasure ledger of this repository, anchored by its head.
    pub fn ledger(&self) -> crate::erasure::ErasureLedger {
        crate::erasure::ErasureLedger::new(self.repository.store().clone(), self.ledger_head.clone())
    }

    fn keyring(&self) -> Result<&Keyring, OperationError> {
        self.keyring.as_ref().ok_or(OperationError::MissingKey)
    }

    /// Backups newest first, verification records merged in.
    pub async fn list(&self) -> Result<Vec<BackupMetadata>, OperationError> {
        Ok(self.repository.list().await?)
    }

    /// The one way an operation reports its end: metrics, the audit record
    /// and the webhook, all from the same facts.
    async fn report(&self, finished: Finished) {
        if !finished.metrics.is_empty() {
            finished.metrics.emit(&self.metrics);
        }
        self.audit
            .record(AuditRecord {
                time: chrono::Utc::now(),
                operation: finished.operation,
                backup_id: finished.backup_id,
                actor: finished.actor.unwrap_or_else(|| self.actor.clone()),
                trigger: finished.trigger,
                reason: finished.reason,
                outcome: if finished.error.is_some() {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                error: finished.error,
                details: finished.details,
            })
            .await;
        match finished.notification {
            Notification::None => {}
            Notification::Event { event, payload } => self.notifier.event(event, payload).await,
            Notification::Failure { message, context } => self.notifier.failure(&message, context).await,
        }
    }

    /// The `Timeout` metric alone, for an operation stopped at the Lambda
    /// deadline that reported its own failure (an interrupted create or
    /// restore, which undid its work first).
    pub fn count_timeout(&self, operation: Operation) {
        Finished::new(operation)
            .metrics
            .with("Timeout", 1.0, Unit::Count)
            .emit(&self.metrics);
    }

    /// Reports an operation that was stopped from outside before it could
    /// report itself (the Lambda deadline): a `Timeout` metric, and for
    /// create a `BackupFailure` too, so the failure alarm sees it.
    pub async fn report_stopped(&self, operation: Operation, message: String, details: Value) {
        let mut finished = Finished::new(operation);
        finished.metrics = finished.metrics.with("Timeout", 1.0, Unit::Count);
        if operation == Operation::Create {
            finished.metrics = finished.metrics.with("BackupFailure", 1.0, Unit::Count);
        }
        finished.error = Some(message.clone());
        finished.details = details;
        finished.notification = Notification::Failure {
            message,
            context: serde_json::json!({"operation": operation}),
        };
        self.report(finished).await;
    }
}

/// The operations, as audit records, metrics and logs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Create,
    Verify,
    Restore,
    Prune,
    /// A step of a key rotation.
    RotateKey,
    /// An erasure request added to the ledger (right to deletion).
    Erase,
    /// An audit report written.
    Report,
    /// Objects under `erasures/` set aside as not being records (break-glass).
    LedgerSetAside,
    /// A change capture run (point-in-time recovery).
    Capture,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Verify => "verify",
            Self::Restore => "restore",
            Self::Prune => "prune",
            Self::RotateKey => "rotate-key",
            Self::Erase => "erase",
            Self::Report => "report",
            Self::LedgerSetAside => "ledger-set-aside",
            Self::Capture => "capture",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a webhook hears about a finished operation.
enum Notification {
    None,
    Event { event: &'static str, payload: Value },
    Failure { message: String, context: Value },
}

/// The facts of one finished operation, reported by [`Services::report`].
struct Finished {
    operation: Operation,
    backup_id: Option<String>,
    /// Who asked; the process's actor when nobody is named.
    actor: Option<String>,
    trigger: Option<Trigger>,
    reason: Option<String>,
    /// `None` when the operation succeeded.
    error: Option<String>,
    details: Value,
    metrics: MetricSet,
    notification: Notification,
}

impl Finished {
    fn new(operation: Operation) -> Self {
        Self {
            operation,
            backup_id: None,
            actor: None,
            trigger: None,
            reason: None,
            error: None,
            details: Value::Null,
            metrics: MetricSet::new(operation.as_str()),
            notification: Notification::None,
        }
    }
}

fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod debug_tests {
    use super::*;
    use crate::container::ContainerOptions;
    use crate::metadata::BackupRequest;
    use crate::repository::BackupSelector;

    #[test]
    fn requests_print_their_database_urls_without_passwords() {
        // Given each request that carries a connection string with a password
        let url = |db: &str| format!("postgres://app:pw-5ecret-{db}@db.internal:5432/{db}?sslmode=require");
        let create = CreateRequest {
            database_url: url("carwash"),
            tables: Default::default(),
            request: BackupRequest {
                trigger: Trigger::Manual,
                reason: None,
                requested_by: None,
            },
            container: ContainerOptions::default(),
            accepted_loss: Default::default(),
        };
        let verify = VerifyRequest {
            selector: BackupSelector::Latest,
            depth: crate::metadata::VerificationDepth::Deep,
            scratch_url: Some(url("postgres")),
            checks: Vec::new(),
        };
        let restore = RestoreRequest {
            selector: BackupSelector::Latest,
            tables: Default::default(),
            database_url: Some(url("carwash")),
            target_url: Some(url("carwash_restored")),
            safety_backup: true,
            confirmation: Confirmation::DatabaseName("carwash".into()),
            replace_existing: false,
            reason: None,
            requested_by: None,
            container: ContainerOptions::default(),
            create_roles: None,
            create_database: false,
            no_tablespaces: false,
            no_security_labels: false,
            large_objects: false,
            at: None,
        };
        // When they are printed with {:?} (a log line, a panic message)
        for shown in [
            format!("{create:?}"),
            format!("{verify:?}"),
            format!("{restore:?}"),
        ] {
            // Then the host and database show, the password never
            assert!(!shown.contains("pw-5ecret"), "{shown}");
            assert!(shown.contains("app:<redacted>@db.internal:5432/"), "{shown}");
        }
    }
}
