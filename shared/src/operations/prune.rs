//! prune: apply the retention policy, then sweep what crashed runs left.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;

use super::{Finished, Notification, Operation, OperationError, Services};
use crate::metrics::Unit;
use crate::repository::RepositoryError;
use crate::request::PruneOrder;
use crate::retention::{
    BackupFacts, BaseFacts, Decision, RetentionPolicy, SegmentDecision, SegmentFacts, plan_prune,
    plan_segment_prune,
};
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

impl PruneRequest {
    /// A prune now, as `order` asks, under the configured policy.
    pub fn new(order: PruneOrder, configured: RetentionPolicy) -> Self {
        Self {
            policy: order.policy(configured),
            dry_run: order.dry_run,
            now: Utc::now(),
            orphan_grace: Duration::days(1),
        }
    }
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
    /// Change segments (`changes/`) kept, each with why: a retained base
    /// backup's chain needs it, or its document cannot be trusted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments_kept: Vec<SegmentDecision>,
    /// Change segments deleted (or, in a dry run, that would be): every
    /// retained base backup starts past them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments_deleted: Vec<SegmentDecision>,
    /// Objects with no metadata (crashed runs) and stray verification records.
    pub orphans_deleted: Vec<String>,
    /// Deletions storage refused (e.g. Object Lock); the rest went ahead.
    pub failures: Vec<PruneFailure>,
    /// What the store holds after this prune.
    pub storage: StorageUse,
}

/// The store's size, measured by listing it after the prune.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageUse {
    /// Everything billed: current objects and older versions.
    pub used_bytes: u64,
    /// Of which older versions (pruned backups a versioned bucket keeps
    /// until its lifecycle expires them).
    pub noncurrent_bytes: u64,
    pub backup_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_used_percent: Option<f64>,
}

/// Share of the storage budget at which prune warns.
pub const BUDGET_WARNING_PERCENT: f64 = 80.0;

/// Every prefix the system writes under.
const STORE_PREFIXES: [&str; 8] = [
    "backups/",
    "changes/",
    "metadata/",
    "verification/",
    "audit/",
    "erasures/",
    "reports/",
    "drills/",
];

async fn measure_storage(services: &Services, backup_count: usize) -> Result<StorageUse, OperationError> {
    let (mut used_bytes, mut noncurrent_bytes) = (0u64, 0u64);
    for prefix in STORE_PREFIXES {
        let stored = services.repository.store().stored_bytes(prefix).await?;
        used_bytes = used_bytes
            .saturating_add(stored.current)
            .saturating_add(stored.noncurrent);
        noncurrent_bytes = noncurrent_bytes.saturating_add(stored.noncurrent);
    }
    let budget_used_percent = services
        .storage_budget_bytes
        .map(|budget| used_bytes as f64 / budget as f64 * 100.0);
    Ok(StorageUse {
        used_bytes,
        noncurrent_bytes,
        backup_count,
        budget_bytes: services.storage_budget_bytes,
        budget_used_percent,
    })
}

pub async fn prune_backups(
    services: &Services,
    request: &PruneRequest,
) -> Result<PruneOutcome, OperationError> {
    let result = prune_inner(services, request).await;
    let mut finished = Finished::new(Operation::Prune);
    match &result {
        // A dry run changes nothing, so it is neither audited nor measured.
        Ok(outcome) if outcome.dry_run => return result,
        Ok(outcome) => {
            finished.metrics = finished
                .metrics
                .with("PrunedBackups", outcome.deleted.len() as f64, Unit::Count)
                .with(
                    "PrunedSegments",
                    outcome.segments_deleted.len() as f64,
                    Unit::Count,
                )
                .with("PruneFailures", outcome.failures.len() as f64, Unit::Count)
                .with("StorageUsedBytes", outcome.storage.used_bytes as f64, Unit::Bytes)
                .with(
                    "StorageNoncurrentBytes",
                    outcome.storage.noncurrent_bytes as f64,
                    Unit::Bytes,
                )
                .with("BackupCount", outcome.storage.backup_count as f64, Unit::Count);
            if let Some(percent) = outcome.storage.budget_used_percent {
                finished.metrics = finished
                    .metrics
                    .with("StorageBudgetUsedPercent", percent, Unit::Percent);
            }
            finished.details = json!({"deleted": outcome.deleted.len(), "kept": outcome.kept.len(),
                                      "segmentsDeleted": outcome.segments_deleted.len(),
                                      "segmentsKept": outcome.segments_kept.len(),
                                      "orphansDeleted": outcome.orphans_deleted, "failures": outcome.failures});
            if outcome.failures.is_empty() {
                if !outcome.deleted.is_empty()
                    || !outcome.orphans_deleted.is_empty()
                    || !outcome.segments_deleted.is_empty()
                {
                    finished.notification = Notification::Event {
                        event: "backups_pruned",
                        payload: json!({"backupIds": outcome.deleted.iter().map(|d| &d.backup_id).collect::<Vec<_>>(),
                                        "segmentsDeleted": outcome.segments_deleted.len(),
                                        "orphansDeleted": outcome.orphans_deleted.len(), "kept": outcome.kept.len()}),
                    };
                }
            } else {
                let message = format!(
                    "prune could not delete {} of its objects (first: {}: {})",
                    outcome.failures.len(),
                    outcome.failures[0].key,
                    outcome.failures[0].error
                );
                finished.error = Some(message.clone());
                finished.notification = Notification::Failure {
                    message,
                    context: json!({"operation": Operation::Prune, "failures": outcome.failures}),
                };
            }
        }
        Err(error) => {
            let message = error.chain();
            tracing::error!(target: super::OUTCOME_LOG, error = %message, "prune could not run; nothing was deleted");
            finished.metrics = finished.metrics.with("PruneFailures", 1.0, Unit::Count);
            finished.error = Some(message.clone());
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Prune}),
            };
        }
    }
    services.report(finished).await;
    if let Ok(outcome) = &result
        && let (Some(percent), Some(budget)) =
            (outcome.storage.budget_used_percent, outcome.storage.budget_bytes)
        && percent >= BUDGET_WARNING_PERCENT
        && !outcome.dry_run
    {
        let message = format!(
            "backups use {:.1} % of the storage budget ({} of {budget} bytes, {} backups): lower the retention or raise the budget",
            percent, outcome.storage.used_bytes, outcome.storage.backup_count
        );
        tracing::warn!(%message, "storage budget");
        services
            .notifier
            .event(
                "backup_storage_warning",
                json!({"message": message, "storage": outcome.storage}),
            )
            .await;
    }
    result
}

async fn prune_inner(services: &Services, request: &PruneRequest) -> Result<PruneOutcome, OperationError> {
    let backups = services.repository.list().await?;
    let facts: Vec<BackupFacts> = backups.iter().map(BackupFacts::from).collect();
    let plan = plan_prune(&facts, request.policy, request.now);
    let mut outcome = PruneOutcome {
        dry_run: request.dry_run,
        kept: plan.keep,
        deleted: Vec::new(),
        segments_kept: Vec::new(),
        segments_deleted: Vec::new(),
        orphans_deleted: Vec::new(),
        failures: Vec::new(),
        storage: StorageUse {
            used_bytes: 0,
            noncurrent_bytes: 0,
            backup_count: 0,
            budget_bytes: None,
            budget_used_percent: None,
        },
    };

    for decision in plan.delete {
        if !request.dry_run {
            if let Err(error) = services.repository.delete_backup(&decision.backup_id).await {
                outcome
                    .failures
                    .push(failure(decision.backup_id.metadata_key(), &error));
                continue;
            }
            // Each deletion is audited on its own, as it happens.
            let mut deleted = Finished::new(Operation::Prune);
            deleted.backup_id = Some(decision.backup_id.to_string());
            deleted.details = json!({"reason": decision.reason});
            services.report(deleted).await;
        }
        tracing::info!(backup_id = %decision.backup_id, reason = decision.reason, dry_run = request.dry_run, "pruning backup");
        outcome.deleted.push(decision);
    }

    // The backups that stay (those whose deletion failed stay too) are
    // the bases whose chains the change segments must keep serving.
    let retained_bases: Vec<BaseFacts> = backups
        .iter()
        .filter(|backup| !outcome.deleted.iter().any(|d| d.backup_id == backup.id))
        .filter_map(|backup| {
            backup.change_stream.as_ref().map(|position| BaseFacts {
                backup_id: backup.id.clone(),
                slot: position.slot.clone(),
                start_lsn: position.start_lsn,
            })
        })
        .collect();
    prune_segments(services, request, &retained_bases, &mut outcome).await?;

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
    // Temporary files of local uploads whose process died (never those of
    // a create still running: it holds a lock on its file).
    match services
        .repository
        .store()
        .sweep_abandoned_uploads(request.dry_run)
        .await
    {
        Ok(swept) => outcome.orphans_deleted.extend(swept),
        Err(error) => outcome.failures.push(failure(
            services.repository.store().describe(),
            &RepositoryError::Storage(error),
        )),
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
    let remaining = facts.len() - if request.dry_run { 0 } else { outcome.deleted.len() };
    outcome.storage = measure_storage(services, remaining).await?;
    Ok(outcome)
}

/// Deletes the change segments no retained base backup needs (document
/// first, so a half-deleted segment is never listed), and segment objects
/// whose document never arrived (a capture that failed), once older than
/// the orphan grace.
async fn prune_segments(
    services: &Services,
    request: &PruneRequest,
    retained_bases: &[BaseFacts],
    outcome: &mut PruneOutcome,
) -> Result<(), OperationError> {
    let store = services.repository.store();
    // The prune function holds no key: documents are then read unchecked,
    // enough to delete what every retained base has passed.
    let documents = crate::changes::read_documents(store.as_ref(), services.keyring.as_ref()).await?;
    let mut facts = Vec::new();
    for document in &documents {
        match &document.metadata {
            Some(metadata) => facts.push(SegmentFacts {
                id: metadata.id.to_string(),
                slot: metadata.slot.clone(),
                end_lsn: metadata.end_lsn,
            }),
            None => outcome.segments_kept.push(SegmentDecision {
                segment_id: document.id(),
                reason: format!(
                    "its document cannot be trusted ({}); left for a person to look at",
                    document.error.as_deref().unwrap_or("unreadable")
                ),
            }),
        }
    }
    let plan = plan_segment_prune(&facts, retained_bases);
    outcome.segments_kept.extend(plan.keep);
    for decision in plan.delete {
        if !request.dry_run {
            let mut failed = false;
            for key in [
                format!(
                    "{}{}.json",
                    crate::changes::segment::CHANGES_PREFIX,
                    decision.segment_id
                ),
                format!(
                    "{}{}.segment",
                    crate::changes::segment::CHANGES_PREFIX,
                    decision.segment_id
                ),
            ] {
                if let Err(error) = store.delete(&key).await {
                    outcome
                        .failures
                        .push(failure(key, &RepositoryError::Storage(error)));
                    failed = true;
                    break;
                }
            }
            if failed {
                continue;
            }
            let mut deleted = Finished::new(Operation::Prune);
            deleted.details = json!({"segmentId": decision.segment_id, "reason": decision.reason});
            services.report(deleted).await;
        }
        tracing::info!(segment_id = %decision.segment_id, reason = decision.reason, dry_run = request.dry_run, "pruning change segment");
        outcome.segments_deleted.push(decision);
    }
    // Segment objects without a document: a capture that could not store
    // its document (and could not remove the object either).
    let cutoff = request.now - request.orphan_grace;
    let objects = store.list(crate::changes::segment::CHANGES_PREFIX).await?;
    let documented: std::collections::HashSet<&str> = objects
        .iter()
        .filter_map(|info| info.key.strip_suffix(".json"))
        .collect();
    for info in &objects {
        let Some(stem) = info.key.strip_suffix(".segment") else {
            continue;
        };
        if documented.contains(stem) || info.last_modified >= cutoff {
            continue;
        }
        if !request.dry_run
            && let Err(error) = store.delete(&info.key).await
        {
            outcome
                .failures
                .push(failure(info.key.clone(), &RepositoryError::Storage(error)));
            continue;
        }
        outcome.orphans_deleted.push(info.key.clone());
    }
    Ok(())
}

fn failure(key: String, error: &RepositoryError) -> PruneFailure {
    let locked = matches!(error, RepositoryError::Storage(StorageError::Locked { .. }));
    tracing::warn!(key, %error, locked, "could not delete; continuing with the rest");
    PruneFailure {
        key,
        error: error.to_string(),
    }
}
