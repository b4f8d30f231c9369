//! Settings from the environment, with the user's variable names. A bad or
//! missing setting fails at start with a message naming the variable.

use std::path::PathBuf;
use std::sync::Arc;

use crate::container::{Compression, ContainerOptions, CopyFormat, DEFAULT_ZSTD_LEVEL};
use crate::keyring::{Keyring, KeyringError};
use crate::postgres::fidelity::AcceptedLoss;
use crate::retention::RetentionPolicy;
use crate::storage::{
    AzureSettings, AzureStore, LocalStore, MultipartSettings, S3Settings, S3Store, S3WriteOptions,
    SharedStore, StorageError,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "there is no backup folder at {}: point --backup-dir or BACKUP_DIR at the folder that holds the backups (`create` makes a new one)",
        .path.display()
    )]
    MissingBackupFolder { path: std::path::PathBuf },
    #[error("{variable}={value:?} is not valid: {expected}")]
    Invalid {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{variable} is not set: {why}")]
    Missing {
        variable: &'static str,
        why: &'static str,
    },
    #[error(transparent)]
    Key(#[from] KeyringError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Which backend `BACKUP_STORAGE_TYPE` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Local,
    S3,
    Azure,
}

impl std::str::FromStr for StorageKind {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "s3" => Ok(Self::S3),
            "azure" => Ok(Self::Azure),
            _ => Err(ConfigError::Invalid {
                variable: "BACKUP_STORAGE_TYPE",
                value: text.to_owned(),
                expected: "one of local, s3, azure",
            }),
        }
    }
}

/// Where backups are kept, with exactly the settings that backend needs.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// `BACKUP_DIR` (default `./backups`), holding `backups/`, `metadata/`, …
    Local {
        dir: PathBuf,
    },
    S3(S3Settings),
    Azure(AzureSettings),
}

impl StorageSettings {
    pub fn kind(&self) -> StorageKind {
        match self {
            Self::Local { .. } => StorageKind::Local,
            Self::S3(_) => StorageKind::S3,
            Self::Azure(_) => StorageKind::Azure,
        }
    }

    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let kind = match get("BACKUP_STORAGE_TYPE") {
            None => StorageKind::Local,
            Some(value) => value.parse()?,
        };
        Ok(match kind {
            StorageKind::Local => Self::Local {
                dir: PathBuf::from(get("BACKUP_DIR").unwrap_or_else(|| "./backups".into())),
            },
            StorageKind::S3 => Self::S3(s3_settings(get)?),
            StorageKind::Azure => Self::Azure(azure_settings(get)?),
        })
    }
}

#[derive(Clone)]
pub struct Settings {
    pub storage: StorageSettings,
    pub database_url: Option<String>,
    /// From `BACKUP_ENCRYPTION_KEY` (a 64-hex key or a keyring JSON).
    pub keyring: Option<Keyring>,
    pub retention: RetentionPolicy,
    /// `ENABLE_AUTO_BACKUP`: scheduled backups run only when true.
    pub auto_backup: bool,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub container: ContainerOptions,
    /// `BACKUP_SCRATCH_DATABASE_URL`: server for deep verification.
    pub scratch_database_url: Option<String>,
    /// `BACKUP_ALLOW_SCHEMA_LOSS`: kinds of objects a backup may leave out
    /// (recorded in its metadata); any other uncaptured object refuses it.
    pub allow_schema_loss: AcceptedLoss,
    /// `BACKUP_ALLOWED_REGIONS`: regions backups may be written to (empty:
    /// any). Checked before every backup; see `docs/GDPR.md`.
    pub allowed_regions: Vec<String>,
    /// `BACKUP_DRILL_CHECKS`: application checks every deep verification runs
    /// on its restored copy: a file path, or `store:KEY` in the backup store.
    pub drill_checks: Option<String>,
    /// `BACKUP_ANOMALY_THRESHOLD_PERCENT`: a new backup whose size or a
    /// table's rows differ from the median of the last 7 by more than this
    /// is reported (default 50; 0 turns it off).
    pub anomaly_threshold_percent: u32,
    /// `BACKUP_STORAGE_BUDGET_BYTES`: the storage the backups may use; prune
    /// warns at 80 % of it.
    pub storage_budget_bytes: Option<u64>,
    /// `BACKUP_RPO_MINUTES`: the longest allowed time between successful
    /// backups, for the audit report's gaps (default 60).
    pub rpo_minutes: u32,
    /// `BACKUP_EXPORT_CONNECTIONS`: database connections a backup reads
    /// with, sharing one snapshot (default 2, at most 8; 1 reads serially).
    pub export_connections: usize,
    /// `BACKUP_RESTORE_CONNECTIONS`: database connections a restore into
    /// new tables loads with (default 2, at most 8; 1 keeps every restore
    /// one transaction).
    pub restore_connections: usize,
    /// `BACKUP_LEDGER_HEAD_FILE`: where the erasure ledger's head is kept,
    /// outside the backup store (beside the key); see `docs/GDPR.md`.
    pub ledger_head_file: Option<std::path::PathBuf>,
}

/// Shows every setting but the secrets: passwords in URLs, the webhook
/// URL's path (its token) and secret, and the keys (whose own `Debug`
/// shows only their ids).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("storage", &self.storage)
            .field("database_url", &self.database_url.as_deref().map(redact_url))
            .field("keyring", &self.keyring)
            .field("retention", &self.retention)
            .field("auto_backup", &self.auto_backup)
            .field(
                "webhook_url",
                &self.webhook_url.as_deref().map(crate::notify::redact_webhook_url),
            )
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("container", &self.container)
            .field(
                "scratch_database_url",
                &self.scratch_database_url.as_deref().map(redact_url),
            )
            .field("allow_schema_loss", &self.allow_schema_loss)
            .field("allowed_regions", &self.allowed_regions)
            .field("drill_checks", &self.drill_checks)
            .field("anomaly_threshold_percent", &self.anomaly_threshold_percent)
            .field("storage_budget_bytes", &self.storage_budget_bytes)
            .field("rpo_minutes", &self.rpo_minutes)
            .field("export_connections", &self.export_connections)
            .field("restore_connections", &self.restore_connections)
            .finish()
    }
}

/// A connection string with its password replaced, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let mut out = format!("{scheme}://");
        match authority.rsplit_once('@') {
            Some((user_info, host)) => {
                let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
                out.push_str(&format!("{user}:<redacted>@{host}"));
            }
            None => out.push_str(authority),
        }
        // Query parameters may carry a password too.
        match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=<redacted>"),
                        _ => pair.to_owned(),
                    })
                    .collect();
                out.push_str(&format!("{path}?{}", query.join("&")));
            }
            None => out.push_str(tail),
        }
        out
    } else {
        // key=value form
        url.split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=<redacted>"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `eu-west-1,eu-central-1` → the regions; each a lowercase region name.
fn allowed_regions(setting: Option<String>) -> Result<Vec<String>, ConfigError> {
    let Some(value) = setting else {
        return Ok(Vec::new());
    };
    let regions: Vec<String> = value.split(',').map(|r| r.trim().to_owned()).collect();
    let valid = |region: &String| {
        !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if regions.iter().all(valid) {
        Ok(regions)
    } else {
        Err(ConfigError::Invalid {
            variable: "BACKUP_ALLOWED_REGIONS",
            value,
            expected: "a comma-separated list of region names, e.g. eu-west-1,eu-central-1",
        })
    }
}

fn nonempty(lookup: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        lookup(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
}

impl Settings {
    /// Reads settings through `lookup` (the process environment in
    /// production, a map in tests; the CLI puts its flags in front).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = nonempty(lookup);
        let storage = StorageSettings::from_lookup(&get)?;
        let keyring = get("BACKUP_ENCRYPTION_KEY")
            .map(|key| Keyring::from_secret_string(&key, "BACKUP_ENCRYPTION_KEY"))
            .transpose()?;
        let retention_days = parse_number(
            get("BACKUP_RETENTION_DAYS"),
            "BACKUP_RETENTION_DAYS",
            30,
            "a whole number of days, at least 1",
        )?;
        if retention_days == 0 {
            return Err(ConfigError::Invalid {
                variable: "BACKUP_RETENTION_DAYS",
                value: "0".into(),
                expected: "a whole number of days, at least 1",
            });
        }
        let keep_newest = parse_number(
            get("BACKUP_KEEP_VERIFIED"),
            "BACKUP_KEEP_VERIFIED",
            3,
            "a whole number",
        )?;
        let hourly_retention_hours = parse_number(
            get("BACKUP_HOURLY_RETENTION_HOURS"),
            "BACKUP_HOURLY_RETENTION_HOURS",
            48,
            "a whole number of hours, at least 1",
        )?;
        if hourly_retention_hours == 0 {
            return Err(ConfigError::Invalid {
                variable: "BACKUP_HOURLY_RETENTION_HOURS",
                value: "0".into(),
                expected: "a whole number of hours, at least 1",
            });
        }
        let auto_backup = get("ENABLE_AUTO_BACKUP")
            .map(|v| parse_bool(&v, "ENABLE_AUTO_BACKUP"))
            .transpose()?
            .unwrap_or(true);
        Ok(Self {
            storage,
            database_url: get("DATABASE_URL"),
            ledger_head_file: get("BACKUP_LEDGER_HEAD_FILE").map(std::path::PathBuf::from),
            keyring,
            retention: RetentionPolicy {
                retention_days: u32::try_from(retention_days).unwrap_or(u32::MAX),
                keep_newest: usize::try_from(keep_newest).unwrap_or(usize::MAX),
                hourly_retention_hours: u32::try_from(hourly_retention_hours).unwrap_or(u32::MAX),
            },
            auto_backup,
            webhook_url: get("BACKUP_WEBHOOK_URL"),
            webhook_secret: get("BACKUP_WEBHOOK_SECRET"),
            container: ContainerOptions {
                compression: compression(&get)?,
                table_copy_format: table_copy_format(&get)?,
                ..ContainerOptions::default()
            },
            scratch_database_url: get("BACKUP_SCRATCH_DATABASE_URL"),
            allow_schema_loss: match get("BACKUP_ALLOW_SCHEMA_LOSS") {
                None => AcceptedLoss::none(),
                Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
                    variable: "BACKUP_ALLOW_SCHEMA_LOSS",
                    value,
                    expected: "a comma-separated list of loss kinds, e.g. inheritance,rule (see docs/POSTGRES.md)",
                })?,
            },
            allowed_regions: allowed_regions(get("BACKUP_ALLOWED_REGIONS"))?,
            drill_checks: get("BACKUP_DRILL_CHECKS"),
            anomaly_threshold_percent: u32::try_from(parse_number(
                get("BACKUP_ANOMALY_THRESHOLD_PERCENT"),
                "BACKUP_ANOMALY_THRESHOLD_PERCENT",
                50,
                "a whole number of percent (0 turns anomaly detection off)",
            )?)
            .unwrap_or(u32::MAX),
            export_connections: parse_connections(get("BACKUP_EXPORT_CONNECTIONS"), "BACKUP_EXPORT_CONNECTIONS")?,
            restore_connections: parse_connections(
                get("BACKUP_RESTORE_CONNECTIONS"),
                "BACKUP_RESTORE_CONNECTIONS",
            )?,
            rpo_minutes: u32::try_from(parse_number(
                get("BACKUP_RPO_MINUTES"),
                "BACKUP_RPO_MINUTES",
                60,
                "a whole number of minutes",
            )?)
            .unwrap_or(u32::MAX)
            .max(1),
            storage_budget_bytes: match get("BACKUP_STORAGE_BUDGET_BYTES") {
                None => None,
                Some(text) => Some(
                    text.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(ConfigError::Invalid {
                            variable: "BACKUP_STORAGE_BUDGET_BYTES",
                            value: text,
                            expected: "a whole number of bytes, more than 0",
                        })?,
                ),
            },
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Opens the configured storage backend.
    pub async fn open_store(&self) -> Result<SharedStore, ConfigError> {
        self.open_store_with(None).await
    }

    /// Opens the configured storage backend; S3 uses `aws` when given,
    /// else the standard AWS configuration chain.
    pub async fn open_store_with(
        &self,
        aws: Option<&aws_config::SdkConfig>,
    ) -> Result<SharedStore, ConfigError> {
        let (store, setting): (SharedStore, &'static str) = match &self.storage {
            StorageSettings::Local { dir } => (
                Arc::new(LocalStore::new(dir.clone())),
                "--backup-dir or BACKUP_DIR",
            ),
            StorageSettings::S3(s3) => (
                Arc::new(match aws {
                    Some(aws) => S3Store::connect_with(aws, s3.clone()),
                    None => S3Store::connect(s3.clone()).await,
                }),
                "S3_BACKUP_BUCKET and S3_PREFIX",
            ),
            StorageSettings::Azure(azure) => (
                Arc::new(AzureStore::connect(azure.clone())?),
                "AZURE_CONTAINER and AZURE_PREFIX",
            ),
        };
        Ok(Arc::new(crate::storage::located::Located::new(store, setting)))
    }
}

fn compression(get: &dyn Fn(&str) -> Option<String>) -> Result<Compression, ConfigError> {
    const EXPECTED: &str =
        "0 (no compression), a zstd level 1-19, or a fast zstd level -7 to -1 (faster, larger)";
    let Some(text) = get("BACKUP_COMPRESSION_LEVEL") else {
        return Ok(Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        });
    };
    // zstd's fast levels (negative) trade size for speed; below -7 they
    // gain little time and lose much of the compression, above 19 zstd
    // needs a much larger window (levels 20-22), so both ends stop there.
    match text.trim().parse::<i8>() {
        Ok(0) => Ok(Compression::None),
        Ok(level @ (MIN_FAST_ZSTD_LEVEL..=-1 | 1..=MAX_ZSTD_LEVEL)) => Ok(Compression::Zstd { level }),
        _ => Err(ConfigError::Invalid {
            variable: "BACKUP_COMPRESSION_LEVEL",
            value: text,
            expected: EXPECTED,
        }),
    }
}

/// `BACKUP_COPY_FORMAT`: `text` (the default: smaller once compressed) or
/// `binary` (faster to back up and to restore, about 5 % larger on the
/// car-wash data; tables with a column type whose binary form is not the
/// same in every database stay text).
fn table_copy_format(get: &dyn Fn(&str) -> Option<String>) -> Result<CopyFormat, ConfigError> {
    match get("BACKUP_COPY_FORMAT").as_deref().map(str::trim) {
        None | Some("text") => Ok(CopyFormat::Text),
        Some("binary") => Ok(CopyFormat::Binary),
        Some(other) => Err(ConfigError::Invalid {
            variable: "BACKUP_COPY_FORMAT",
            value: other.to_owned(),
            expected: "text (the default) or binary",
        }),
    }
}

/// The fastest zstd level `BACKUP_COMPRESSION_LEVEL` takes.
pub const MIN_FAST_ZSTD_LEVEL: i8 = -7;
/// The strongest zstd level `BACKUP_COMPRESSION_LEVEL` takes.
pub const MAX_ZSTD_LEVEL: i8 = 19;

fn multipart(get: &dyn Fn(&str) -> Option<String>) -> Result<MultipartSettings, ConfigError> {
    let part_mib = parse_number(
        get("BACKUP_UPLOAD_PART_MIB"),
        "BACKUP_UPLOAD_PART_MIB",
        8,
        "MiB per upload part, 5 or more",
    )?;
    if part_mib < 5 {
        return Err(ConfigError::Invalid {
            variable: "BACKUP_UPLOAD_PART_MIB",
            value: part_mib.to_string(),
            expected: "MiB per upload part, 5 or more (S3's minimum)",
        });
    }
    let in_flight = parse_number(
        get("BACKUP_UPLOAD_PARALLELISM"),
        "BACKUP_UPLOAD_PARALLELISM",
        2,
        "parts uploaded at once, 1 or more",
    )?;
    Ok(MultipartSettings {
        part_size: usize::try_from(part_mib).unwrap_or(usize::MAX / (1 << 20)) * 1024 * 1024,
        max_in_flight: usize::try_from(in_flight).unwrap_or(1).max(1),
    })
}

fn s3_settings(get: &dyn Fn(&str) -> Option<String>) -> Result<S3Settings, ConfigError> {
    let bucket = get("S3_BACKUP_BUCKET").ok_or(ConfigError::Missing {
        variable: "S3_BACKUP_BUCKET",
        why: "S3 storage needs the bucket name",
    })?;
    let server_side_encryption = match get("S3_SSE") {
        None => None,
        Some(v) if v == "AES256" || v == "aws:kms" => Some(v),
        Some(value) => {
            return Err(ConfigError::Invalid {
                variable: "S3_SSE",
                value,
                expected: "AES256 or aws:kms",
            });
        }
    };
    let object_lock = match (get("S3_OBJECT_LOCK_MODE"), get("S3_OBJECT_LOCK_DAYS")) {
        (None, _) => None,
        (Some(mode), days) if mode == "GOVERNANCE" || mode == "COMPLIANCE" => {
            let days = parse_number(days, "S3_OBJECT_LOCK_DAYS", 30, "a whole number of days")?;
            Some((mode, u32::try_from(days).unwrap_or(u32::MAX)))
        }
        (Some(value), _) => {
            return Err(ConfigError::Invalid {
                variable: "S3_OBJECT_LOCK_MODE",
                value,
                expected: "GOVERNANCE or COMPLIANCE",
            });
        }
    };
    Ok(S3Settings {
        bucket,
        prefix: get("S3_PREFIX").unwrap_or_default(),
        force_path_style: get("S3_FORCE_PATH_STYLE")
            .map(|v| parse_bool(&v, "S3_FORCE_PATH_STYLE"))
            .transpose()?,
        write: S3WriteOptions {
            server_side_encryption,
            kms_key_id: get("S3_SSE_KMS_KEY_ID"),
            object_lock,
        },
        multipart: multipart(get)?,
    })
}

fn azure_settings(get: &dyn Fn(&str) -> Option<String>) -> Result<AzureSettings, ConfigError> {
    let required = |variable: &'static str| {
        get(variable).ok_or(ConfigError::Missing {
            variable,
            why: "Azure storage needs it",
        })
    };
    Ok(AzureSettings {
        account: required("AZURE_STORAGE_ACCOUNT")?,
        access_key: required("AZURE_STORAGE_KEY")?,
        container: required("AZURE_CONTAINER")?,
        use_emulator: get("AZURE_STORAGE_USE_EMULATOR")
            .map(|v| parse_bool(&v, "AZURE_STORAGE_USE_EMULATOR"))
            .transpose()?
            .unwrap_or(false),
        prefix: get("AZURE_PREFIX").unwrap_or_default(),
        multipart: multipart(get)?,
    })
}

fn parse_bool(value: &str, variable: &'static str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            variable,
            value: value.to_owned(),
            expected: "true or false",
        }),
    }
}

/// A number of database connections for one backup or restore: 1 to 8
/// (default 2: one more than serial, which a small server can spare).
fn parse_connections(value: Option<String>, variable: &'static str) -> Result<usize, ConfigError> {
    const EXPECTED: &str = "a number of connections from 1 to 8";
    match parse_number(
        value,
        variable,
        crate::postgres::DEFAULT_CONNECTIONS as i64,
        EXPECTED,
    )? {
        n @ 1..=8 => Ok(usize::try_from(n).unwrap_or(1)),
        n => Err(ConfigError::Invalid {
            variable,
            value: n.to_string(),
            expected: EXPECTED,
        }),
    }
}

fn parse_number(
    value: Option<String>,
    variable: &'static str,
    default: i64,
    expected: &'static str,
) -> Result<i64, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or(ConfigError::Invalid {
                variable,
                value: text,
                expected,
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_local_storage_thirty_days_and_auto_backup_on() {
        let s = settings(&[]).unwrap();
        assert!(matches!(&s.storage, StorageSettings::Local { dir } if dir == &PathBuf::from("./backups")));
        assert_eq!(
            s.retention,
            RetentionPolicy {
                retention_days: 30,
                keep_newest: 3,
                hourly_retention_hours: 48,
            }
        );
        assert!(s.auto_backup && s.keyring.is_none() && s.database_url.is_none());
    }

    #[test]
    fn bad_settings_name_their_variable_and_never_echo_a_key() {
        for (pairs, variable) in [
            (vec![("BACKUP_STORAGE_TYPE", "ftp")], "BACKUP_STORAGE_TYPE"),
            (vec![("BACKUP_RETENTION_DAYS", "thirty")], "BACKUP_RETENTION_DAYS"),
            (vec![("BACKUP_RETENTION_DAYS", "0")], "BACKUP_RETENTION_DAYS"),
            (
                vec![("BACKUP_HOURLY_RETENTION_HOURS", "0")],
                "BACKUP_HOURLY_RETENTION_HOURS",
            ),
            (vec![("ENABLE_AUTO_BACKUP", "maybe")], "ENABLE_AUTO_BACKUP"),
            (
                vec![("BACKUP_COMPRESSION_LEVEL", "40")],
                "BACKUP_COMPRESSION_LEVEL",
            ),
            (
                vec![("BACKUP_COMPRESSION_LEVEL", "-8")],
                "BACKUP_COMPRESSION_LEVEL",
            ),
            (
                vec![("BACKUP_ENCRYPTION_KEY", "not-a-key-0123456789")],
                "BACKUP_ENCRYPTION_KEY",
            ),
        ] {
            let error = settings(&pairs).unwrap_err().to_string();
            assert!(error.contains(variable), "{error}");
        }
        let error = settings(&[("BACKUP_ENCRYPTION_KEY", "secretsecretsecret")])
            .unwrap_err()
            .to_string();
        assert!(!error.contains("secretsecretsecret"));
    }

    #[test]
    fn the_compression_level_takes_zstd_fast_levels_and_refuses_what_is_out_of_range() {
        // Given each level an operator may choose
        for (value, expected) in [
            ("0", Compression::None),
            ("1", Compression::Zstd { level: 1 }),
            ("19", Compression::Zstd { level: 19 }),
            ("-1", Compression::Zstd { level: -1 }),
            ("-7", Compression::Zstd { level: -7 }),
            (" -5 ", Compression::Zstd { level: -5 }),
        ] {
            // When the settings are read, Then that level is used
            let s = settings(&[("BACKUP_COMPRESSION_LEVEL", value)]).unwrap();
            assert_eq!(s.container.compression, expected, "{value}");
        }
        // Given levels outside them (or not a number)
        for value in ["-8", "20", "-128", "200", "fast"] {
            // When the settings are read, Then the error names the variable,
            // the value and what it takes
            let error = settings(&[("BACKUP_COMPRESSION_LEVEL", value)])
                .unwrap_err()
                .to_string();
            assert!(error.contains("BACKUP_COMPRESSION_LEVEL"), "{error}");
            assert!(error.contains(&format!("{value:?}")), "{error}");
            assert!(error.contains("-7 to -1") && error.contains("1-19"), "{error}");
        }
    }

    #[test]
    fn the_copy_format_is_text_unless_binary_is_asked_for() {
        // Given no setting, Then tables are exported as text
        assert_eq!(
            settings(&[]).unwrap().container.table_copy_format,
            CopyFormat::Text
        );
        // Given binary or text, Then that format is used
        for (value, expected) in [("binary", CopyFormat::Binary), (" text ", CopyFormat::Text)] {
            let s = settings(&[("BACKUP_COPY_FORMAT", value)]).unwrap();
            assert_eq!(s.container.table_copy_format, expected, "{value}");
        }
        // Given anything else, Then the error names the variable, the value and the choices
        let error = settings(&[("BACKUP_COPY_FORMAT", "csv")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("BACKUP_COPY_FORMAT") && error.contains("csv"),
            "{error}"
        );
        assert!(error.contains("binary"), "{error}");
    }

    #[test]
    fn the_users_variables_are_read() {
        let key = "00".repeat(32);
        let s = settings(&[
            ("BACKUP_STORAGE_TYPE", "S3"),
            ("S3_BACKUP_BUCKET", "carwash-backups"),
            ("BACKUP_RETENTION_DAYS", "14"),
            ("ENABLE_AUTO_BACKUP", "false"),
            ("BACKUP_ENCRYPTION_KEY", &key),
            ("DATABASE_URL", "postgres://app@db/carwash"),
            ("BACKUP_COMPRESSION_LEVEL", "0"),
        ])
        .unwrap();
        assert!(matches!(&s.storage, StorageSettings::S3(s3) if s3.bucket == "carwash-backups"));
        assert_eq!(s.retention.retention_days, 14);
        assert!(!s.auto_backup);
        assert!(s.keyring.is_some());
        assert_eq!(s.container.compression, Compression::None);
    }

    #[test]
    fn each_backend_reads_only_its_own_section() {
        // Given Azure storage without its key
        let error = settings(&[
            ("BACKUP_STORAGE_TYPE", "azure"),
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("AZURE_CONTAINER", "backups"),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("AZURE_STORAGE_KEY"), "{error}");
        // And S3 without its bucket
        let error = settings(&[("BACKUP_STORAGE_TYPE", "s3")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("S3_BACKUP_BUCKET"), "{error}");
        // Then local storage ignores the S3 section entirely
        let s = settings(&[("S3_BACKUP_BUCKET", "b"), ("BACKUP_DIR", "/var/backups")]).unwrap();
        assert_eq!(s.storage.kind(), StorageKind::Local);
    }

    #[test]
    fn debug_output_shows_settings_but_no_secret() {
        // Given settings holding every kind of secret
        let key = "ab".repeat(32);
        let s = settings(&[
            ("BACKUP_STORAGE_TYPE", "azure"),
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("AZURE_STORAGE_KEY", "azure-key-c2VjcmV0"),
            ("AZURE_CONTAINER", "backups"),
            ("BACKUP_ENCRYPTION_KEY", &key),
            (
                "DATABASE_URL",
                "postgres://app:db-pass-123@db:5432/carwash?sslmode=require",
            ),
            (
                "BACKUP_SCRATCH_DATABASE_URL",
                "host=db user=app password=scratch-pass-456",
            ),
            ("BACKUP_WEBHOOK_SECRET", "hook-secret-789"),
        ])
        .unwrap();
        // When it is printed with {:?}
        let shown = format!("{s:?}");
        // Then no secret appears, but what an operator needs does
        for secret in [
            "azure-key-c2VjcmV0",
            &key,
            "db-pass-123",
            "scratch-pass-456",
            "hook-secret-789",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        for visible in [
            "acct",
            "backups",
            "app:<redacted>@db:5432/carwash?sslmode=require",
            "user=app",
        ] {
            assert!(shown.contains(visible), "{visible} missing from {shown}");
        }
    }

    #[test]
    fn the_webhook_url_shows_only_its_host_in_debug() {
        // Given settings with a webhook whose token is in its path
        let s = settings(&[(
            "BACKUP_WEBHOOK_URL",
            "https://hooks.slack.com/services/T0AAA/B0BBB/hook-token-5ecret",
        )])
        .unwrap();
        // When they are printed with {:?}
        let shown = format!("{s:?}");
        // Then the receiver shows, its token does not
        assert!(shown.contains("https://hooks.slack.com/<redacted>"), "{shown}");
        assert!(!shown.contains("hook-token-5ecret"), "{shown}");
    }
}
