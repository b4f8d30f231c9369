//! Everything a function needs, built once per cold start.

use std::time::{Duration, SystemTime};

use backup_core::config::Settings;
use backup_core::metrics::MetricsSink;
use backup_core::operations::{OperationError, Services};
use backup_core::{Keyring, audit};
use lambda_runtime::Context;
use serde_json::json;

use crate::HandlerError;
use crate::secrets::{SecretsSource, database_url_from_secret};

pub struct Environment {
    pub settings: Settings,
    pub services: Services,
    /// From `DATABASE_SECRET_ARN` (RDS secret) or `DATABASE_URL`.
    pub database_url: Option<String>,
    /// Time kept free before the deadline to abort and report cleanly.
    pub deadline_margin: Duration,
}

impl Environment {
    /// Reads the process environment and the secrets it points to.
    pub async fn load() -> Result<Self, HandlerError> {
        Self::load_with(|name| std::env::var(name).ok()).await
    }

    /// `BACKUP_KEYRING_SECRET_ARN` (keyring JSON or a bare 64-hex key) and
    /// `DATABASE_SECRET_ARN` (RDS shape) win over `BACKUP_ENCRYPTION_KEY`
    /// and `DATABASE_URL`.
    pub async fn load_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, HandlerError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut settings = Settings::from_lookup(&lookup).map_err(OperationError::from)?;
        let mut database_url = settings.database_url.clone();
        let keyring_arn = get("BACKUP_KEYRING_SECRET_ARN");
        let database_arn = get("DATABASE_SECRET_ARN");
        if keyring_arn.is_some() || database_arn.is_some() {
            let secrets = SecretsSource::from_environment().await;
            if let Some(arn) = keyring_arn {
                let secret = secrets.get(&arn).await?;
                settings.keyring = Some(
                    Keyring::from_secret_string(&secret, "BACKUP_KEYRING_SECRET_ARN")
                        .map_err(OperationError::from)?,
                );
            }
            if let Some(arn) = database_arn {
                let secret = secrets.get(&arn).await?;
                let url = database_url_from_secret(&arn, &secret, get("DATABASE_SSLMODE").as_deref())?;
                database_url = Some(url.as_str().to_owned());
            }
        }
        let store = settings.open_store().await.map_err(OperationError::from)?;
        let actor = get("AWS_LAMBDA_FUNCTION_NAME")
            .map(|f| format!("lambda:{f}"))
            .unwrap_or_else(|| "lambda".into());
        let margin_ms = get("BACKUP_DEADLINE_MARGIN_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(15_000);
        let services = Services::new(store, &settings, actor, MetricsSink::Stdout);
        Ok(Self {
            settings,
            services,
            database_url,
            deadline_margin: Duration::from_millis(margin_ms),
        })
    }

    pub fn database_url(&self, purpose: &'static str) -> Result<&str, HandlerError> {
        self.database_url
            .as_deref()
            .ok_or(HandlerError::Operation(OperationError::MissingDatabaseUrl(
                purpose,
            )))
    }

    /// Runs `work` but gives up `deadline_margin` before the invocation's
    /// deadline. Dropping the work aborts an upload in progress and rolls
    /// back an open restore transaction; the timeout is then reported.
    pub async fn within_deadline<T>(
        &self,
        context: &Context,
        operation: &'static str,
        work: impl Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        let remaining = time_left(context.deadline, SystemTime::now());
        let budget = remaining.saturating_sub(self.deadline_margin);
        let outcome = if budget.is_zero() {
            None
        } else {
            tokio::time::timeout(budget, work).await.ok()
        };
        match outcome {
            Some(result) => result,
            None => {
                let error = HandlerError::Timeout {
                    operation,
                    remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                };
                tracing::error!(error = %error, "stopping before the Lambda deadline");
                backup_core::metrics::MetricSet::new(operation)
                    .with("Timeout", 1.0, backup_core::metrics::Unit::Count)
                    .emit(self.services.metrics);
                self.services
                    .audit
                    .record(audit::AuditRecord {
                        time: chrono::Utc::now(),
                        operation,
                        backup_id: None,
                        actor: self.services.actor.clone(),
                        trigger: None,
                        reason: None,
                        outcome: audit::Outcome::Failure,
                        error: Some(error.to_string()),
                        details: json!({"requestId": context.request_id}),
                    })
                    .await;
                self.services
                    .notifier
                    .failure(&error.to_string(), json!({"operation": operation}))
                    .await;
                Err(error)
            }
        }
    }
}

/// Time left before `deadline_ms`. Lambda sends epoch milliseconds; the
/// `cargo lambda watch` emulator sends a bare duration (600000), which read
/// as a date would be in 1970 and stop every invocation at once — so a value
/// too small to be a date of this century counts as milliseconds from now.
fn time_left(deadline_ms: u64, now: SystemTime) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms < YEAR_2001_MS {
        return Duration::from_millis(deadline_ms);
    }
    (SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms))
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_epoch_milliseconds_or_an_emulators_duration() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_680_000_000);
        assert_eq!(time_left(1_795_680_090_000, now), Duration::from_secs(90));
        assert_eq!(time_left(1_795_679_000_000, now), Duration::ZERO, "already past");
        assert_eq!(
            time_left(600_000, now),
            Duration::from_secs(600),
            "cargo lambda watch"
        );
    }
}
