//! Handler errors as Lambda diagnostics. `errorType` tells whether a retry
//! can help: `Retryable.*` (storage, database or a secret unreachable) or
//! `Fatal.*` (bad input, refused restore, damaged backup, bad settings, and
//! a run that hit its deadline: it would only hit it again).

use backup_core::changes::ChangesError;
use backup_core::operations::OperationError;
use lambda_runtime::Diagnostic;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("the event is not one this function accepts: {0}")]
    InvalidEvent(String),
    #[error("{0}")]
    Refused(String),
    #[error(
        "stopped before the Lambda deadline ({operation} needs more than the {remaining_ms} ms left); {outcome}"
    )]
    Timeout {
        operation: backup_core::operations::Operation,
        remaining_ms: u64,
        /// What the stop left: nothing, or what could not be undone in time.
        outcome: &'static str,
    },
    #[error("the metadata of {0} did not appear; the backup is not finished (or failed)")]
    MetadataMissing(String),
    #[error("could not read secret {arn}")]
    Secret {
        arn: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("secret {arn} is not in the expected shape: {expected}")]
    MalformedSecret { arn: String, expected: &'static str },
    #[error(transparent)]
    Operation(#[from] OperationError),
}

impl HandlerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            // A run that hit its deadline would hit it again: retrying only
            // holds the database for another 15 minutes.
            Self::MetadataMissing(_) | Self::Secret { .. } => true,
            Self::Timeout { .. }
            | Self::InvalidEvent(_)
            | Self::Refused(_)
            | Self::MalformedSecret { .. } => false,
            Self::Operation(error) => matches!(
                error,
                OperationError::Storage(_)
                    | OperationError::Repository(backup_core::repository::RepositoryError::Storage(_))
                    | OperationError::Postgres(backup_core::postgres::PostgresError::Connect(_))
                    | OperationError::Changes(
                        ChangesError::Storage(_)
                            | ChangesError::Postgres(backup_core::postgres::PostgresError::Connect(_))
                    )
            ),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::InvalidEvent(_) => "InvalidEvent",
            Self::Refused(_) => "Refused",
            Self::Timeout { .. } => "Timeout",
            Self::MetadataMissing(_) => "MetadataMissing",
            Self::Secret { .. } => "SecretUnavailable",
            Self::MalformedSecret { .. } => "MalformedSecret",
            Self::Operation(OperationError::Config(_)) => "Configuration",
            Self::Operation(OperationError::NotConfirmed) => "Refused",
            Self::Operation(OperationError::Request(_)) => "InvalidRequest",
            Self::Operation(OperationError::Container(_)) => "Integrity",
            Self::Operation(OperationError::Postgres(_)) => "Database",
            Self::Operation(OperationError::Storage(_) | OperationError::Repository(_)) => "Storage",
            Self::Operation(OperationError::Changes(error)) => match error {
                ChangesError::ChainBroken { .. } => "ChainBroken",
                ChangesError::NotEnabled(_) => "PitrNotEnabled",
                ChangesError::Prerequisite(_) | ChangesError::NothingToPublish(_) => "Configuration",
                ChangesError::Postgres(_) | ChangesError::Query { .. } => "Database",
                ChangesError::Storage(_) => "Storage",
                ChangesError::MissingKey | ChangesError::Keyring(_) => "Configuration",
                _ => "Capture",
            },
            Self::Operation(_) => "Operation",
        }
    }

    /// The whole cause chain on one line (never a key: errors carry none).
    pub fn chain(&self) -> String {
        match self {
            Self::Operation(error) => error.chain(),
            other => {
                let mut text = other.to_string();
                let mut source = std::error::Error::source(other);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
        }
    }
}

impl From<HandlerError> for Diagnostic {
    fn from(error: HandlerError) -> Self {
        let retry = if error.is_retryable() {
            "Retryable"
        } else {
            "Fatal"
        };
        Diagnostic {
            error_type: format!("{retry}.{}", error.kind()),
            error_message: error.chain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use backup_core::storage::StorageError;

    use super::*;

    fn error_type(error: HandlerError) -> String {
        Diagnostic::from(error).error_type
    }

    #[tokio::test]
    async fn only_what_a_retry_can_fix_is_retryable() {
        // Storage, the database's reachability and late metadata can heal
        let storage = OperationError::Storage(StorageError::Unavailable("503".into()));
        assert_eq!(error_type(storage.into()), "Retryable.Storage");
        let unreachable =
            backup_core::postgres::connect("postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
                .await
                .unwrap_err();
        assert_eq!(
            error_type(OperationError::Postgres(unreachable).into()),
            "Retryable.Database"
        );
        assert_eq!(
            error_type(HandlerError::MetadataMissing("backup-1-00000000".into())),
            "Retryable.MetadataMissing"
        );
        // Bad input, refusals, damage and deadlines come back the same
        let bad_request = "schedule"
            .parse::<backup_core::request::ManualTrigger>()
            .unwrap_err();
        assert_eq!(
            error_type(OperationError::Request(bad_request).into()),
            "Fatal.InvalidRequest"
        );
        assert_eq!(error_type(OperationError::NotConfirmed.into()), "Fatal.Refused");
        assert_eq!(
            error_type(HandlerError::InvalidEvent("{}".into())),
            "Fatal.InvalidEvent"
        );
        assert_eq!(
            error_type(HandlerError::Timeout {
                operation: backup_core::operations::Operation::Create,
                remaining_ms: 1,
                outcome: "nothing was published or changed",
            }),
            "Fatal.Timeout"
        );
        // A broken change chain and capture never set up say so by name
        let broken = ChangesError::ChainBroken {
            slot: "pgbackup_pitr".into(),
            from: "0/1A2B3C8".parse().unwrap(),
            reason: "the slot is gone".into(),
            advice: "take a base backup".into(),
            new_base: None,
        };
        let diagnostic = Diagnostic::from(HandlerError::from(OperationError::from(broken)));
        assert_eq!(diagnostic.error_type, "Fatal.ChainBroken");
        assert!(diagnostic.error_message.contains("broken from LSN 0/1A2B3C8"));
        assert_eq!(
            error_type(OperationError::from(ChangesError::NotEnabled("no slot".into())).into()),
            "Fatal.PitrNotEnabled"
        );
        assert_eq!(
            error_type(
                OperationError::from(ChangesError::Storage(StorageError::Unavailable("503".into()))).into()
            ),
            "Retryable.Storage"
        );
        let damaged = backup_core::ContainerError::NotABackup;
        assert_eq!(
            error_type(OperationError::Container(damaged).into()),
            "Fatal.Integrity"
        );
    }
}
