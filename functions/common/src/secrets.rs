//! Secrets Manager: the encryption keyring and the database credentials,
//! fetched by ARN once per execution environment (the database secret again
//! when the server rejects its password: it was rotated), always at stage
//! `AWSCURRENT` (explicitly: some servers otherwise return a stale version).

use aws_sdk_secretsmanager::Client;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::HandlerError;

#[derive(Clone)]
pub struct SecretsSource {
    client: Client,
}

impl SecretsSource {
    pub async fn from_environment() -> Self {
        Self::with_config(&aws_config::load_from_env().await)
    }

    pub fn with_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::new(config),
        }
    }

    pub fn with_client(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn get(&self, arn: &str) -> Result<Zeroizing<String>, HandlerError> {
        let response = self
            .client
            .get_secret_value()
            .secret_id(arn)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .map_err(|e| HandlerError::Secret {
                arn: arn.to_owned(),
                source: Box::new(e),
            })?;
        response
            .secret_string
            .map(Zeroizing::new)
            .ok_or_else(|| HandlerError::MalformedSecret {
                arn: arn.to_owned(),
                expected: "a string secret",
            })
    }
}

/// The JSON shape of an RDS database secret. RDS-managed master secrets
/// hold only `username` and `password`; the rest then comes from
/// [`ConnectionDefaults`].
#[derive(Deserialize)]
struct RdsSecret {
    // The password is zeroized with the whole struct on drop (see below).
    username: String,
    password: String,
    host: Option<String>,
    port: Option<serde_json::Value>,
    dbname: Option<String>,
}

impl Drop for RdsSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// Where to connect when the secret does not say (`DATABASE_HOST`,
/// `DATABASE_PORT`, `DATABASE_NAME`), and the `sslmode` to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionDefaults {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub sslmode: Option<String>,
    /// What to tell the operator when neither the secret nor `host` names a
    /// server (default: set `DATABASE_HOST`).
    pub missing_host: Option<&'static str>,
}

const MISSING_HOST: &str = "a host: the secret has none (an RDS-managed master secret), so set DATABASE_HOST (template parameter DatabaseHost)";

/// Turns an RDS secret into a connection URL. Host, port and database name
/// in the secret win over the defaults; without a host anywhere the secret
/// is refused, naming both places to fix.
pub fn database_url_from_secret(
    arn: &str,
    secret: &str,
    defaults: &ConnectionDefaults,
) -> Result<Zeroizing<String>, HandlerError> {
    let malformed = |expected: &'static str| HandlerError::MalformedSecret {
        arn: arn.to_owned(),
        expected,
    };
    const SHAPE: &str = "JSON with username and password (and host, port, dbname unless DATABASE_HOST, DATABASE_PORT, DATABASE_NAME are set): the RDS secret shape";
    let parsed: RdsSecret = serde_json::from_str(secret).map_err(|_| malformed(SHAPE))?;
    let port = match &parsed.port {
        None => u64::from(defaults.port.unwrap_or(5432)),
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| malformed(SHAPE))?,
        Some(serde_json::Value::String(s)) => s.parse().map_err(|_| malformed(SHAPE))?,
        Some(_) => return Err(malformed(SHAPE)),
    };
    let host = parsed
        .host
        .as_deref()
        .filter(|h| !h.trim().is_empty())
        .or(defaults.host.as_deref())
        .ok_or_else(|| malformed(defaults.missing_host.unwrap_or(MISSING_HOST)))?;
    let dbname = parsed
        .dbname
        .as_deref()
        .or(defaults.dbname.as_deref())
        .unwrap_or("postgres");
    let mut url = format!(
        "postgres://{}:{}@{host}:{port}/{}",
        percent_encode(&parsed.username),
        percent_encode(&parsed.password),
        percent_encode(dbname)
    );
    if let Some(mode) = &defaults.sslmode {
        url.push_str(&format!("?sslmode={mode}"));
    }
    Ok(Zeroizing::new(url))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rds_secret_becomes_a_url_with_awkward_passwords_encoded() {
        let secret = r#"{"username":"app","password":"p@ss:w/rd?&","host":"db.example","port":5432,"dbname":"carwash","engine":"postgres"}"#;
        let require = ConnectionDefaults {
            sslmode: Some("require".into()),
            ..ConnectionDefaults::default()
        };
        let url = database_url_from_secret("arn", secret, &require).unwrap();
        assert_eq!(
            url.as_str(),
            "postgres://app:p%40ss%3Aw%2Frd%3F%26@db.example:5432/carwash?sslmode=require"
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p@ss:w/rd?&"[..]));
        let string_port = r#"{"username":"a","password":"b","host":"h","port":"6543"}"#;
        assert!(
            database_url_from_secret("arn", string_port, &ConnectionDefaults::default())
                .unwrap()
                .contains(":6543/postgres")
        );
        let error = database_url_from_secret("arn", "{\"user\": 1}", &ConnectionDefaults::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("RDS secret shape"));
    }

    #[test]
    fn an_rds_managed_master_secret_takes_host_port_and_database_from_the_settings() {
        // Given the secret RDS manages for a master user: username and password only
        let managed = r#"{"username":"postgres","password":"s3cr3t"}"#;
        // When no host is configured, the error says where to put one
        let error = database_url_from_secret("arn", managed, &ConnectionDefaults::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("DATABASE_HOST"), "{error}");
        assert!(!error.contains("s3cr3t"));
        // When the template's parameters give them, they complete the URL
        let defaults = ConnectionDefaults {
            host: Some("carwash.abc.eu-north-1.rds.amazonaws.com".into()),
            port: Some(6432),
            dbname: Some("carwash".into()),
            sslmode: Some("verify-full".into()),
            missing_host: None,
        };
        let url = database_url_from_secret("arn", managed, &defaults).unwrap();
        assert_eq!(
            url.as_str(),
            "postgres://postgres:s3cr3t@carwash.abc.eu-north-1.rds.amazonaws.com:6432/carwash?sslmode=verify-full"
        );
        // and a full RDS-shaped secret still wins over them
        let full = r#"{"username":"app","password":"p","host":"db.internal","port":5432,"dbname":"other"}"#;
        assert_eq!(
            database_url_from_secret("arn", full, &defaults).unwrap().as_str(),
            "postgres://app:p@db.internal:5432/other?sslmode=verify-full"
        );
    }
}

/// The erasure ledger's head in a Secrets Manager secret
/// (`BACKUP_LEDGER_HEAD_SECRET_ARN`): out of reach of whoever can write to
/// the bucket. Only the restore role (which records erasures and applies
/// the ledger) may put a value; verify may read it. The template creates it
/// holding `{}`: no head yet.
#[derive(Debug, Clone)]
pub struct SecretLedgerHead {
    client: Client,
    arn: String,
}

impl SecretLedgerHead {
    pub fn new(secrets: &SecretsSource, arn: String) -> Self {
        Self {
            client: secrets.client.clone(),
            arn,
        }
    }
}

impl backup_core::ledger_head::LedgerHeadStore for SecretLedgerHead {
    fn location(&self) -> String {
        format!("{} (BACKUP_LEDGER_HEAD_SECRET_ARN)", self.arn)
    }

    fn read(&self) -> backup_core::ledger_head::HeadFuture<'_, Option<String>> {
        Box::pin(async move {
            let response = self
                .client
                .get_secret_value()
                .secret_id(&self.arn)
                .version_stage("AWSCURRENT")
                .send()
                .await
                .map_err(|e| backup_core::ledger_head::HeadStoreError::Read {
                    location: self.location(),
                    source: Box::new(e),
                })?;
            Ok(response.secret_string)
        })
    }

    fn write<'a>(&'a self, head: &'a str) -> backup_core::ledger_head::HeadFuture<'a, ()> {
        Box::pin(async move {
            self.client
                .put_secret_value()
                .secret_id(&self.arn)
                .secret_string(head)
                .send()
                .await
                .map_err(|e| backup_core::ledger_head::HeadStoreError::Write {
                    location: self.location(),
                    source: Box::new(e),
                })?;
            Ok(())
        })
    }
}
