//! report audit: what happened to the backups in a period, from the audit
//! trail, and where the store stands against the policy — the quarterly
//! review an auditor asks for, as Markdown, JSON or CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use chrono::{DateTime, Datelike, Duration, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Finished, Notification, Operation, OperationError, Services};
use crate::audit::{AuditRecord, Outcome};
use crate::metadata::Trigger;
use crate::repository::human_age;
use crate::request::{ReportDate, RequestError};
use crate::retention::{BackupFacts, RetentionPolicy, plan_prune};
use crate::storage::get_bytes;
use futures_util::StreamExt;

/// An audit record is small; a larger one is not ours.
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Audit records read at once by the report.
const AUDIT_READS_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone)]
pub struct AuditReportRequest {
    /// Start of the period (inclusive).
    pub from: DateTime<Utc>,
    /// End of the period (exclusive).
    pub to: DateTime<Utc>,
    /// Longest allowed time between two successful backups.
    pub rpo: Duration,
    pub policy: RetentionPolicy,
    pub now: DateTime<Utc>,
}

impl AuditReportRequest {
    /// The calendar quarter before the one `now` is in (what the quarterly
    /// schedule reports on).
    pub fn previous_quarter(now: DateTime<Utc>, rpo: Duration, policy: RetentionPolicy) -> Self {
        let quarter_start = |year: i32, quarter: u32| {
            Utc.from_utc_datetime(
                &NaiveDate::from_ymd_opt(year, quarter * 3 + 1, 1)
                    .unwrap_or_default()
                    .and_hms_opt(0, 0, 0)
                    .unwrap_or_default(),
            )
        };
        let this = (now.month0()) / 3;
        let to = quarter_start(now.year(), this);
        let from = if this == 0 {
            quarter_start(now.year() - 1, 3)
        } else {
            quarter_start(now.year(), this - 1)
        };
        Self {
            from,
            to,
            rpo,
            policy,
            now,
        }
    }

    /// The period asked for: `from` to `to` (a whole `to` day included);
    /// neither: the previous calendar quarter; only `from`: until now.
    pub fn for_period(
        from: Option<ReportDate>,
        to: Option<ReportDate>,
        rpo: Duration,
        policy: RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<Self, RequestError> {
        let (from, to) = match (from, to) {
            (None, None) => return Ok(Self::previous_quarter(now, rpo, policy)),
            (Some(from), Some(to)) => (from.start, to.end()),
            (Some(from), None) => (from.start, now),
            (None, Some(_)) => return Err(RequestError::ReportPeriod("give --from with --to")),
        };
        if from >= to {
            return Err(RequestError::ReportPeriod("it must start before it ends"));
        }
        Ok(Self {
            from,
            to,
            rpo,
            policy,
            now,
        })
    }

    /// `2026-Q3`, or the dates when the period is not a quarter.
    pub fn period_name(&self) -> String {
        let quarter_long = (self.to - self.from).num_days() >= 89 && (self.to - self.from).num_days() <= 92;
        if quarter_long && self.from.day() == 1 && self.from.month0().is_multiple_of(3) {
            format!("{}-Q{}", self.from.year(), self.from.month0() / 3 + 1)
        } else {
            format!("{}_{}", self.from.format("%Y-%m-%d"), self.to.format("%Y-%m-%d"))
        }
    }
}

/// One operation as the report lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedOperation {
    #[serde(flatten)]
    pub record: AuditRecord,
    /// A manual operation (a person asked) recorded without a reason.
    pub missing_reason: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    pub from: String,
    pub to: String,
    pub minutes: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionCompliance {
    pub retention_days: u32,
    pub backups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_backup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_age_days: Option<i64>,
    /// Older than the policy but kept, with the policy's reason.
    pub kept_past_retention: Vec<Value>,
    /// Older than the policy and not protected: the next prune deletes them.
    pub awaiting_prune: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub period: String,
    pub from: String,
    pub to: String,
    pub generated_at: String,
    pub operations: Vec<ReportedOperation>,
    /// `operation` → `outcome` → count.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    pub manual_without_reason: usize,
    pub restores: Vec<Value>,
    pub verifications: Vec<Value>,
    pub rpo_minutes: i64,
    /// Periods longer than the RPO without a successful backup.
    pub gaps: Vec<Gap>,
    pub retention: RetentionCompliance,
    /// Key id → backups under it, among the backups the store holds now.
    pub key_ids_in_use: BTreeMap<String, usize>,
    /// Key rotations in the period.
    pub key_rotations: Vec<Value>,
    /// Point-in-time recovery: the achieved RPO per day and the chain's
    /// gaps, from the change segments (absent when there are none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_capture: Option<ChangeCapture>,
}

/// The change segments' side of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeCapture {
    /// Segments stored in the period (repeats included).
    pub segments: usize,
    /// Per day with segments: the longest a commit waited to be stored.
    pub days: Vec<crate::changes::chain::DayCoverage>,
    /// The worst day's achieved RPO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_rpo_seconds: Option<i64>,
    /// LSN ranges no stored segment holds.
    pub gaps: Vec<crate::changes::Hole>,
    /// Segment documents that fail their MAC (or cannot be read).
    pub untrusted_documents: Vec<String>,
}

fn at(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A record of something a person asked for (not a schedule or an event).
fn is_manual(record: &AuditRecord) -> bool {
    match record.operation {
        Operation::Create => record
            .trigger
            .is_some_and(|t| !matches!(t, Trigger::Schedule | Trigger::Hourly)),
        Operation::Restore => true,
        Operation::Erase | Operation::LedgerSetAside => true,
        _ => false,
    }
}

/// Builds the report from the audit trail and the store.
pub async fn build_audit_report(
    services: &Services,
    request: &AuditReportRequest,
) -> Result<AuditReport, OperationError> {
    let store = services.repository.store();
    // audit/YYYY/MM/DD/…: days outside the period are not read at all.
    let (first, last) = (request.from.date_naive(), request.to.date_naive());
    let keys: Vec<String> = store
        .list("audit/")
        .await?
        .into_iter()
        .filter(|info| {
            let day = info
                .key
                .get(6..16)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y/%m/%d").ok());
            day.is_none_or(|day| first <= day && day <= last)
        })
        .map(|info| info.key)
        .collect();
    // A quarter holds thousands of small records: read them
    // AUDIT_READS_IN_FLIGHT at a time, not one round trip after another
    // (the report runs inside the prune function's deadline).
    let mut reads = futures_util::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let bytes = get_bytes(store.as_ref(), &key, MAX_RECORD_BYTES).await;
                (key, bytes)
            }
        })
        .buffer_unordered(AUDIT_READS_IN_FLIGHT);
    let mut read = Vec::new();
    while let Some((key, bytes)) = reads.next().await {
        match serde_json::from_slice::<AuditRecord>(&bytes?) {
            Ok(record) if record.time >= request.from && record.time < request.to => read.push((key, record)),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(key, %error, "an audit record could not be read; left out")
            }
        }
    }
    // In time order, records of the same instant in key order (as the
    // sequential reads gave them).
    read.sort_by(|(a_key, a), (b_key, b)| a.time.cmp(&b.time).then_with(|| a_key.cmp(b_key)));
    let records: Vec<AuditRecord> = read.into_iter().map(|(_, record)| record).collect();

    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for record in &records {
        let outcome = match record.outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        };
        *counts
            .entry(record.operation.to_string())
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
    }
    let operations: Vec<ReportedOperation> = records
        .iter()
        .map(|record| ReportedOperation {
            record: record.clone(),
            missing_reason: is_manual(record) && record.reason.as_deref().is_none_or(|r| r.trim().is_empty()),
        })
        .collect();
    let manual_without_reason = operations.iter().filter(|o| o.missing_reason).count();
    let summary = |record: &AuditRecord| {
        json!({"time": at(record.time), "backupId": record.backup_id, "actor": record.actor,
               "reason": record.reason, "outcome": record.outcome, "error": record.error,
               "details": record.details})
    };
    let restores = records
        .iter()
        .filter(|r| r.operation == Operation::Restore)
        .map(summary)
        .collect();
    let verifications = records
        .iter()
        .filter(|r| r.operation == Operation::Verify && r.backup_id.is_some())
        .map(summary)
        .collect();
    let key_rotations = records
        .iter()
        .filter(|r| r.operation == Operation::RotateKey)
        .map(summary)
        .collect();

    // Gaps: successful backups in the period, with the period's edges
    // (the end no later than now).
    let end = request.to.min(request.now);
    let mut instants: Vec<DateTime<Utc>> = vec![request.from];
    instants.extend(
        records
            .iter()
            .filter(|r| r.operation == Operation::Create && r.outcome == Outcome::Success)
            .map(|r| r.time),
    );
    instants.push(end);
    let gaps = instants
        .windows(2)
        .filter(|pair| pair[1] - pair[0] > request.rpo)
        .map(|pair| Gap {
            from: at(pair[0]),
            to: at(pair[1]),
            minutes: (pair[1] - pair[0]).num_minutes(),
        })
        .collect();

    let backups = services.repository.list().await?;
    let facts: Vec<BackupFacts> = backups.iter().map(BackupFacts::from).collect();
    let plan = plan_prune(&facts, request.policy, request.now);
    let cutoff = request.now - Duration::days(i64::from(request.policy.retention_days));
    let past = |id: &crate::metadata::BackupId| backups.iter().any(|m| &m.id == id && m.taken_at() < cutoff);
    let oldest = backups.last();
    let retention = RetentionCompliance {
        retention_days: request.policy.retention_days,
        backups: backups.len(),
        oldest_backup: oldest.map(|m| m.id.to_string()),
        oldest_age_days: oldest.map(|m| (request.now - m.taken_at()).num_days()),
        kept_past_retention: plan
            .keep
            .iter()
            .filter(|d| past(&d.backup_id))
            .map(|d| json!({"backupId": d.backup_id, "reason": d.reason}))
            .collect(),
        awaiting_prune: plan.delete.iter().map(|d| d.backup_id.to_string()).collect(),
    };
    let change_capture = change_capture(services, request).await?;
    let mut key_ids_in_use: BTreeMap<String, usize> = BTreeMap::new();
    for backup in &backups {
        *key_ids_in_use.entry(backup.key_id.clone()).or_default() += 1;
    }
    Ok(AuditReport {
        period: request.period_name(),
        from: at(request.from),
        to: at(request.to),
        generated_at: at(request.now),
        operations,
        counts,
        manual_without_reason,
        restores,
        verifications,
        rpo_minutes: request.rpo.num_minutes(),
        gaps,
        retention,
        key_ids_in_use,
        key_rotations,
        change_capture,
    })
}

/// The achieved RPO per day and the gaps, from the segment documents
/// (their MACs checked when the key is at hand; the prune function, which
/// writes the quarterly report, reads them unchecked).
async fn change_capture(
    services: &Services,
    request: &AuditReportRequest,
) -> Result<Option<ChangeCapture>, OperationError> {
    use crate::changes::chain;
    let documents =
        chain::read_documents(services.repository.store().as_ref(), services.keyring.as_ref()).await?;
    if documents.is_empty() {
        return Ok(None);
    }
    let end = request.to.min(request.now);
    let days = chain::coverage_per_day(&documents, request.from, end);
    let continuity = chain::continuity(documents.iter().filter_map(|d| d.metadata.as_ref()));
    Ok(Some(ChangeCapture {
        segments: documents
            .iter()
            .filter(|d| d.stored_at >= request.from && d.stored_at < end)
            .count(),
        worst_rpo_seconds: days.iter().map(|d| d.achieved_rpo_seconds).max(),
        days,
        gaps: continuity.holes,
        untrusted_documents: documents
            .iter()
            .filter(|d| d.metadata.is_none())
            .map(|d| d.key.clone())
            .collect(),
    }))
}

/// Builds the report, stores it under `reports/` (Markdown and JSON),
/// audits and notifies. Returns the report and the stored keys.
pub async fn publish_audit_report(
    services: &Services,
    request: &AuditReportRequest,
) -> Result<(AuditReport, Vec<String>), OperationError> {
    let result = async {
        let report = build_audit_report(services, request).await?;
        let base = format!("reports/audit-{}", report.period);
        let markdown = format!("{base}.md");
        let json = format!("{base}.json");
        let store = services.repository.store();
        store.put(&markdown, Bytes::from(report.to_markdown())).await?;
        store
            .put(
                &json,
                Bytes::from(serde_json::to_vec_pretty(&report).expect("reports serialize")),
            )
            .await?;
        Ok::<_, OperationError>((report, vec![markdown, json]))
    }
    .await;
    let mut finished = Finished::new(Operation::Report);
    match &result {
        Ok((report, keys)) => {
            finished.details = json!({"period": report.period, "keys": keys, "gaps": report.gaps.len(),
                                      "manualWithoutReason": report.manual_without_reason});
            finished.notification = Notification::Event {
                event: "audit_report",
                payload: json!({"period": report.period, "keys": keys, "operations": report.operations.len(),
                                "gaps": report.gaps.len(), "manualWithoutReason": report.manual_without_reason,
                                "awaitingPrune": report.retention.awaiting_prune.len()}),
            };
        }
        Err(error) => {
            let message = error.chain();
            finished.error = Some(message.clone());
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Report}),
            };
        }
    }
    services.report(finished).await;
    result
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl AuditReport {
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Backup audit report {}\n", self.period);
        let _ = writeln!(
            out,
            "Period {} to {} (UTC), generated {}.\n",
            self.from, self.to, self.generated_at
        );
        let _ = writeln!(
            out,
            "## Summary\n\n| operation | success | failure |\n|---|---|---|"
        );
        for (operation, outcomes) in &self.counts {
            let _ = writeln!(
                out,
                "| {operation} | {} | {} |",
                outcomes.get("success").copied().unwrap_or(0),
                outcomes.get("failure").copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "\n- Manual operations without a reason: **{}**",
            self.manual_without_reason
        );
        let _ = writeln!(
            out,
            "- Gaps longer than the RPO ({} min) between successful backups: **{}**",
            self.rpo_minutes,
            self.gaps.len()
        );
        for gap in &self.gaps {
            let _ = writeln!(
                out,
                "  - {} → {} ({})",
                gap.from,
                gap.to,
                human_age(Duration::minutes(gap.minutes))
            );
        }
        let retention = &self.retention;
        let _ = writeln!(
            out,
            "\n## Retention\n\nPolicy: {} days. {} backups held; oldest {} ({} days).",
            retention.retention_days,
            retention.backups,
            retention.oldest_backup.as_deref().unwrap_or("none"),
            retention.oldest_age_days.unwrap_or(0)
        );
        for kept in &retention.kept_past_retention {
            let _ = writeln!(
                out,
                "- kept past the policy: {} ({})",
                kept["backupId"].as_str().unwrap_or(""),
                kept["reason"].as_str().unwrap_or("")
            );
        }
        for id in &retention.awaiting_prune {
            let _ = writeln!(out, "- past the policy, deleted at the next prune: {id}");
        }
        if let Some(changes) = &self.change_capture {
            let _ = writeln!(
                out,
                "\n## Change capture (point-in-time recovery)\n\n{} segments stored in the period. Achieved RPO per day: the longest a commit waited to be stored in a segment.\n",
                changes.segments
            );
            if !changes.days.is_empty() {
                let _ = writeln!(
                    out,
                    "| day | segments | transactions | changes | achieved RPO | worst segment |\n|---|---|---|---|---|---|"
                );
                for day in &changes.days {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} s | {} |",
                        day.day,
                        day.segments,
                        day.transactions,
                        day.changes,
                        day.achieved_rpo_seconds,
                        day.worst_segment
                    );
                }
            }
            let _ = writeln!(out, "\n- Gaps in the chain: **{}**", changes.gaps.len());
            for gap in &changes.gaps {
                let _ = writeln!(out, "  - {gap}");
            }
            for key in &changes.untrusted_documents {
                let _ = writeln!(
                    out,
                    "- segment document not trusted (fails its MAC or unreadable): {key}"
                );
            }
        }
        let _ = writeln!(out, "\n## Keys\n");
        for (key_id, count) in &self.key_ids_in_use {
            let _ = writeln!(out, "- {key_id}: {count} backups");
        }
        for rotation in &self.key_rotations {
            let _ = writeln!(
                out,
                "- rotation step {} on {}: {}",
                rotation["details"]["step"].as_str().unwrap_or("?"),
                rotation["time"].as_str().unwrap_or(""),
                rotation["outcome"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(out, "\n## Restores\n");
        for restore in &self.restores {
            let _ = writeln!(
                out,
                "- {} {} by {} into {}: {} ({})",
                restore["time"].as_str().unwrap_or(""),
                restore["backupId"].as_str().unwrap_or("?"),
                restore["actor"].as_str().unwrap_or(""),
                restore["details"]["targetDatabase"].as_str().unwrap_or("?"),
                restore["outcome"].as_str().unwrap_or(""),
                restore["reason"].as_str().unwrap_or("NO REASON GIVEN")
            );
        }
        let _ = writeln!(out, "\n## Verifications\n");
        for check in &self.verifications {
            let drill = &check["details"]["drill"];
            let drill = if drill.is_object() {
                format!(
                    "; drill: RTO {} ms, {} checks passed, {} failed",
                    drill["rtoMs"], drill["checksPassed"], drill["checksFailed"]
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "- {} {} {}: {}{drill}",
                check["time"].as_str().unwrap_or(""),
                check["backupId"].as_str().unwrap_or("?"),
                check["details"]["depth"].as_str().unwrap_or(""),
                check["outcome"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(
            out,
            "\n## Operations\n\n| time | operation | backup | actor | trigger | reason | outcome |\n|---|---|---|---|---|---|---|"
        );
        for operation in &self.operations {
            let record = &operation.record;
            let reason = match (&record.reason, operation.missing_reason) {
                (_, true) => "**MISSING**".to_owned(),
                (Some(reason), false) => cell(reason),
                (None, false) => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {}{} |",
                at(record.time),
                record.operation,
                record.backup_id.as_deref().unwrap_or(""),
                cell(&record.actor),
                record.trigger.map(|t| t.to_string()).unwrap_or_default(),
                reason,
                match record.outcome {
                    Outcome::Success => "success",
                    Outcome::Failure => "failure",
                },
                record
                    .error
                    .as_deref()
                    .map(|e| format!(": {}", cell(e)))
                    .unwrap_or_default()
            );
        }
        out
    }

    /// One row per operation (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        fn field(text: &str) -> String {
            if text.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", text.replace('"', "\"\""))
            } else {
                text.to_owned()
            }
        }
        let mut out =
            String::from("time,operation,backup_id,actor,trigger,reason,missing_reason,outcome,error\r\n");
        for operation in &self.operations {
            let record = &operation.record;
            let row = [
                at(record.time),
                record.operation.to_string(),
                record.backup_id.clone().unwrap_or_default(),
                record.actor.clone(),
                record.trigger.map(|t| t.to_string()).unwrap_or_default(),
                record.reason.clone().unwrap_or_default(),
                operation.missing_reason.to_string(),
                match record.outcome {
                    Outcome::Success => "success".to_owned(),
                    Outcome::Failure => "failure".to_owned(),
                },
                record.error.clone().unwrap_or_default(),
            ];
            out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_previous_quarter_is_the_calendar_quarter_before_now() {
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 6, 0, 0).unwrap();
        let request =
            AuditReportRequest::previous_quarter(now, Duration::hours(1), RetentionPolicy::default());
        assert_eq!(request.from, Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap());
        assert_eq!(request.to, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(request.period_name(), "2026-Q4");
        let mid = Utc.with_ymd_and_hms(2026, 8, 15, 0, 0, 0).unwrap();
        let request =
            AuditReportRequest::previous_quarter(mid, Duration::hours(1), RetentionPolicy::default());
        assert_eq!(request.period_name(), "2026-Q2");
    }
}
