//! Everything a function needs, built once per cold start.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use backup_core::Keyring;
use backup_core::config::{ConfigError, Settings};
use backup_core::metadata::VerificationDepth;
use backup_core::metrics::MetricsSink;
use backup_core::operations::{Operation, OperationError, Services};
use lambda_runtime::Context;
use serde_json::json;
use zeroize::Zeroizing;

use crate::HandlerError;
use crate::secrets::{ConnectionDefaults, SecretsSource, database_url_from_secret};

pub struct Environment {
    pub settings: Settings,
    pub services: Services,
    /// From `DATABASE_SECRET_ARN` (RDS secret) or `DATABASE_URL`; replaced
    /// when a rotated password makes the server refuse the old one.
    database_url: Mutex<Option<Zeroizing<String>>>,
    database_secret: Option<DatabaseSecret>,
    /// Time kept free before the deadline to abort and report cleanly.
    pub deadline_margin: Duration,
    /// `BACKUP_FUNCTION_TIMEOUT_SECONDS`: this function's timeout, which a
    /// create is measured against (unset: the time the invocation had left
    /// when it started, which in Lambda is the timeout).
    pub function_timeout: Option<Duration>,
    /// `BACKUP_RESTORE_TIMEOUT_SECONDS`: the restore function's timeout,
    /// which the restore a deep verification measured is held against
    /// (unset: this invocation's, as for a create).
    pub restore_timeout: Option<Duration>,
    /// `VERIFY_EVENT_DEPTH`: how deeply a new backup object is verified.
    pub verify_event_depth: VerificationDepth,
    /// `VERIFY_METADATA_WAIT_SECONDS`: how long a new object's metadata is awaited.
    pub metadata_wait: Duration,
    /// Secrets Manager, for the key rotation steps and keyring refreshes.
    pub secrets: SecretsSource,
    /// `BACKUP_KEYRING_SECRET_ARN` and a digest of the keyring read at the
    /// cold start, to notice a rotation since.
    keyring_secret: Option<(String, [u8; 32])>,
    /// `BACKUP_PITR_SLOT` and `BACKUP_PITR_PUBLICATION` (change capture).
    pub pitr_names: backup_core::changes::PitrNames,
    /// `PITR_ENABLE_ON_FIRST_RUN` (the template's `EnablePitr`): the capture
    /// function sets capture up when the database has never had it.
    pub pitr_enable_on_first_run: bool,
}

/// Where the database credentials come from, to fetch them again.
struct DatabaseSecret {
    arn: String,
    secrets: SecretsSource,
    defaults: ConnectionDefaults,
}

impl DatabaseSecret {
    async fn url(&self) -> Result<Zeroizing<String>, HandlerError> {
        let secret = self.secrets.get(&self.arn).await?;
        database_url_from_secret(&self.arn, &secret, &self.defaults)
    }
}

/// The AWS configuration from the same lookup as every other setting
/// (in Lambda: the credentials, region and endpoint the runtime sets).
async fn aws_config(get: &impl Fn(&str) -> Option<String>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        loader = loader.credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            id,
            secret,
            get("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    if let Some(region) = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")) {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(endpoint) = get("AWS_ENDPOINT_URL") {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

fn invalid(variable: &'static str, value: String, expected: &'static str) -> HandlerError {
    OperationError::from(ConfigError::Invalid {
        variable,
        value,
        expected,
    })
    .into()
}

impl Environment {
    /// Reads the process environment and the secrets it points to.
    pub async fn load() -> Result<Self, HandlerError> {
        Self::load_with(|name| std::env::var(name).ok()).await
    }

    /// `BACKUP_KEYRING_SECRET_ARN` (keyring JSON or a bare 64-hex key) and
    /// `DATABASE_SECRET_ARN` (RDS shape) win over `BACKUP_ENCRYPTION_KEY`
    /// and `DATABASE_URL`; `BACKUP_SCRATCH_DATABASE_SECRET_ARN` over
    /// `BACKUP_SCRATCH_DATABASE_URL`. Everything, AWS credentials included,
    /// is read through `lookup`.
    pub async fn load_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, HandlerError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut settings = Settings::from_lookup(&lookup).map_err(OperationError::from)?;
        let aws = aws_config(&get).await;
        let defaults = ConnectionDefaults {
            host: get("DATABASE_HOST"),
            port: match get("DATABASE_PORT") {
                None => None,
                Some(port) => Some(
                    port.parse::<u16>()
                        .map_err(|_| invalid("DATABASE_PORT", port, "a TCP port number"))?,
                ),
            },
            dbname: get("DATABASE_NAME"),
            sslmode: get("DATABASE_SSLMODE"),
            missing_host: None,
        };
        let secrets = SecretsSource::with_config(&aws);
        let mut keyring_secret = None;
        if let Some(arn) = get("BACKUP_KEYRING_SECRET_ARN") {
            let secret = secrets.get(&arn).await?;
            settings.keyring = Some(
                Keyring::from_secret_string(&secret, "BACKUP_KEYRING_SECRET_ARN")
                    .map_err(OperationError::from)?,
            );
            keyring_secret = Some((arn, digest(&secret)));
        }
        let mut database_url = settings.database_url.clone().map(Zeroizing::new);
        let database_secret = get("DATABASE_SECRET_ARN").map(|arn| DatabaseSecret {
            arn,
            secrets: secrets.clone(),
            defaults: defaults.clone(),
        });
        if let Some(secret) = &database_secret {
            database_url = Some(secret.url().await?);
        }
        if let Some(arn) = get("BACKUP_SCRATCH_DATABASE_SECRET_ARN") {
            // Deep verification creates its scratch database beside the
            // server's maintenance database. A secret without a host (an
            // RDS-managed one) takes BACKUP_SCRATCH_DATABASE_HOST, never
            // DATABASE_HOST: scratch databases are created and dropped there,
            // and that must never happen on the production server.
            let scratch = DatabaseSecret {
                arn,
                secrets: secrets.clone(),
                defaults: ConnectionDefaults {
                    host: get("BACKUP_SCRATCH_DATABASE_HOST"),
                    port: match get("BACKUP_SCRATCH_DATABASE_PORT") {
                        None => None,
                        Some(port) => Some(port.parse::<u16>().map_err(|_| {
                            invalid("BACKUP_SCRATCH_DATABASE_PORT", port, "a TCP port number")
                        })?),
                    },
                    dbname: Some("postgres".into()),
                    sslmode: defaults.sslmode.clone(),
                    missing_host: Some(
                        "a host: the scratch secret has none (an RDS-managed master secret), so set BACKUP_SCRATCH_DATABASE_HOST (template parameter ScratchDatabaseHost); the production DATABASE_HOST is never used for scratch databases",
                    ),
                },
            };
            settings.scratch_database_url = Some(scratch.url().await?.as_str().to_owned());
        }
        let verify_event_depth = match get("VERIFY_EVENT_DEPTH") {
            None => VerificationDepth::Full,
            Some(depth) => depth
                .parse()
                .map_err(|_| invalid("VERIFY_EVENT_DEPTH", depth, "quick, full or deep"))?,
        };
        let metadata_wait = match get("VERIFY_METADATA_WAIT_SECONDS") {
            None => Duration::from_secs(30),
            Some(seconds) => Duration::from_secs(seconds.parse().map_err(|_| {
                invalid(
                    "VERIFY_METADATA_WAIT_SECONDS",
                    seconds,
                    "a whole number of seconds",
                )
            })?),
        };
        let margin_ms = match get("BACKUP_DEADLINE_MARGIN_MS") {
            None => 15_000,
            Some(ms) => ms
                .parse()
                .map_err(|_| invalid("BACKUP_DEADLINE_MARGIN_MS", ms, "a whole number of milliseconds"))?,
        };
        let pitr_names = backup_core::changes::PitrNames::from_lookup(get).map_err(|reason| {
            HandlerError::Operation(OperationError::Config(ConfigError::Invalid {
                variable: "BACKUP_PITR_SLOT / BACKUP_PITR_PUBLICATION",
                value: reason,
                expected: "lower-case letters, digits and _, at most 63",
            }))
        })?;
        let pitr_enable_on_first_run = match get("PITR_ENABLE_ON_FIRST_RUN").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(invalid(
                    "PITR_ENABLE_ON_FIRST_RUN",
                    other.to_owned(),
                    "true or false",
                ));
            }
        };
        let function_timeout = seconds_setting(&get, "BACKUP_FUNCTION_TIMEOUT_SECONDS")?;
        let restore_timeout = seconds_setting(&get, "BACKUP_RESTORE_TIMEOUT_SECONDS")?;
        let store = settings
            .open_store_with(Some(&aws))
            .await
            .map_err(OperationError::from)?;
        let actor = get("AWS_LAMBDA_FUNCTION_NAME")
            .map(|f| format!("lambda:{f}"))
            .unwrap_or_else(|| "lambda".into());
        let metrics = match get("BACKUP_METRICS") {
            None => MetricsSink::Stdout,
            Some(value) => MetricsSink::from_setting(&value)
                .ok_or_else(|| invalid("BACKUP_METRICS", value, "stdout, stderr, off or file:PATH"))?,
        };
        let mut services = Services::new(store, &settings, actor, metrics);
        // The names this environment gives (Services::new reads the
        // process's, the same in Lambda; not so when the environment is
        // given otherwise, as the task's order or a test does).
        services.pitr_slot = Some(pitr_names.slot.clone());
        services.pitr_publication = Some(pitr_names.publication.clone());
        if let Some(arn) = get("BACKUP_LEDGER_HEAD_SECRET_ARN") {
            services.ledger_head = Some(std::sync::Arc::new(crate::secrets::SecretLedgerHead::new(
                &secrets, arn,
            )));
        }
        Ok(Self {
            settings,
            services,
            database_url: Mutex::new(database_url),
            database_secret,
            deadline_margin: Duration::from_millis(margin_ms),
            function_timeout,
            restore_timeout,
            verify_event_depth,
            metadata_wait,
            secrets,
            keyring_secret,
            pitr_names,
            pitr_enable_on_first_run,
        })
    }

    /// Whether the keyring secret changed since this environment was
    /// loaded (a rotation): a warm function must then load it again, or it
    /// would not know the key of the backups made since. One
    /// GetSecretValue; an unreadable secret counts as unchanged (the
    /// operation then reports what it cannot read).
    pub async fn keyring_changed(&self) -> bool {
        let Some((arn, loaded)) = &self.keyring_secret else {
            return false;
        };
        match self.secrets.get(arn).await {
            Ok(secret) => digest(&secret) != *loaded,
            Err(error) => {
                tracing::warn!(error = %error.chain(), "could not check the keyring secret for a rotation");
                false
            }
        }
    }

    fn current_database_url(&self) -> Option<Zeroizing<String>> {
        self.database_url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The database URL, checked with one connection first: when the server
    /// refuses the password (SQLSTATE 28P01: the secret was rotated since
    /// the cold start), the secret is fetched again once. Any other
    /// connection problem is left for the operation to report.
    pub async fn database_url(&self, purpose: &'static str) -> Result<Zeroizing<String>, HandlerError> {
        let url = self.current_database_url().ok_or(HandlerError::Operation(
            OperationError::MissingDatabaseUrl(purpose),
        ))?;
        let Some(secret) = &self.database_secret else {
            return Ok(url);
        };
        match backup_core::postgres::connect(&url).await {
            Err(error) if is_authentication_failure(&error) => {
                tracing::warn!(
                    arn = %secret.arn,
                    "the database refused the password; fetching the database secret again (rotated?)"
                );
                let fresh = secret.url().await?;
                *self
                    .database_url
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
                Ok(fresh)
            }
            _ => Ok(url),
        }
    }

    /// Runs `work` but stops it `deadline_margin` before the invocation's
    /// deadline: the services' interrupt asks it to stop as after a failure
    /// (a create aborts its upload, a restore removes what it created) and
    /// it gets the margin to do so; work that does not finish even then is
    /// dropped and the timeout reported for it.
    pub async fn within_deadline<T>(
        &self,
        context: &Context,
        operation: Operation,
        work: impl Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        let remaining = time_left(context.deadline, SystemTime::now());
        let budget = remaining.saturating_sub(self.deadline_margin);
        let interrupt = &self.services.interrupt;
        // A warm environment may have stopped an earlier invocation.
        interrupt.reset();
        if budget.is_zero() {
            return Err(self.stopped(context, operation, remaining, NOTHING_CHANGED).await);
        }
        let mut work = std::pin::pin!(work);
        if let Ok(result) = tokio::time::timeout(budget, work.as_mut()).await {
            return result;
        }
        // Stop as after a failure: a restore removes what it created (the
        // new-tables restore commits step by step, so dropping it would
        // leave those steps behind), a create publishes nothing, and each
        // reports its own failure. Three quarters of the margin are for
        // that; the rest for the report.
        interrupt.trigger("the Lambda deadline");
        let undo = self.deadline_margin * 3 / 4;
        match tokio::time::timeout(undo, work).await {
            Ok(Err(error)) if matches!(&error, HandlerError::Operation(e) if e.is_interrupted()) => {
                tracing::error!(error = %error.chain(), "stopped at the Lambda deadline");
                self.services.count_timeout(operation);
                Err(HandlerError::Timeout {
                    operation,
                    remaining_ms: millis(remaining),
                    outcome: NOTHING_CHANGED,
                })
            }
            // Finished (or failed on its own) in the meantime.
            Ok(result) => result,
            // Dropped: an upload is aborted and a transaction rolls back,
            // but steps a restore into new tables committed stay.
            Err(_) if operation == Operation::Restore => Err(self
                .stopped(
                    context,
                    operation,
                    remaining,
                    "it could not finish undoing its work in time: a restore into new tables may have left tables it created in the target (drop them before restoring again, or rebuild them with backupctl restore --replace-existing)",
                )
                .await),
            Err(_) => Err(self.stopped(context, operation, remaining, NOTHING_CHANGED).await),
        }
    }

    /// Reports an operation stopped before it could report itself.
    async fn stopped(
        &self,
        context: &Context,
        operation: Operation,
        remaining: Duration,
        outcome: &'static str,
    ) -> HandlerError {
        let error = HandlerError::Timeout {
            operation,
            remaining_ms: millis(remaining),
            outcome,
        };
        tracing::error!(error = %error, "stopping before the Lambda deadline");
        self.services
            .report_stopped(
                operation,
                error.to_string(),
                json!({"requestId": context.request_id}),
            )
            .await;
        error
    }
}

/// A positive number of seconds (fractions allowed), or `None` when unset.
fn seconds_setting(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<Option<Duration>, HandlerError> {
    let Some(text) = get(variable).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match text.parse::<f64>().map(Duration::try_from_secs_f64) {
        Ok(Ok(duration)) if !duration.is_zero() => Ok(Some(duration)),
        _ => Err(invalid(variable, text, "a positive number of seconds")),
    }
}

const NOTHING_CHANGED: &str = "nothing was published or changed";

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// SHA-256 of a secret, to compare versions without keeping a second copy.
fn digest(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

fn is_authentication_failure(error: &backup_core::postgres::PostgresError) -> bool {
    error
        .database_error()
        .is_some_and(|db| db.code() == &backup_core::postgres::SqlState::INVALID_PASSWORD)
}

/// Time left before `deadline_ms`. Lambda sends epoch milliseconds; the
/// `cargo lambda watch` emulator sends a bare duration (600000), which read
/// as a date would be in 1970 and stop every invocation at once — so a value
/// too small to be a date of this century counts as milliseconds from now.
pub(crate) fn time_left(deadline_ms: u64, now: SystemTime) -> Duration {
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
