//! Webhook notifications (`BACKUP_WEBHOOK_URL`), shaped as in the user's
//! runbook, signed with HMAC-SHA256 when `BACKUP_WEBHOOK_SECRET` is set.
//! Delivery is retried a few times; a failing webhook is logged and never
//! fails the operation it reports on.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use zeroize::Zeroizing;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Header carrying `sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub const SIGNATURE_HEADER: &str = "X-Backup-Signature";
/// Header carrying the Unix time (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "X-Backup-Timestamp";

#[derive(Clone)]
pub struct Notifier {
    target: Option<(String, reqwest::Client)>,
    secret: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("url", &self.target.as_ref().map(|(url, _)| url))
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl Notifier {
    pub fn disabled() -> Self {
        Self {
            target: None,
            secret: None,
        }
    }

    pub fn new(url: Option<String>, secret: Option<String>) -> Self {
        let client = reqwest::Client::builder().timeout(TIMEOUT).build();
        match (url, client) {
            (Some(url), Ok(client)) if !url.trim().is_empty() => Self {
                target: Some((url, client)),
                secret: secret.filter(|s| !s.is_empty()).map(Zeroizing::new),
            },
            (Some(_), Err(error)) => {
                tracing::error!(%error, "webhook client could not be built; notifications are off");
                Self::disabled()
            }
            _ => Self::disabled(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `{"type":"backup_event","event":…,"timestamp":…, …fields}`.
    pub async fn event(&self, event: &str, fields: Value) {
        let mut body = json!({"type": "backup_event", "event": event, "timestamp": now()});
        merge(&mut body, fields);
        self.send(body).await;
    }

    /// `{"type":"backup_failure","error":…,"timestamp":…, …fields}`.
    pub async fn failure(&self, error: &str, fields: Value) {
        let mut body = json!({"type": "backup_failure", "error": error, "timestamp": now()});
        merge(&mut body, fields);
        self.send(body).await;
    }

    async fn send(&self, body: Value) {
        let Some((url, client)) = &self.target else { return };
        let text = body.to_string();
        let timestamp = Utc::now().timestamp().to_string();
        for attempt in 1..=ATTEMPTS {
            let mut request = client
                .post(url)
                .header("Content-Type", "application/json")
                .header(TIMESTAMP_HEADER, &timestamp);
            if let Some(secret) = &self.secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, &timestamp, &text));
            }
            match request.body(text.clone()).send().await {
                Ok(response) if response.status().is_success() => return,
                Ok(response) if response.status().is_client_error() => {
                    tracing::warn!(status = %response.status(), "webhook rejected the notification; not retrying");
                    return;
                }
                Ok(response) => tracing::warn!(status = %response.status(), attempt, "webhook failed"),
                Err(error) => tracing::warn!(%error, attempt, "webhook unreachable"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt - 1))).await;
            }
        }
        tracing::error!("webhook notification dropped after {ATTEMPTS} attempts");
    }
}

/// `sha256=` + hex HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn merge(body: &mut Value, fields: Value) {
    if let (Value::Object(body), Value::Object(fields)) = (body, fields) {
        for (key, value) in fields {
            body.insert(key, value);
        }
    }
}
