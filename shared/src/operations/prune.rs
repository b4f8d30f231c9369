//! prune: apply the retention policy, then sweep what crashed runs left.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;

use super::{OperationError, Services};
use crate::audit::{AuditRecord, Outcome};
use crate::metadata::VerificationStatus;
use crate::metrics::{MetricSet, Unit};
use crate::repository::RepositoryError;
use crate::retention::{BackupFacts, Decision, RetentionPolicy, plan_prune};
use crate::storage::StorageError;

#[derive(Debug, Clone)]
pub struct PruneRequest {
    pub policy: RetentionPolicy,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// Backup objects without metadata are swept once older than this
    /// (a backup still being written has no metadata yet either).
    pub orphan_grace: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneFailure {
    pub key: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneOutcome {
    pub dry_run: bool,
    pub kept: Vec<Decision>,
    pub deleted: Vec<Decision>,
    /// Objects with no metadata (crashed runs) and stray verification records.
    pub orphans_deleted: Vec<String>,
    /// Deletions storage refused (e.g. Object Lock); the rest went ahead.
    pub failures: Vec<PruneFailure>,
}

pub async fn prune_backups(
    services: &Services,
    request: &PruneRequest,
) -> Result<PruneOutcome, OperationError> {
    let backups = services.repository.list().await?;
    let facts: Vec<BackupFacts> = backups
        .iter()
        .map(|m| BackupFacts {
            id: m.id.clone(),
            taken_at: m.timestamp,
            verified: m
                .verification
                .as_ref()
                .is_some_and(|v| v.status == VerificationStatus::Passed),
        })
        .collect();
    let plan = plan_prune(&facts, request.policy, request.now);
    let mut outcome = PruneOutcome {
        dry_run: request.dry_run,
        kept: plan.keep,
        deleted: Vec::new(),
        orphans_deleted: Vec::new(),
        failures: Vec::new(),
    };

    for decision in plan.delete {
        if !request.dry_run {
            match services.repository.delete_backup(&decision.backup_id).await {
                Ok(()) => {}
                Err(error) => {
                    outcome
                        .failures
                        .push(failure(decision.backup_id.metadata_key(), &error));
                    continue;
                }
            }
            services
                .audit
                .record(audit(
                    services,
                    Some(decision.backup_id.to_string()),
                    json!({"reason": decision.reason}),
                ))
                .await;
        }
        tracing::info!(backup_id = %decision.backup_id, reason = decision.reason, dry_run = request.dry_run, "pruning backup");
        outcome.deleted.push(decision);
    }

    let cutoff = request.now - request.orphan_grace;
    for (id, info) in services.repository.unpublished_objects().await? {
        let started = id.started_at().unwrap_or(info.last_modified);
        if started >= cutoff || info.last_modified >= cutoff {
            continue;
        }
        if !request.dry_run
            && let Err(error) = services.repository.store().delete(&info.key).await
        {
            outcome
                .failures
                .push(failure(info.key.clone(), &RepositoryError::Storage(error)));
            continue;
        }
        outcome.orphans_deleted.push(info.key);
    }
    for key in services.repository.stray_verification_records().await? {
        if !request.dry_run
            && let Err(error) = services.repository.store().delete(&key).await
        {
            outcome
                .failures
                .push(failure(key.clone(), &RepositoryError::Storage(error)));
            continue;
        }
        outcome.orphans_deleted.push(key);
    }

    if !request.dry_run {
        MetricSet::new("prune")
            .with("PrunedBackups", outcome.deleted.len() as f64, Unit::Count)
            .with("PruneFailures", outcome.failures.len() as f64, Unit::Count)
            .emit(services.metrics);
        services
            .audit
            .record(audit(
                services,
                None,
                json!({"deleted": outcome.deleted.len(), "kept": outcome.kept.len(),
                       "orphansDeleted": outcome.orphans_deleted, "failures": outcome.failures}),
            ))
            .await;
        if !outcome.deleted.is_empty() || !outcome.orphans_deleted.is_empty() {
            services
                .notifier
                .event(
                    "backups_pruned",
                    json!({"backupIds": outcome.deleted.iter().map(|d| &d.backup_id).collect::<Vec<_>>(),
                           "orphansDeleted": outcome.orphans_deleted.len(), "kept": outcome.kept.len()}),
                )
                .await;
        }
    }
    Ok(outcome)
}

fn failure(key: String, error: &RepositoryError) -> PruneFailure {
    let locked = matches!(error, RepositoryError::Storage(StorageError::Locked { .. }));
    tracing::warn!(key, %error, locked, "could not delete; continuing with the rest");
    PruneFailure {
        key,
        error: error.to_string(),
    }
}

fn audit(services: &Services, backup_id: Option<String>, details: serde_json::Value) -> AuditRecord {
    AuditRecord {
        time: Utc::now(),
        operation: "prune",
        backup_id,
        actor: services.actor.clone(),
        trigger: None,
        reason: None,
        outcome: Outcome::Success,
        error: None,
        details,
    }
}
