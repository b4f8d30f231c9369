//! Secrets Manager: the encryption keyring and the database credentials,
//! fetched by ARN once per execution environment, always at stage
//! `AWSCURRENT` (explicitly: some servers otherwise return a stale version).

use aws_sdk_secretsmanager::Client;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::HandlerError;

pub struct SecretsSource {
    client: Client,
}

impl SecretsSource {
    pub async fn from_environment() -> Self {
        Self {
            client: Client::new(&aws_config::load_from_env().await),
        }
    }

    pub fn with_client(client: Client) -> Self {
        Self { client }
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

/// The JSON shape of an RDS-managed database secret.
#[derive(Deserialize)]
struct RdsSecret {
    // The password is zeroized with the whole struct on drop (see below).
    username: String,
    password: String,
    host: String,
    port: Option<serde_json::Value>,
    dbname: Option<String>,
}

impl Drop for RdsSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// Turns an RDS secret into a connection URL; `sslmode` (e.g. `require`,
/// `verify-full`) is added when given.
pub fn database_url_from_secret(
    arn: &str,
    secret: &str,
    sslmode: Option<&str>,
) -> Result<Zeroizing<String>, HandlerError> {
    let malformed = || HandlerError::MalformedSecret {
        arn: arn.to_owned(),
        expected: "JSON with username, password, host, port and dbname (the RDS secret shape)",
    };
    let parsed: RdsSecret = serde_json::from_str(secret).map_err(|_| malformed())?;
    let port = match &parsed.port {
        None => 5432,
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(malformed)?,
        Some(serde_json::Value::String(s)) => s.parse().map_err(|_| malformed())?,
        Some(_) => return Err(malformed()),
    };
    let mut url = format!(
        "postgres://{}:{}@{}:{port}/{}",
        percent_encode(&parsed.username),
        percent_encode(&parsed.password),
        parsed.host,
        percent_encode(parsed.dbname.as_deref().unwrap_or("postgres"))
    );
    if let Some(mode) = sslmode {
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
        let url = database_url_from_secret("arn", secret, Some("require")).unwrap();
        assert_eq!(
            url.as_str(),
            "postgres://app:p%40ss%3Aw%2Frd%3F%26@db.example:5432/carwash?sslmode=require"
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p@ss:w/rd?&"[..]));
        let string_port = r#"{"username":"a","password":"b","host":"h","port":"6543"}"#;
        assert!(
            database_url_from_secret("arn", string_port, None)
                .unwrap()
                .contains(":6543/postgres")
        );
        let error = database_url_from_secret("arn", "{\"user\": 1}", None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("RDS secret shape"));
    }
}
