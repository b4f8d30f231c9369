//! One change capture run as the `capture` function and `backupctl pitr
//! capture` run it: set capture up on the first run when asked
//! (`EnablePitr`), capture, and report the slot's safety as metrics (EMF,
//! namespace `PgBackup`, operation `capture`): `SlotLagBytes`,
//! `OldestUncapturedCommitAgeSeconds` (the achieved RPO), `ChangesCaptured`
//! and `CaptureFailures`. A broken chain (the slot gone or invalidated) is
//! also sent to the webhook, after the run took a base backup that starts
//! a new chain (the backup recreates the slot).
//!
//! A schema change of the published tables cuts the chain (capture finds
//! it by the catalog fingerprint), and so does a TRUNCATE of a single
//! partition (found by the partition's file, `pg_class.relfilenode`,
//! changing without a captured TRUNCATE of its root): instants after it cannot be replayed
//! onto any base backup taken before it, so a base backup is taken right
//! away, through [`create_backup`] like any other, recording the slot's
//! position inside its snapshot. If it fails, the run fails (webhook
//! `pitr_base_backup_after_cut`) and the next run, which compares with the
//! newest base backup, finds the cut still open and tries again.
//!
//! No audit record of the run itself: one a minute would write 1,440 a day;
//! the metrics and the function's log are its record (a base backup it
//! takes is a create, audited as one).

use serde::Serialize;
use serde_json::json;

use super::{CreateRequest, OUTCOME_LOG, OperationError, Services, create_backup};
use crate::changes::{self, CaptureReport, CaptureRequest, ChainBase, ChainCut, ChangesError, EnableReport};
use crate::metadata::{BackupRequest, MetadataIntegrity, Trigger};
use crate::metrics::{MetricSet, Unit};
use crate::postgres::fidelity::AcceptedLoss;
use crate::request::TableList;

/// How many of the newest backups are read for the chain's base: one
/// listing and at most this many small documents per run. A base further
/// back is not looked for (the segments are still compared with each
/// other).
const BASE_LOOKUP_DEPTH: usize = 8;

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct CaptureRun {
    pub capture: CaptureRequest,
    /// `PITR_ENABLE_ON_FIRST_RUN`: when this database has neither the slot
    /// nor a stored segment of it, run `pitr enable` first (the template's
    /// `EnablePitr=true`). A slot lost after segments were stored is never
    /// recreated silently: that is a broken chain.
    pub enable_on_first_run: bool,
    /// `BACKUP_ALLOW_SCHEMA_LOSS`, for the base backup a schema change
    /// makes this run take (as the create function would).
    pub accepted_loss: AcceptedLoss,
}

/// The base backup a run took after a schema change cut the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseBackupAfterCut {
    pub id: String,
    /// Its position in the change stream: the new chain starts here.
    pub start_lsn: changes::Lsn,
    pub snapshot_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureRunReport {
    #[serde(flatten)]
    pub report: CaptureReport,
    /// Set when this run enabled capture first: the published tables and
    /// those left out (no primary key or replica identity, unlogged, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<EnableReport>,
    /// Taken because this run found the chain cut (`chainCut`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_backup: Option<BaseBackupAfterCut>,
}

/// Runs one capture and reports it (metrics; webhook for a broken chain).
pub async fn capture_and_report(
    services: &Services,
    run: &CaptureRun,
) -> Result<CaptureRunReport, OperationError> {
    let result = capture_once(services, run).await;
    match &result {
        Ok(run) => {
            let report = &run.report;
            MetricSet::new(super::Operation::Capture.as_str())
                .with("ChangesCaptured", report.changes() as f64, Unit::Count)
                .with("CaptureFailures", 0.0, Unit::Count)
                .with("SlotLagBytes", report.health.lag_bytes as f64, Unit::Bytes)
                .with(
                    "OldestUncapturedCommitAgeSeconds",
                    report.oldest_uncaptured_commit_age_seconds,
                    Unit::Seconds,
                )
                .emit(&services.metrics);
        }
        Err(error) => {
            MetricSet::new(super::Operation::Capture.as_str())
                .with("CaptureFailures", 1.0, Unit::Count)
                .emit(&services.metrics);
            let message = error.chain();
            tracing::error!(target: OUTCOME_LOG, error = %message, "change capture failed");
            if let OperationError::Changes(ChangesError::ChainBroken {
                slot, from, new_base, ..
            }) = error
            {
                services
                    .notifier
                    .failure(
                        &message,
                        json!({"operation": "capture", "failure": "pitr_chain_broken", "slot": slot, "brokenFromLsn": from,
                               "newBase": new_base}),
                    )
                    .await;
            }
            if let OperationError::BaseBackupAfterCut { slot, cut, .. } = error {
                services
                    .notifier
                    .failure(
                        &message,
                        json!({"operation": "capture", "failure": "pitr_base_backup_after_cut", "slot": slot,
                               "chainCut": cut}),
                    )
                    .await;
            }
        }
    }
    result
}

async fn capture_once(services: &Services, run: &CaptureRun) -> Result<CaptureRunReport, OperationError> {
    let keyring = services.keyring()?;
    let store = services.repository.store().as_ref();
    let mut enabled = None;
    let mut request = run.capture.clone();
    request.base = chain_base(services, &request.names.slot).await;
    let run = &CaptureRun {
        capture: request,
        ..run.clone()
    };
    let mut report = match changes::capture(store, keyring, &run.capture).await {
        Err(ChangesError::NotEnabled(why)) if run.enable_on_first_run => {
            tracing::info!(
                why,
                "change capture is not set up yet: enabling it (PITR_ENABLE_ON_FIRST_RUN)"
            );
            let report = changes::enable_pitr(&run.capture.database_url, &run.capture.names, &[]).await?;
            for left in &report.left_out {
                tracing::warn!(table = %left.table, reason = %left.reason, "left out of change capture");
            }
            enabled = Some(report);
            changes::capture(store, keyring, &run.capture).await?
        }
        Err(ChangesError::ChainBroken {
            slot,
            from,
            reason,
            advice,
            new_base: _,
        }) => return Err(base_backup_after_break(services, run, slot, from, reason, advice).await),
        other => other?,
    };
    let base_backup = match &report.chain_cut {
        None => None,
        Some(cut) => Some(base_backup_after_cut(services, run, cut).await?),
    };
    if run.capture.base.is_none() && base_backup.is_none() {
        let warning = format!(
            "none of the newest backups records the position of slot {}: the captured changes cannot be restored to a point in time until a base backup is taken (`backupctl create`, or the create function)",
            run.capture.names.slot
        );
        tracing::warn!("{warning}");
        report.health.warnings.push(warning);
    }
    Ok(CaptureRunReport {
        report,
        enabled,
        base_backup,
    })
}

/// The newest backup that records `slot`'s position (a usable base: not a
/// safety backup, its document authentic). `None` when none of the newest
/// few does, or they cannot be read (capture goes on, comparing segments
/// only).
async fn chain_base(services: &Services, slot: &str) -> Option<ChainBase> {
    let newest = match services.repository.newest(BASE_LOOKUP_DEPTH).await {
        Ok(newest) => newest,
        Err(error) => {
            tracing::warn!(%error, "could not read the newest backups: the new segment is compared with the one before it only");
            return None;
        }
    };
    newest.into_iter().find_map(|metadata| {
        let usable = metadata.trigger != Trigger::Safety
            && metadata.metadata_integrity == MetadataIntegrity::Authentic;
        let position = metadata.change_stream.filter(|position| position.slot == slot)?;
        usable.then(|| ChainBase {
            backup_id: metadata.id.to_string(),
            position,
        })
    })
}

/// A broken chain (the slot invalidated or gone) still fails the run, so
/// the failure alarm and the webhook fire; but a base backup is taken
/// first, which recreates the slot and starts a new chain, so the instants
/// that cannot be restored end now rather than at the next scheduled
/// backup. The error says which backup that was, or why there is none.
async fn base_backup_after_break(
    services: &Services,
    run: &CaptureRun,
    slot: String,
    from: changes::Lsn,
    reason: String,
    advice: String,
) -> OperationError {
    let broken = |advice: String, new_base: Option<changes::NewBase>| {
        OperationError::Changes(ChangesError::ChainBroken {
            slot: slot.clone(),
            from,
            reason: reason.clone(),
            advice,
            new_base,
        })
    };
    if services.pitr_slot.as_deref() != Some(slot.as_str()) || services.pitr_publication.is_none() {
        return broken(advice, None);
    }
    tracing::warn!(slot, %from, reason, "the change chain is broken: taking a base backup to start a new one");
    let request = base_backup_request(
        run,
        format!(
            "point-in-time recovery: the change chain broke at LSN {from} ({reason}); a base backup starts a new chain"
        ),
    );
    match create_backup(services, &request).await {
        Ok(metadata) => match metadata.change_stream.filter(|position| position.slot == slot) {
            Some(position) => broken(
                format!(
                    "A base backup was taken at once: backup {} starts a new chain at LSN {} ({}), so only the instants from LSN {from} up to it cannot be restored",
                    metadata.id,
                    position.start_lsn,
                    position
                        .snapshot_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                Some(changes::NewBase {
                    backup_id: metadata.id.to_string(),
                    start_lsn: position.start_lsn,
                }),
            ),
            None => broken(
                format!(
                    "The base backup taken at once ({}) could not recreate the slot, so it starts no chain (its log says why): run `backupctl pitr disable`, then `backupctl pitr enable`, then take a base backup",
                    metadata.id
                ),
                None,
            ),
        },
        Err(error) => broken(
            format!(
                "Taking a base backup at once failed ({}); {}",
                error.chain(),
                changes::capture::NEXT_BASE_ADVICE
            ),
            None,
        ),
    }
}

/// A create of the whole database, as the create function takes one, for
/// the reason given (not a person's request: the audit report does not ask
/// for one).
fn base_backup_request(run: &CaptureRun, reason: String) -> CreateRequest {
    CreateRequest {
        database_url: run.capture.database_url.clone(),
        tables: TableList::all(),
        request: BackupRequest {
            trigger: Trigger::Schedule,
            reason: Some(reason),
            requested_by: Some("capture".to_owned()),
        },
        container: run.capture.container,
        accepted_loss: run.accepted_loss.clone(),
    }
}

/// A base backup of the whole database, as the create function takes one,
/// that must record the slot's position at or after the cut segment's end.
async fn base_backup_after_cut(
    services: &Services,
    run: &CaptureRun,
    cut: &ChainCut,
) -> Result<BaseBackupAfterCut, OperationError> {
    let slot = run.capture.names.slot.clone();
    let failed = |source: OperationError| OperationError::BaseBackupAfterCut {
        slot: slot.clone(),
        cut: Box::new(cut.clone()),
        source: Box::new(source),
    };
    if services.pitr_slot.as_deref() != Some(slot.as_str()) {
        return Err(failed(OperationError::Refused(format!(
            "a backup would not record slot {slot}'s position (it looks for {}): set BACKUP_PITR_SLOT to the capture's slot",
            services.pitr_slot.as_deref().unwrap_or("no slot")
        ))));
    }
    tracing::info!(segment = %cut.segment, reason = %cut.reason, "taking a base backup to start a new change chain after the cut");
    let request = base_backup_request(
        run,
        format!(
            "point-in-time recovery: {} (change segment {}); a base backup starts a new chain",
            cut.reason, cut.segment
        ),
    );
    let metadata = create_backup(services, &request).await.map_err(&failed)?;
    let Some(position) = metadata.change_stream.filter(|position| position.slot == slot) else {
        return Err(failed(OperationError::Refused(format!(
            "backup {} does not record slot {slot}'s position (was the slot dropped meanwhile?), so it starts no chain",
            metadata.id
        ))));
    };
    tracing::info!(backup_id = %metadata.id, start_lsn = %position.start_lsn, "base backup taken after the cut: the new chain starts here");
    Ok(BaseBackupAfterCut {
        id: metadata.id.to_string(),
        start_lsn: position.start_lsn,
        snapshot_at: position.snapshot_at,
    })
}
