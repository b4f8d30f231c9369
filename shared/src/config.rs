//! Settings from the environment, with the user's variable names. A bad or
//! missing setting fails at start with a message naming the variable.

use std::path::PathBuf;
use std::sync::Arc;

use crate::container::{Compression, ContainerOptions, DEFAULT_ZSTD_LEVEL};
use crate::keyring::{Keyring, KeyringError};
use crate::retention::RetentionPolicy;
use crate::storage::{
    AzureSettings, AzureStore, LocalStore, MultipartSettings, S3Settings, S3Store, S3WriteOptions,
    SharedStore, StorageError,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Local,
    S3,
    Azure,
}

impl std::str::FromStr for StorageKind {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        match text.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "s3" => Ok(Self::S3),
            "azure" => Ok(Self::Azure),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: StorageKind,
    /// `BACKUP_DIR`, default `./backups` (local storage).
    pub backup_dir: PathBuf,
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
    pub s3: Option<S3Settings>,
    pub azure: Option<AzureSettings>,
}

impl Settings {
    /// Reads settings through `lookup` (the process environment in
    /// production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_lookup_with_storage(lookup, None)
    }

    /// Like [`Settings::from_lookup`], with the storage kind given (a
    /// `--storage` flag wins over `BACKUP_STORAGE_TYPE`).
    pub fn from_lookup_with_storage(
        lookup: impl Fn(&str) -> Option<String>,
        storage: Option<StorageKind>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let storage = match (storage, get("BACKUP_STORAGE_TYPE")) {
            (Some(kind), _) => kind,
            (None, None) => StorageKind::Local,
            (None, Some(value)) => value.parse().map_err(|()| ConfigError::Invalid {
                variable: "BACKUP_STORAGE_TYPE",
                value,
                expected: "one of local, s3, azure",
            })?,
        };
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
        let auto_backup = match get("ENABLE_AUTO_BACKUP").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(value) => {
                return Err(ConfigError::Invalid {
                    variable: "ENABLE_AUTO_BACKUP",
                    value,
                    expected: "true or false",
                });
            }
        };
        let level = parse_number(
            get("BACKUP_COMPRESSION_LEVEL"),
            "BACKUP_COMPRESSION_LEVEL",
            i64::from(DEFAULT_ZSTD_LEVEL),
            "0 (no compression) or a zstd level 1-19",
        )?;
        let compression = match level {
            0 => Compression::None,
            1..=19 => Compression::Zstd { level: level as i8 },
            _ => {
                return Err(ConfigError::Invalid {
                    variable: "BACKUP_COMPRESSION_LEVEL",
                    value: level.to_string(),
                    expected: "0 (no compression) or a zstd level 1-19",
                });
            }
        };
        let multipart = MultipartSettings {
            part_size: parse_number(
                get("BACKUP_UPLOAD_PART_MIB"),
                "BACKUP_UPLOAD_PART_MIB",
                8,
                "MiB per upload part, 5 or more",
            )
            .and_then(|mib| {
                if mib >= 5 {
                    Ok(mib as usize * 1024 * 1024)
                } else {
                    Err(ConfigError::Invalid {
                        variable: "BACKUP_UPLOAD_PART_MIB",
                        value: mib.to_string(),
                        expected: "MiB per upload part, 5 or more (S3's minimum)",
                    })
                }
            })?,
            max_in_flight: parse_number(
                get("BACKUP_UPLOAD_PARALLELISM"),
                "BACKUP_UPLOAD_PARALLELISM",
                2,
                "parts uploaded at once, 1 or more",
            )?
            .max(1) as usize,
        };
        let s3 = match (storage, get("S3_BACKUP_BUCKET")) {
            (StorageKind::S3, None) => {
                return Err(ConfigError::Missing {
                    variable: "S3_BACKUP_BUCKET",
                    why: "S3 storage needs the bucket name",
                });
            }
            (_, Some(bucket)) => Some(S3Settings {
                bucket,
                prefix: get("S3_PREFIX").unwrap_or_default(),
                force_path_style: get("S3_FORCE_PATH_STYLE")
                    .map(|v| parse_bool(&v, "S3_FORCE_PATH_STYLE"))
                    .transpose()?,
                write: S3WriteOptions {
                    server_side_encryption: match get("S3_SSE") {
                        None => None,
                        Some(v) if v == "AES256" || v == "aws:kms" => Some(v),
                        Some(value) => {
                            return Err(ConfigError::Invalid {
                                variable: "S3_SSE",
                                value,
                                expected: "AES256 or aws:kms",
                            });
                        }
                    },
                    kms_key_id: get("S3_SSE_KMS_KEY_ID"),
                    object_lock: match (get("S3_OBJECT_LOCK_MODE"), get("S3_OBJECT_LOCK_DAYS")) {
                        (None, _) => None,
                        (Some(mode), days) if mode == "GOVERNANCE" || mode == "COMPLIANCE" => {
                            let days =
                                parse_number(days, "S3_OBJECT_LOCK_DAYS", 30, "a whole number of days")?;
                            Some((mode, days as u32))
                        }
                        (Some(value), _) => {
                            return Err(ConfigError::Invalid {
                                variable: "S3_OBJECT_LOCK_MODE",
                                value,
                                expected: "GOVERNANCE or COMPLIANCE",
                            });
                        }
                    },
                },
                multipart,
            }),
            (_, None) => None,
        };
        let azure = if storage == StorageKind::Azure {
            let required = |variable: &'static str| {
                get(variable).ok_or(ConfigError::Missing {
                    variable,
                    why: "Azure storage needs it",
                })
            };
            Some(AzureSettings {
                account: required("AZURE_STORAGE_ACCOUNT")?,
                access_key: required("AZURE_STORAGE_KEY")?,
                container: required("AZURE_CONTAINER")?,
                use_emulator: get("AZURE_STORAGE_USE_EMULATOR")
                    .map(|v| parse_bool(&v, "AZURE_STORAGE_USE_EMULATOR"))
                    .transpose()?
                    .unwrap_or(false),
                prefix: get("AZURE_PREFIX").unwrap_or_default(),
                multipart,
            })
        } else {
            None
        };
        Ok(Self {
            s3,
            azure,
            storage,
            backup_dir: PathBuf::from(get("BACKUP_DIR").unwrap_or_else(|| "./backups".into())),
            database_url: get("DATABASE_URL"),
            keyring,
            retention: RetentionPolicy {
                retention_days: retention_days as u32,
                keep_newest: keep_newest as usize,
            },
            auto_backup,
            webhook_url: get("BACKUP_WEBHOOK_URL"),
            webhook_secret: get("BACKUP_WEBHOOK_SECRET"),
            container: ContainerOptions {
                compression,
                ..ContainerOptions::default()
            },
            scratch_database_url: get("BACKUP_SCRATCH_DATABASE_URL"),
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_env_with_storage(storage: Option<StorageKind>) -> Result<Self, ConfigError> {
        Self::from_lookup_with_storage(|name| std::env::var(name).ok(), storage)
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
        match (self.storage, &self.s3, &self.azure) {
            (StorageKind::Local, _, _) => Ok(Arc::new(LocalStore::new(self.backup_dir.clone()))),
            (StorageKind::S3, Some(s3), _) => Ok(Arc::new(match aws {
                Some(aws) => S3Store::connect_with(aws, s3.clone()),
                None => S3Store::connect(s3.clone()).await,
            })),
            (StorageKind::Azure, _, Some(azure)) => Ok(Arc::new(AzureStore::connect(azure.clone())?)),
            (kind, _, _) => Err(StorageError::Unavailable(format!("{kind:?} without its settings")).into()),
        }
    }
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
        assert_eq!(s.storage, StorageKind::Local);
        assert_eq!(s.backup_dir, PathBuf::from("./backups"));
        assert_eq!(
            s.retention,
            RetentionPolicy {
                retention_days: 30,
                keep_newest: 3
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
            (vec![("ENABLE_AUTO_BACKUP", "maybe")], "ENABLE_AUTO_BACKUP"),
            (
                vec![("BACKUP_COMPRESSION_LEVEL", "40")],
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
        assert_eq!(s.storage, StorageKind::S3);
        assert_eq!(s.retention.retention_days, 14);
        assert!(!s.auto_backup);
        assert!(s.keyring.is_some());
        assert_eq!(s.container.compression, Compression::None);
    }
}
