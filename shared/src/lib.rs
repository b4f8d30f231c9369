//! Core of the serverless PostgreSQL backup system.
//!
//! * [`keyring`]: master keys and key rotation.
//! * [`envelope`]: per-backup keys and authenticated, encrypted chunks.
//! * [`container`]: the backup object format (header, sections, trailer).
//! * [`metadata`]: the JSON document stored beside each backup.
//! * [`checksum`]: streaming SHA-256 of stored objects.
//! * [`postgres`]: consistent export and transactional restore over COPY.

pub mod audit;
pub mod checksum;
pub mod config;
pub mod container;
pub mod envelope;
pub mod keyring;
pub mod metadata;
pub mod metrics;
pub mod notify;
pub mod operations;
pub mod postgres;
pub mod progress;
pub mod repository;
pub mod retention;
pub mod storage;

pub use container::{
    BackupReader, Compression, ContainerError, ContainerOptions, ContainerSummary, ContainerWriter,
    ObjectSource, SectionEntry, SectionKind, SectionReader,
};
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
