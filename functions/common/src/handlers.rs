//! The four handlers: event in, core operation, JSON report out.

use std::time::{Duration, SystemTime};

use backup_core::audit::{AuditRecord, Outcome};
use backup_core::changes::CaptureRequest;
use backup_core::metadata::{Trigger, VerificationDepth};
use backup_core::operations::{
    self, AuditReportRequest, CaptureRun, Confirmation, CreateRequest, Operation, PruneRequest,
    RestoreRequest, VerifyChangesRequest, VerifyRequest,
};
use backup_core::repository::{BackupSelector, RepositoryError};
use backup_core::request::TableList;
use backup_core::{BackupId, BackupRequest};
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

use crate::engine::{self, Measured};
use crate::environment::time_left;
use crate::events::{self, CreateEvent, PruneEvent, RestoreEvent, VerifyEvent};
use crate::{Environment, HandlerError};

fn report(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// create ← EventBridge schedule (honours `ENABLE_AUTO_BACKUP`) or a manual
/// `{"reason", "trigger", "requestedBy", "tables"}`.
pub async fn create(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let (request, tables) = match events::parse_create(event.payload)? {
        CreateEvent::Scheduled { rule, hourly } => {
            if !env.settings.auto_backup {
                tracing::info!(rule, "scheduled backup skipped: ENABLE_AUTO_BACKUP=false");
                return Ok(json!({"skipped": true, "reason": "ENABLE_AUTO_BACKUP=false"}));
            }
            let request = BackupRequest {
                trigger: if hourly {
                    Trigger::Hourly
                } else {
                    Trigger::Schedule
                },
                reason: match (rule, hourly) {
                    (Some(rule), _) => Some(format!("scheduled by {rule}")),
                    (None, true) => Some("the hourly schedule".to_owned()),
                    (None, false) => None,
                },
                requested_by: Some("eventbridge".into()),
            };
            (request, TableList::all())
        }
        CreateEvent::Manual(order) => (order.request(), order.tables),
    };
    // What this invocation had when it started: the timeout a create is
    // measured against, unless the template names it.
    let timeout = env
        .function_timeout
        .unwrap_or_else(|| time_left(event.context.deadline, SystemTime::now()));
    let create = CreateRequest {
        database_url: env.database_url("back up").await?.as_str().to_owned(),
        tables,
        request,
        container: env.settings.container,
        accepted_loss: env.settings.allow_schema_loss.clone(),
    };
    let metadata = env
        .within_deadline(&event.context, Operation::Create, async {
            Ok(operations::create_backup(&env.services, &create).await?)
        })
        .await?;
    let measured = Measured {
        what: "create",
        function: "create",
        took: timeout.saturating_sub(time_left(event.context.deadline, SystemTime::now())),
        timeout,
    };
    let mut result = report(&metadata);
    let id = metadata.id.to_string();
    if let Some(warning) =
        engine::report_near_timeout(&env.services, Operation::Create, measured, Some(id.as_str())).await
        && let Value::Object(fields) = &mut result
    {
        fields.insert("nearTimeout".into(), warning);
    }
    Ok(result)
}

/// prune ← EventBridge schedule or a manual `{"dryRun", "retentionDays"}`;
/// the audit report ← the quarterly schedule's `{"report": "audit"}` or a
/// manual one with `from` and `to`.
pub async fn prune(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let order = match events::parse_prune(event.payload)? {
        PruneEvent::Prune(order) => order,
        PruneEvent::AuditReport(order) => {
            let request = AuditReportRequest::for_period(
                order.from,
                order.to,
                chrono::Duration::minutes(i64::from(env.settings.rpo_minutes)),
                env.settings.retention,
                chrono::Utc::now(),
            )
            .map_err(|e| HandlerError::Operation(e.into()))?;
            let (report, keys) = env
                .within_deadline(&event.context, Operation::Report, async {
                    Ok(operations::publish_audit_report(&env.services, &request).await?)
                })
                .await?;
            return Ok(
                json!({"period": report.period, "stored": keys, "operations": report.operations.len(),
                             "gaps": report.gaps, "manualWithoutReason": report.manual_without_reason}),
            );
        }
    };
    let request = PruneRequest::new(order, env.settings.retention);
    let outcome = env
        .within_deadline(&event.context, Operation::Prune, async {
            Ok(operations::prune_backups(&env.services, &request).await?)
        })
        .await?;
    Ok(report(&outcome))
}

/// verify ← S3 `ObjectCreated` on `backups/*.backup` or `changes/*.segment`,
/// EventBridge schedule, or a manual `{"backupId", "depth"}`.
pub async fn verify(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let scratch_url = env.settings.scratch_database_url.clone();
    let scheduled_default = if scratch_url.is_some() {
        VerificationDepth::Deep
    } else {
        VerificationDepth::Full
    };
    let mut scheduled = false;
    let mut requests: Vec<VerifyRequest> = match events::parse_verify(event.payload)? {
        VerifyEvent::SegmentsCreated(segments) => {
            return verify_segments(env, &event.context, segments).await;
        }
        VerifyEvent::ObjectsCreated(ids) => {
            let depth = env.verify_event_depth;
            ids.into_iter()
                .map(|id| VerifyRequest {
                    selector: BackupSelector::Id(id),
                    depth,
                    scratch_url: scratch_url.clone(),
                    checks: Vec::new(),
                })
                .collect()
        }
        VerifyEvent::Scheduled => {
            scheduled = true;
            vec![VerifyRequest {
                selector: BackupSelector::Latest,
                depth: scheduled_default,
                scratch_url: scratch_url.clone(),
                checks: Vec::new(),
            }]
        }
        VerifyEvent::Manual(order) => vec![VerifyRequest {
            selector: order.backup_id,
            depth: order.depth,
            scratch_url: scratch_url.clone(),
            checks: Vec::new(),
        }],
    };
    // Every deep verification is a drill when the application's checks are configured.
    if let Some(spec) = &env.settings.drill_checks
        && requests.iter().any(|r| r.depth == VerificationDepth::Deep)
    {
        let checks = backup_core::drill::load_checks(spec, env.services.repository.store().as_ref())
            .await
            .map_err(|e| HandlerError::Operation(e.into()))?;
        for request in requests.iter_mut().filter(|r| r.depth == VerificationDepth::Deep) {
            request.checks = checks.clone();
        }
    }
    let timeout = env
        .restore_timeout
        .unwrap_or_else(|| time_left(event.context.deadline, SystemTime::now()));
    let reports = env
        .within_deadline(&event.context, Operation::Verify, async {
            let mut reports = Vec::new();
            for request in &requests {
                if let BackupSelector::Id(id) = &request.selector {
                    wait_for_metadata(env, id).await?;
                }
                reports.push(operations::verify_backup(&env.services, request).await?);
            }
            Ok(reports)
        })
        .await?;
    let mut results = Vec::with_capacity(reports.len());
    for verified in &reports {
        let mut result = report(verified);
        if let Some(ms) = verified.restore_duration_ms {
            let measured = Measured {
                what: "restore",
                function: "restore",
                took: Duration::from_millis(ms),
                timeout,
            };
            if let Some(warning) = engine::report_near_timeout(
                &env.services,
                Operation::Verify,
                measured,
                Some(verified.backup_id.as_str()),
            )
            .await
                && let Value::Object(fields) = &mut result
            {
                fields.insert("nearTimeout".into(), warning);
            }
        }
        results.push(result);
    }
    // The daily verification covers the change segments too, when there
    // are any: a chain with a hole or a damaged segment is found the day
    // it happens, not at the restore that needs it.
    if scheduled
        && env.services.keyring.as_ref().is_some()
        && !env
            .services
            .repository
            .store()
            .list(backup_core::changes::segment::CHANGES_PREFIX)
            .await
            .map_err(|e| HandlerError::Operation(e.into()))?
            .is_empty()
    {
        let changes = env
            .within_deadline(&event.context, Operation::Verify, async {
                Ok(operations::verify_changes(&env.services, &VerifyChangesRequest::default()).await?)
            })
            .await?;
        if let Some(Value::Object(fields)) = results.first_mut() {
            fields.insert("changes".into(), report(&changes));
        }
    }
    Ok(if results.len() == 1 {
        results.remove(0)
    } else {
        json!({ "reports": results })
    })
}

/// New change segments: each one read through (document MAC, SHA-256,
/// every chunk) with the chain checked from the documents. The object's
/// event arrives before its document is stored: wait for it a little.
async fn verify_segments(
    env: &Environment,
    context: &lambda_runtime::Context,
    segments: Vec<backup_core::changes::SegmentId>,
) -> Result<Value, HandlerError> {
    let mut results = Vec::with_capacity(segments.len());
    for segment in segments {
        wait_for_segment_document(env, &segment).await?;
        let request = VerifyChangesRequest {
            segment: Some(segment.clone()),
        };
        let verified = env
            .within_deadline(context, Operation::Verify, async {
                Ok(operations::verify_changes(&env.services, &request).await?)
            })
            .await?;
        let mut result = report(&verified);
        if let Value::Object(fields) = &mut result {
            fields.insert("segmentId".into(), json!(segment));
        }
        results.push(result);
    }
    Ok(if results.len() == 1 {
        results.remove(0)
    } else {
        json!({ "reports": results })
    })
}

async fn wait_for_segment_document(
    env: &Environment,
    segment: &backup_core::changes::SegmentId,
) -> Result<(), HandlerError> {
    let attempts = u32::try_from(env.metadata_wait.as_millis() / 500).unwrap_or(u32::MAX);
    let store = env.services.repository.store();
    for attempt in 0..=attempts {
        match store.head(&segment.metadata_key()).await {
            Ok(_) => return Ok(()),
            Err(error) if error.is_not_found() && attempt < attempts => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) if error.is_not_found() => break,
            Err(error) => return Err(HandlerError::Operation(error.into())),
        }
    }
    Err(HandlerError::MetadataMissing(segment.metadata_key()))
}

/// The object's `ObjectCreated` event can arrive before the metadata is
/// written (it is written last): wait for it a little.
async fn wait_for_metadata(env: &Environment, id: &BackupId) -> Result<(), HandlerError> {
    let attempts = u32::try_from(env.metadata_wait.as_millis() / 500).unwrap_or(u32::MAX);
    for attempt in 0..=attempts {
        match env
            .services
            .repository
            .resolve(&BackupSelector::Id(id.clone()))
            .await
        {
            Ok(_) => return Ok(()),
            Err(RepositoryError::UnknownBackup { .. }) if attempt < attempts => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(RepositoryError::UnknownBackup { .. }) => {
                return Err(HandlerError::MetadataMissing(id.to_string()));
            }
            Err(other) => return Err(HandlerError::Operation(other.into())),
        }
    }
    Err(HandlerError::MetadataMissing(id.to_string()))
}

/// restore ← manual only: `{"backupId", "confirm", "tables", "target",
/// "reason", "requestedBy", "safetyBackup"}`; `confirm` must equal the
/// target database's name.
pub async fn restore(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let manual = match events::parse_restore(event.payload)? {
        RestoreEvent::Restore(manual) => manual,
        // Sealing a ledger record needs the key, which prune never holds.
        RestoreEvent::Erase(order) => {
            let record = env
                .within_deadline(&event.context, Operation::Erase, async {
                    Ok(operations::erase_subject(&env.services, &order).await?)
                })
                .await?;
            return Ok(json!({"erasureId": record.id, "table": record.table, "keyId": record.key_id}));
        }
    };
    let database_url = env.database_url("restore into").await?;
    let database_url = database_url.as_str();
    let application_database = database_name(database_url)?;
    let target_database = manual
        .target
        .clone()
        .unwrap_or_else(|| application_database.clone());
    if manual.confirm != target_database {
        return Err(HandlerError::Refused(format!(
            "restore refused: \"confirm\" must be the target database's name ({target_database:?}); nothing was changed"
        )));
    }
    let target_url = match &manual.target {
        Some(target) if *target != application_database => Some(with_database(database_url, target)?),
        _ => None,
    };
    let request = RestoreRequest {
        // As `backupctl restore --at`: the base is chosen for the instant.
        selector: match (manual.backup_id, manual.at) {
            (Some(selector), _) => selector,
            (None, Some(at)) => BackupSelector::Before(at),
            (None, None) => BackupSelector::Latest,
        },
        tables: manual.tables,
        database_url: Some(database_url.to_owned()),
        target_url,
        safety_backup: manual.safety_backup.unwrap_or(true),
        confirmation: Confirmation::DatabaseName(manual.confirm),
        replace_existing: false,
        reason: manual.reason,
        requested_by: manual.requested_by,
        container: env.settings.container,
        create_roles: manual.create_roles.and_then(|create| create.mode()),
        create_database: manual.create_db,
        no_tablespaces: manual.no_tablespaces,
        no_security_labels: manual.no_security_labels,
        large_objects: manual.large_objects,
        at: manual.at,
    };
    let outcome = env
        .within_deadline(&event.context, Operation::Restore, async {
            Ok(operations::restore_backup(&env.services, &request).await?)
        })
        .await?;
    Ok(report(&outcome))
}

fn database_name(url: &str) -> Result<String, HandlerError> {
    let config: tokio_postgres_config::Config = url
        .parse()
        .map_err(|_| HandlerError::InvalidEvent("the configured database URL is not valid".into()))?;
    Ok(config.get_dbname().unwrap_or("postgres").to_owned())
}

/// The same URL with another database name.
fn with_database(url: &str, database: &str) -> Result<String, HandlerError> {
    let invalid = || HandlerError::InvalidEvent(format!("target {database:?} is not a usable database name"));
    if database.is_empty() || database.contains(['/', '?', '#', '@', ':']) {
        return Err(invalid());
    }
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).ok_or_else(invalid)?;
    let path_start = base[authority_end..]
        .find('/')
        .map(|i| authority_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

mod tokio_postgres_config {
    pub use backup_core::postgres::Config;
}

/// capture ← its EventBridge schedule (every minute) or a manual
/// `{"maxChanges": N}`: the slot's changes into one segment under
/// `changes/`, the slot's safety (lag, achieved RPO, warnings) as metrics
/// and in the report. With `PITR_ENABLE_ON_FIRST_RUN=true` a database that
/// never had capture gets it set up first (`enabled` in the report names
/// the tables left out). A schema change of the published tables
/// (`chainCut`) makes the run take a base backup as create does
/// (`baseBackup`), within the same deadline.
pub async fn capture(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let order = events::parse_capture(event.payload)?;
    let database_url = env.database_url("capture changes from").await?;
    let mut request = CaptureRequest::new(database_url.as_str(), env.pitr_names.clone());
    request.container = env.settings.container;
    if let Some(max) = order.max_changes {
        request.max_changes = max;
    }
    let run = CaptureRun {
        capture: request,
        enable_on_first_run: env.pitr_enable_on_first_run,
        accepted_loss: env.settings.allow_schema_loss.clone(),
    };
    let outcome = env
        .within_deadline(&event.context, Operation::Capture, async {
            Ok(operations::capture_and_report(&env.services, &run).await?)
        })
        .await?;
    Ok(report(&outcome))
}

/// admin ← the optional Function URL (`AWS_IAM`): `POST /backups`,
/// `GET /backups`, `GET /backups/{id}` (see [`crate::admin`]).
pub async fn admin(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    crate::admin::handle(env, event).await
}

/// rotate ← Secrets Manager's rotation of the keyring secret: one of the
/// four steps per invocation (see [`crate::rotation`]). Every step that
/// changes the secret, and every refusal, goes to the audit trail.
pub async fn rotate_keyring(env: &Environment, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
    let rotation: crate::rotation::RotationEvent = serde_json::from_value(event.payload).map_err(|e| {
        HandlerError::InvalidEvent(format!(
            "{e}; expected Secrets Manager's rotation event {{\"SecretId\", \"ClientRequestToken\", \"Step\"}}"
        ))
    })?;
    let step = rotation.step;
    let details =
        json!({"secretId": rotation.secret_id, "step": step, "version": rotation.client_request_token});
    let result = crate::rotation::rotate(env.secrets.client(), rotation).await;
    let changes_secret = matches!(
        step,
        crate::rotation::RotationStep::CreateSecret | crate::rotation::RotationStep::FinishSecret
    );
    if changes_secret || result.is_err() {
        let (outcome, error, done) = match &result {
            Ok(value) => (Outcome::Success, None, value["done"].clone()),
            Err(error) => (Outcome::Failure, Some(error.chain()), Value::Null),
        };
        let mut details = details;
        details["done"] = done;
        env.services
            .audit
            .record(AuditRecord {
                time: chrono::Utc::now(),
                operation: Operation::RotateKey,
                backup_id: None,
                actor: env.services.actor.clone(),
                trigger: None,
                reason: Some("scheduled key rotation (Secrets Manager)".into()),
                outcome,
                error,
                details,
            })
            .await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_in_a_url_can_be_swapped() {
        assert_eq!(
            with_database(
                "postgres://u:p@h:5432/carwash?sslmode=require",
                "carwash_restored"
            )
            .unwrap(),
            "postgres://u:p@h:5432/carwash_restored?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "x").unwrap(), "postgres://h/x");
        assert!(with_database("postgres://h/db", "../x").is_err());
        assert_eq!(database_name("postgres://u@h/carwash").unwrap(), "carwash");
    }
}
