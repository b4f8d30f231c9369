//! Quarterly key rotation as a Secrets Manager rotation function: the
//! four steps Secrets Manager calls with `{"SecretId", "ClientRequestToken",
//! "Step"}`, on the keyring secret.
//!
//! * `createSecret`: the current keyring (or bare key) plus a fresh random
//!   key, made current, stored as the pending version.
//! * `setSecret`: nothing; the keyring is used only by these functions.
//! * `testSecret`: the pending keyring keeps every current key unchanged and
//!   its new key seals and opens a chunk. A pending version that is an exact
//!   copy of the current keyring passes too: that is how Secrets Manager
//!   tests the rotation configuration when rotation is switched on without
//!   rotating at once (`RotateSecret` with `RotateImmediately=false`, which
//!   is what the template's `RotationSchedule` does at deploy time).
//! * `finishSecret`: the pending keyring is checked again to keep every
//!   current key (a version staged without its test, or a current keyring
//!   that changed since, never loses a key), then becomes `AWSCURRENT`.
//!
//! Each step can run again safely (Secrets Manager retries).

use aws_sdk_secretsmanager::Client;
use backup_core::Keyring;
use backup_core::envelope::seal_and_open_round_trip;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::HandlerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RotationStep {
    CreateSecret,
    SetSecret,
    TestSecret,
    FinishSecret,
}

/// What Secrets Manager sends a rotation function.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationEvent {
    pub secret_id: String,
    pub client_request_token: String,
    pub step: RotationStep,
}

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";

fn secret_error<E: std::error::Error + Send + Sync + 'static>(arn: &str, error: E) -> HandlerError {
    HandlerError::Secret {
        arn: arn.to_owned(),
        source: Box::new(error),
    }
}

fn refused(message: String) -> HandlerError {
    tracing::error!(%message, "key rotation step refused");
    HandlerError::Refused(message)
}

/// Runs one rotation step. Returns what was done, for the logs.
pub async fn rotate(client: &Client, event: RotationEvent) -> Result<Value, HandlerError> {
    let arn = event.secret_id.as_str();
    let token = event.client_request_token.as_str();
    let described = client
        .describe_secret()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| secret_error(arn, e))?;
    if described.rotation_enabled() != Some(true) {
        return Err(refused(format!("rotation is not enabled on secret {arn}")));
    }
    let stages = described
        .version_ids_to_stages()
        .and_then(|versions| versions.get(token))
        .ok_or_else(|| refused(format!("version {token} has no stage for the rotation of {arn}")))?;
    if stages.iter().any(|s| s == CURRENT) {
        tracing::info!(step = ?event.step, "the version is already current; nothing to do");
        return Ok(json!({"step": event.step_name(), "done": "already current"}));
    }
    if !stages.iter().any(|s| s == PENDING) {
        return Err(refused(format!(
            "version {token} of {arn} is not pending rotation"
        )));
    }
    let done = match event.step {
        RotationStep::CreateSecret => create_pending(client, arn, token).await?,
        RotationStep::SetSecret => "nothing to set: only these functions use the keyring".to_owned(),
        RotationStep::TestSecret => test_pending(client, arn, token).await?,
        RotationStep::FinishSecret => {
            let current_version = described
                .version_ids_to_stages()
                .into_iter()
                .flatten()
                .find(|(_, stages)| stages.iter().any(|s| s == CURRENT))
                .map(|(version, _)| version.clone());
            finish_pending(client, arn, token, current_version).await?
        }
    };
    tracing::info!(step = event.step_name(), %done, "key rotation step done");
    Ok(json!({"step": event.step_name(), "done": done}))
}

impl RotationEvent {
    fn step_name(&self) -> &'static str {
        match self.step {
            RotationStep::CreateSecret => "createSecret",
            RotationStep::SetSecret => "setSecret",
            RotationStep::TestSecret => "testSecret",
            RotationStep::FinishSecret => "finishSecret",
        }
    }
}

/// The keyring stored under a stage (and version), parsed.
async fn keyring_at(
    client: &Client,
    arn: &str,
    stage: &str,
    version: Option<&str>,
) -> Result<Option<Keyring>, HandlerError> {
    let answer = client
        .get_secret_value()
        .secret_id(arn)
        .version_stage(stage)
        .set_version_id(version.map(str::to_owned))
        .send()
        .await;
    let text = match answer {
        Ok(answer) => Zeroizing::new(answer.secret_string.unwrap_or_default()),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(secret_error(arn, error)),
    };
    Keyring::from_secret_string(&text, &format!("the {stage} keyring"))
        .map(Some)
        .map_err(|e| HandlerError::Operation(e.into()))
}

async fn create_pending(client: &Client, arn: &str, token: &str) -> Result<String, HandlerError> {
    let current = keyring_at(client, arn, CURRENT, None)
        .await?
        .ok_or_else(|| refused(format!("secret {arn} has no current keyring to rotate")))?;
    // A retried step finds its own work done; anything else under the
    // pending label (a placeholder) is replaced.
    if let Some(pending) = keyring_at(client, arn, PENDING, Some(token)).await?
        && pending.is_rotation_of(&current)
    {
        return Ok(format!(
            "the pending keyring (new current key {}) already exists",
            pending.current_id()
        ));
    }
    let new_id = current.next_key_id(chrono::Utc::now().date_naive());
    let rotated = current
        .rotated(new_id)
        .map_err(|e| HandlerError::Operation(e.into()))?;
    client
        .put_secret_value()
        .secret_id(arn)
        .client_request_token(token)
        .secret_string(rotated.to_secret_string().as_str())
        .version_stages(PENDING)
        .send()
        .await
        .map_err(|e| secret_error(arn, e))?;
    let kept: Vec<&str> = current.key_ids().map(|id| id.as_str()).collect();
    Ok(format!(
        "pending keyring: new current key {}, kept {}",
        rotated.current_id(),
        kept.join(", ")
    ))
}

/// An exact copy: the same current key id and the same keys, in both
/// directions.
fn same_keyring(a: &Keyring, b: &Keyring) -> bool {
    a.current_id() == b.current_id() && a.keeps_every_key_of(b) && b.keeps_every_key_of(a)
}

async fn test_pending(client: &Client, arn: &str, token: &str) -> Result<String, HandlerError> {
    let pending = keyring_at(client, arn, PENDING, Some(token))
        .await?
        .ok_or_else(|| refused(format!("version {token} of {arn} holds no keyring to test")))?;
    let current = keyring_at(client, arn, CURRENT, None)
        .await?
        .ok_or_else(|| refused(format!("secret {arn} has no current keyring")))?;
    if !pending.keeps_every_key_of(&current) {
        return Err(refused(format!(
            "the pending keyring of {arn} lost or changed a current key; backups under it would become unreadable, so the rotation stops here"
        )));
    }
    // Secrets Manager's test of the rotation configuration: the pending
    // version is a copy of the current value, nothing is rotated yet.
    if same_keyring(&pending, &current) {
        seal_and_open_round_trip(current.current()).map_err(|fault| {
            refused(format!(
                "the current key {} failed to seal and open a chunk ({})",
                current.current_id(),
                fault.as_str()
            ))
        })?;
        return Ok(format!(
            "configuration test: the pending version is a copy of the current keyring (current key {}), which seals and opens a chunk; the rotation function is ready",
            current.current_id()
        ));
    }
    if !pending.is_rotation_of(&current) {
        return Err(refused(format!(
            "the pending keyring of {arn} has no new current key; nothing would be rotated"
        )));
    }
    seal_and_open_round_trip(pending.current()).map_err(|fault| {
        refused(format!(
            "the new key {} failed to seal and open a chunk ({})",
            pending.current_id(),
            fault.as_str()
        ))
    })?;
    Ok(format!(
        "the pending keyring keeps every current key, and its new key {} seals and opens a chunk",
        pending.current_id()
    ))
}

/// Makes the pending version current, after checking once more that it
/// keeps every key of the current keyring: `finishSecret` may come without
/// a `testSecret` before it (a version staged by hand, or a step invoked
/// directly), and the current keyring may have changed since the test.
async fn finish_pending(
    client: &Client,
    arn: &str,
    token: &str,
    current_version: Option<String>,
) -> Result<String, HandlerError> {
    let pending = keyring_at(client, arn, PENDING, Some(token))
        .await?
        .ok_or_else(|| {
            refused(format!(
                "version {token} of {arn} holds no keyring to make current"
            ))
        })?;
    if let Some(current) = keyring_at(client, arn, CURRENT, None).await?
        && !pending.keeps_every_key_of(&current)
    {
        return Err(refused(format!(
            "the pending keyring of {arn} lost or changed a current key; backups under it would become unreadable, so it is not made current"
        )));
    }
    let mut update = client
        .update_secret_version_stage()
        .secret_id(arn)
        .version_stage(CURRENT)
        .move_to_version_id(token);
    if let Some(previous) = &current_version {
        update = update.remove_from_version_id(previous);
    }
    update.send().await.map_err(|e| secret_error(arn, e))?;
    // Leave no pending label behind: the next rotation starts clean.
    client
        .update_secret_version_stage()
        .secret_id(arn)
        .version_stage(PENDING)
        .remove_from_version_id(token)
        .send()
        .await
        .map_err(|e| secret_error(arn, e))?;
    Ok(format!(
        "version {token} is now current (was {})",
        current_version.as_deref().unwrap_or("none")
    ))
}
