//! Webhook notifications (`BACKUP_WEBHOOK_URL`), shaped as in the user's
//! runbook, signed with HMAC-SHA256 when `BACKUP_WEBHOOK_SECRET` is set.
//! Delivery is retried a few times; a failing webhook is logged and never
//! fails the operation it reports on.
//!
//! A webhook URL is a credential (Slack, Teams and most receivers put the
//! token in its path): `Debug` and the logs show its scheme and host only,
//! and a failed delivery is logged without the URL reqwest puts in its
//! errors.

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
            .field(
                "url",
                &self.target.as_ref().map(|(url, _)| redact_webhook_url(url)),
            )
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
                Err(error) => tracing::warn!(error = %error.without_url(), attempt, "webhook unreachable"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt - 1))).await;
            }
        }
        tracing::error!("webhook notification dropped after {ATTEMPTS} attempts");
    }
}

/// A webhook URL for logs and `Debug`: scheme and host (and port) only;
/// user info, path and query, where receivers keep their token, become
/// `<redacted>`.
pub fn redact_webhook_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let user = if host.len() < authority.len() {
        "<redacted>@"
    } else {
        ""
    };
    let tail = if tail.trim_matches('/').is_empty() {
        ""
    } else {
        "/<redacted>"
    };
    format!("{scheme}://{user}{host}{tail}")
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const HOOK: &str = "https://hooks.example.com/services/T0AAA/B0BBB/hook-token-5ecret?sig=query-5ecret";

    #[test]
    fn a_webhook_url_prints_only_its_scheme_and_host() {
        // Given a notifier for a webhook whose token is in its path and query
        let notifier = Notifier::new(Some(HOOK.into()), Some("signing-5ecret".into()));
        // When it is printed with {:?}
        let shown = format!("{notifier:?}");
        // Then the receiver's host shows, and none of its credentials
        assert!(shown.contains("https://hooks.example.com/<redacted>"), "{shown}");
        for secret in ["hook-token-5ecret", "query-5ecret", "signing-5ecret", "T0AAA"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert_eq!(
            redact_webhook_url("https://user:pw-5ecret@hooks.example.com:8443"),
            "https://<redacted>@hooks.example.com:8443"
        );
        assert_eq!(redact_webhook_url("not a url hook-token"), "<redacted>");
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_unreachable_webhook_is_logged_without_its_url() {
        // Given a webhook whose URL carries its token, on a port nobody listens on
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let url = "http://127.0.0.1:1/services/T0AAA/B0BBB/hook-token-5ecret";
        // When a notification is sent and every attempt fails
        Notifier::new(Some(url.into()), None)
            .event("backup_completed", json!({"backupId": "backup-1-00000000"}))
            .await;
        // Then each failure is logged, and the URL's token never is
        let logs = String::from_utf8_lossy(
            &captured
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned();
        assert_eq!(
            logs.matches("webhook unreachable").count(),
            ATTEMPTS as usize,
            "{logs}"
        );
        for secret in ["hook-token-5ecret", "T0AAA", "/services/"] {
            assert!(!logs.contains(secret), "{secret} leaked in {logs}");
        }
    }
}
