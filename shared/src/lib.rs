//! Core of the serverless PostgreSQL backup system: everything the CLI
//! (`cli/`, crate `backupctl`) and the four Lambda functions (`functions/`,
//! on the `backup-lambda` crate in `functions/common`) share. This crate
//! lives in the folder `shared/` and is named `backup-core`.
//!
//! Start with these three:
//! * [`operations`]: create, verify, restore and prune, each reported the
//!   same way (audit record, metrics, webhook) — what the front ends call.
//! * [`storage`]: the [`storage::BackupStore`] trait and its local, S3 and
//!   Azure Blob backends (streaming multipart uploads, ranged reads).
//! * [`repository`]: backups as storage holds them: object and metadata
//!   keys, listing, `latest` / `latest-verified`, verification records.
//!
//! Then:
//! * [`request`]: what people and schedules ask for, parsed once for both
//!   the CLI's flags and the Lambda payloads.
//! * [`config`]: settings from the user's environment variables.
//! * [`container`]: the backup object format (header, sections, trailer).
//! * [`envelope`]: per-backup keys and authenticated, encrypted chunks.
//! * [`keyring`]: master keys and key rotation.
//! * [`checksum`]: streaming SHA-256 of stored objects.
//! * [`metadata`]: the JSON document stored beside each backup.
//! * [`postgres`]: consistent export and transactional restore over COPY,
//!   with the restore plan ([`postgres::plan`]) kept free of I/O.
//! * [`retention`]: the pure prune plan.
//! * [`audit`], [`metrics`], [`notify`]: the trail, CloudWatch EMF lines and
//!   the webhook an operation reports to.
//! * [`progress`]: what a terminal progress bar is told.
//! * [`anomaly`]: a new backup far from the median of the ones before it.
//! * [`erasure`]: the erasure ledger (right to deletion) every restore applies.
//! * [`drill`]: disaster-recovery drills: named application checks run on a
//!   restored copy.
//! * [`interrupt`]: a request from outside to stop (a signal, a deadline).

pub mod anomaly;
pub mod audit;
pub mod changes;
pub mod checksum;
pub mod config;
pub mod container;
pub mod drill;
pub mod envelope;
pub mod erasure;
pub mod identity;
pub mod interrupt;
pub mod keyring;
pub mod ledger_head;
pub mod metadata;
pub mod metrics;
pub mod notify;
pub mod operations;
pub mod postgres;
pub mod progress;
pub mod repository;
pub mod request;
pub mod retention;
pub mod storage;

pub use container::{
    BackupReader, Compression, ContainerError, ContainerOptions, ContainerSummary, ContainerWriter,
    CopyFormat, ObjectSource, SectionEntry, SectionKind, SectionReader,
};
pub use interrupt::Interrupt;
pub use keyring::{KeyId, Keyring, KeyringError, MasterKey};
pub use metadata::{BackupId, BackupMetadata, BackupRequest, MetadataError, SourceDatabase, Trigger};

/// Every error the core returns, each saying what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Postgres(#[from] postgres::PostgresError),
}
