//! One change capture run as the `capture` function and `backupctl pitr
//! capture` run it: set capture up on the first run when asked
//! (`EnablePitr`), capture, and report the slot's safety as metrics (EMF,
//! namespace `PgBackup`, operation `capture`): `SlotLagBytes`,
//! `OldestUncapturedCommitAgeSeconds` (the achieved RPO), `ChangesCaptured`
//! and `CaptureFailures`. A broken chain (the slot gone or invalidated) is
//! also sent to the webhook.
//!
//! No audit record: a run every minute would write 1,440 a day, and the
//! capture role may write nothing outside `changes/` (and the repository's
//! identity) — the metrics and the function's log are its record.

use serde::Serialize;
use serde_json::json;

use super::{OUTCOME_LOG, OperationError, Services};
use crate::changes::{self, CaptureReport, CaptureRequest, ChangesError, EnableReport};
use crate::metrics::{MetricSet, Unit};

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct CaptureRun {
    pub capture: CaptureRequest,
    /// `PITR_ENABLE_ON_FIRST_RUN`: when this database has neither the slot
    /// nor a stored segment of it, run `pitr enable` first (the template's
    /// `EnablePitr=true`). A slot lost after segments were stored is never
    /// recreated silently: that is a broken chain.
    pub enable_on_first_run: bool,
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
            if let OperationError::Changes(ChangesError::ChainBroken { slot, from, .. }) = error {
                services
                    .notifier
                    .failure(
                        &message,
                        json!({"operation": "capture", "failure": "pitr_chain_broken", "slot": slot, "brokenFromLsn": from}),
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
    let report = match changes::capture(store, keyring, &run.capture).await {
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
        other => other?,
    };
    Ok(CaptureRunReport { report, enabled })
}
