//! verify --changes: the change segments behind point-in-time recovery.
//! Each segment's document MAC, its object's size and SHA-256, every chunk
//! authenticated and decoded with the counts its document records; the
//! chain's continuity (each segment starts at or before where the ones
//! before it end; a hole is named with its LSN range, a repeated capture
//! is not one); and, for each base backup that records a stream position,
//! that the stored segments carry it forward without a hole.

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::{Finished, Notification, Operation, OperationError, Services, elapsed_ms};
use crate::changes::chain::{self, DocumentIntegrity, Hole, check_segment, continuity, first_hole_from};
use crate::changes::{Lsn, SegmentId, SegmentMetadata};
use crate::metadata::{MetadataIntegrity, VerificationStatus};
use crate::metrics::Unit;

#[derive(Debug, Clone, Default)]
pub struct VerifyChangesRequest {
    /// Only this segment (the S3 event of a new one): its document and
    /// object, and that it starts at or before where the segment before it
    /// (in id order) ends, without reading every other document. `None`:
    /// every segment, the whole chain and the base backups.
    pub segment: Option<SegmentId>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentFailure {
    pub segment: String,
    pub error: String,
}

/// A base backup's chain: whether the stored segments carry it forward.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseChain {
    pub backup_id: String,
    pub slot: String,
    pub start_lsn: Lsn,
    pub covered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangesVerifyReport {
    pub status: VerificationStatus,
    /// Segment documents found.
    pub segments: usize,
    /// Segments whose object was read through and matched.
    pub segments_read: usize,
    /// Segments that repeat earlier ones (a capture run again after one
    /// killed before advancing the slot): not holes.
    pub repeats: usize,
    pub transactions: u64,
    pub changes: u64,
    pub bytes: u64,
    pub checks: Vec<String>,
    pub failures: Vec<SegmentFailure>,
    /// Holes in the chain; those before every base backup do not fail it
    /// (no restore crosses them; prune removes the segments before them).
    pub gaps: Vec<Hole>,
    pub bases: Vec<BaseChain>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Verifies the change segments and reports (audit trail, metrics,
/// webhook) like a backup's verification. `Ok` with a failed status when
/// a segment or the chain is bad; `Err` when it could not run.
pub async fn verify_changes(
    services: &Services,
    request: &VerifyChangesRequest,
) -> Result<ChangesVerifyReport, OperationError> {
    let started = Instant::now();
    let result = check_chain(services, request).await;
    let mut finished = Finished::new(Operation::Verify);
    match &result {
        Ok(report) => {
            let passed = report.status == VerificationStatus::Passed;
            finished.metrics = finished
                .metrics
                .with(
                    if passed {
                        "ChangeVerificationSuccess"
                    } else {
                        "ChangeVerificationFailure"
                    },
                    1.0,
                    Unit::Count,
                )
                .with("ChangeSegments", report.segments as f64, Unit::Count)
                .with("ChangeGaps", report.gaps.len() as f64, Unit::Count);
            finished.error = report.error.clone();
            finished.details = json!({"changes": true, "segment": request.segment, "segments": report.segments,
                                      "segmentsRead": report.segments_read, "repeats": report.repeats,
                                      "failures": report.failures, "gaps": report.gaps, "bases": report.bases});
            finished.notification = if passed {
                Notification::Event {
                    event: "changes_verified",
                    payload: json!({"segments": report.segments, "segmentsRead": report.segments_read,
                                    "durationMs": report.duration_ms}),
                }
            } else {
                tracing::error!(target: super::OUTCOME_LOG, error = report.error.as_deref().unwrap_or(""), "change segments failed verification");
                Notification::Failure {
                    message: report
                        .error
                        .clone()
                        .unwrap_or_else(|| "change verification failed".into()),
                    context: json!({"operation": Operation::Verify, "event": "changes_verification_failed",
                                    "failures": report.failures, "gaps": report.gaps}),
                }
            };
        }
        Err(error) => {
            let message = error.chain();
            tracing::error!(target: super::OUTCOME_LOG, error = %message, "change verification could not run");
            finished.error = Some(message.clone());
            finished.details = json!({"changes": true, "ran": false});
            finished.notification = Notification::Failure {
                message,
                context: json!({"operation": Operation::Verify, "changes": true}),
            };
        }
    }
    services.report(finished).await;
    result.map(|mut report| {
        report.duration_ms = elapsed_ms(started);
        report
    })
}

async fn check_chain(
    services: &Services,
    request: &VerifyChangesRequest,
) -> Result<ChangesVerifyReport, OperationError> {
    let keyring = services.keyring()?;
    let store = services.repository.store().as_ref();
    if let Some(segment) = &request.segment {
        return check_one(services, segment).await;
    }
    let documents = chain::read_documents(store, Some(keyring)).await?;
    let mut report = ChangesVerifyReport {
        status: VerificationStatus::Passed,
        segments: documents.len(),
        segments_read: 0,
        repeats: 0,
        transactions: 0,
        changes: 0,
        bytes: 0,
        checks: Vec::new(),
        failures: Vec::new(),
        gaps: Vec::new(),
        bases: Vec::new(),
        error: None,
        duration_ms: 0,
    };
    let mut readable: Vec<&SegmentMetadata> = Vec::new();
    for document in &documents {
        match (&document.metadata, document.integrity) {
            (Some(metadata), DocumentIntegrity::Authentic) => readable.push(metadata),
            _ => report.failures.push(SegmentFailure {
                segment: document.id(),
                error: document
                    .error
                    .clone()
                    .unwrap_or_else(|| "its document is not authentic".to_owned()),
            }),
        }
    }
    report
        .checks
        .push(format!("{} segment documents authenticated", readable.len()));

    // Every object (or the one asked for) read through.
    for metadata in &readable {
        match check_segment(store, keyring, metadata).await? {
            Ok(content) => {
                report.segments_read += 1;
                report.transactions += content.transactions;
                report.changes += content.changes;
                report.bytes += metadata.size_bytes;
            }
            Err(error) => report.failures.push(SegmentFailure {
                segment: metadata.id.to_string(),
                error,
            }),
        }
    }
    if report.segments_read > 0 {
        report.checks.push(format!(
            "{} segments read through: object SHA-256, every chunk authenticated, every message decoded, counts as recorded ({} transactions, {} changes, {} bytes)",
            report.segments_read, report.transactions, report.changes, report.bytes
        ));
    }

    // The chain, from the documents.
    let walked = continuity(readable.iter().copied());
    report.repeats = walked.repeats.len();
    let backups = services.repository.list().await?;
    let bases: Vec<_> = backups
        .iter()
        .filter(|backup| {
            !matches!(
                backup.metadata_integrity,
                MetadataIntegrity::Failed | MetadataIntegrity::Misdated
            )
        })
        .filter_map(|backup| backup.change_stream.as_ref().map(|position| (backup, position)))
        .collect();
    let oldest_base = bases.iter().map(|(_, position)| position.start_lsn).min();
    let mut harmful_gaps = Vec::new();
    for hole in &walked.holes {
        if oldest_base.is_some_and(|oldest| hole.to <= oldest) {
            report.checks.push(format!(
                "{hole}: before every base backup, so no restore crosses it"
            ));
        } else {
            harmful_gaps.push(hole.to_string());
        }
    }
    report.gaps = walked.holes;
    if harmful_gaps.is_empty() {
        report.checks.push(format!(
            "the chain is continuous ({} repeated captures, not holes)",
            report.repeats
        ));
    }
    let failed_ids: Vec<&str> = report.failures.iter().map(|f| f.segment.as_str()).collect();
    let mut base_problems = Vec::new();
    for (backup, position) in bases {
        let of_slot: Vec<&SegmentMetadata> = readable
            .iter()
            .copied()
            .filter(|m| m.slot == position.slot)
            .collect();
        let hole = first_hole_from(of_slot.iter().copied(), position.start_lsn);
        let damaged = of_slot
            .iter()
            .filter(|m| m.end_lsn > position.start_lsn)
            .find(|m| failed_ids.contains(&m.id.as_str()));
        let error = match (hole, damaged) {
            (Some(hole), _) => Some(format!("its chain has a gap: {hole}")),
            (None, Some(damaged)) => Some(format!("its chain needs damaged segment {}", damaged.id)),
            (None, None) => None,
        };
        if let Some(error) = &error {
            base_problems.push(format!("base backup {}: {error}", backup.id));
        }
        report.bases.push(BaseChain {
            backup_id: backup.id.to_string(),
            slot: position.slot.clone(),
            start_lsn: position.start_lsn,
            covered: error.is_none(),
            error,
        });
    }
    if !report.bases.is_empty() && base_problems.is_empty() {
        report.checks.push(format!(
            "each of the {} base backups with a stream position is carried forward without a gap",
            report.bases.len()
        ));
    }

    let mut problems: Vec<String> = report
        .failures
        .iter()
        .map(|f| format!("segment {}: {}", f.segment, f.error))
        .collect();
    problems.extend(
        harmful_gaps
            .into_iter()
            .map(|gap| format!("the chain has a gap: {gap}")),
    );
    problems.extend(base_problems);
    if !problems.is_empty() {
        report.status = VerificationStatus::Failed;
        report.error = Some(problems.join("; "));
    }
    Ok(report)
}

/// One new segment: its document (MAC), its object read through, and
/// whether it starts at or before the end of the segment before it.
async fn check_one(services: &Services, segment: &SegmentId) -> Result<ChangesVerifyReport, OperationError> {
    let keyring = services.keyring()?;
    let store = services.repository.store().as_ref();
    let mut report = ChangesVerifyReport {
        status: VerificationStatus::Passed,
        segments: 1,
        segments_read: 0,
        repeats: 0,
        transactions: 0,
        changes: 0,
        bytes: 0,
        checks: Vec::new(),
        failures: Vec::new(),
        gaps: Vec::new(),
        bases: Vec::new(),
        error: None,
        duration_ms: 0,
    };
    let repository_id = crate::identity::read(store)
        .await
        .map_err(crate::changes::ChangesError::from)?
        .map(|identity| identity.repository_id)
        .unwrap_or_default();
    let key = segment.metadata_key();
    // The document just before this one in id (LSN) order.
    let previous_key = store
        .list(crate::changes::segment::CHANGES_PREFIX)
        .await?
        .into_iter()
        .map(|info| info.key)
        .filter(|other| other.ends_with(".json") && other.as_str() < key.as_str())
        .max();
    let open = |stored: &[u8], key: &str| SegmentMetadata::open(stored, keyring, &repository_id, key);
    let stored = crate::storage::get_bytes(store, &key, 16 << 20).await?;
    let metadata = match open(&stored, &key) {
        Ok(metadata) => metadata,
        Err(error) => {
            report.failures.push(SegmentFailure {
                segment: segment.to_string(),
                error: error.to_string(),
            });
            report.status = VerificationStatus::Failed;
            report.error = Some(format!("segment {segment}: {error}"));
            return Ok(report);
        }
    };
    report.checks.push("its document's MAC matches".into());
    match check_segment(store, keyring, &metadata).await? {
        Ok(content) => {
            report.segments_read = 1;
            report.transactions = content.transactions;
            report.changes = content.changes;
            report.bytes = metadata.size_bytes;
            report.checks.push(format!(
                "read through: object SHA-256, every chunk authenticated, every message decoded, counts as recorded ({} transactions, {} changes)",
                content.transactions, content.changes
            ));
        }
        Err(error) => report.failures.push(SegmentFailure {
            segment: segment.to_string(),
            error,
        }),
    }
    if let Some(previous_key) = previous_key {
        let stored = crate::storage::get_bytes(store, &previous_key, 16 << 20).await?;
        match open(&stored, &previous_key) {
            Ok(previous) if metadata.start_lsn > previous.end_lsn => report.gaps.push(Hole {
                from: previous.end_lsn,
                to: metadata.start_lsn,
                after: Some(previous.id.clone()),
                before: metadata.id.clone(),
            }),
            Ok(previous) => report.checks.push(format!(
                "it starts at LSN {}, at or before the end of segment {} ({})",
                metadata.start_lsn, previous.id, previous.end_lsn
            )),
            Err(error) => report.failures.push(SegmentFailure {
                segment: previous_key
                    .trim_start_matches(crate::changes::segment::CHANGES_PREFIX)
                    .trim_end_matches(".json")
                    .to_owned(),
                error: error.to_string(),
            }),
        }
    }
    let mut problems: Vec<String> = report
        .failures
        .iter()
        .map(|f| format!("segment {}: {}", f.segment, f.error))
        .collect();
    problems.extend(
        report
            .gaps
            .iter()
            .map(|gap| format!("the chain has a gap: {gap}")),
    );
    if !problems.is_empty() {
        report.status = VerificationStatus::Failed;
        report.error = Some(problems.join("; "));
    }
    Ok(report)
}
