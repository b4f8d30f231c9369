//! The events each function accepts: EventBridge scheduled events, S3
//! `Object Created` events (through EventBridge, as the template wires
//! them, or as classic S3 notifications), and manual JSON payloads from the
//! console.
//! Anything else is refused with a message saying what was expected.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use serde::Deserialize;
use serde_json::Value;

use crate::HandlerError;
use backup_core::BackupId;
use backup_core::erasure::ErasureOrder;
use backup_core::postgres::kinds::cluster::RoleCreation;
use backup_core::repository::BackupSelector;
use backup_core::request::{AuditReportOrder, BackupOrder, PruneOrder, TableList, VerifyOrder};

/// A payload that looks like an EventBridge event (it has `detail-type`).
fn is_eventbridge(payload: &Value) -> bool {
    payload.get("detail-type").is_some() && payload.get("source").is_some()
}

fn invalid(expected: &str, error: impl std::fmt::Display) -> HandlerError {
    HandlerError::InvalidEvent(format!("{error}; expected {expected}"))
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateEvent {
    Scheduled { rule: Option<String>, hourly: bool },
    Manual(BackupOrder),
}

/// What the template's hourly schedule sends (its `Input`), so its backups
/// are kept for `BACKUP_HOURLY_RETENTION_HOURS` only; `nightly` is the
/// nightly schedule's order where it cannot send an EventBridge event (an
/// ECS task's container override, see functions/task).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedSchedule {
    schedule: ScheduleName,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ScheduleName {
    Hourly,
    Nightly,
}

pub fn parse_create(payload: Value) -> Result<CreateEvent, HandlerError> {
    const EXPECTED: &str = "an EventBridge scheduled event, {\"schedule\": \"hourly\" or \"nightly\"} or {\"reason\", \"trigger\", \"requestedBy\", \"tables\"}";
    if is_eventbridge(&payload) {
        let event: EventBridgeEvent = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        return Ok(CreateEvent::Scheduled {
            rule: event.resources.and_then(|r| r.into_iter().next()),
            hourly: false,
        });
    }
    if payload.get("schedule").is_some() {
        let NamedSchedule { schedule } = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        return Ok(CreateEvent::Scheduled {
            rule: None,
            hourly: matches!(schedule, ScheduleName::Hourly),
        });
    }
    serde_json::from_value(payload)
        .map(CreateEvent::Manual)
        .map_err(|e| invalid(EXPECTED, e))
}

/// What one capture run is asked: its schedule sends nothing; by hand,
/// `{}` or `{"maxChanges": N}` (at most N slot messages this run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureOrder {
    pub max_changes: Option<i32>,
}

pub fn parse_capture(payload: Value) -> Result<CaptureOrder, HandlerError> {
    const EXPECTED: &str = "an EventBridge scheduled event, {} or {\"maxChanges\": <positive number>}";
    if is_eventbridge(&payload) {
        let _: EventBridgeEvent = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        return Ok(CaptureOrder::default());
    }
    let order: CaptureOrder = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
    if order.max_changes.is_some_and(|max| max < 1) {
        return Err(HandlerError::InvalidEvent(format!(
            "maxChanges must be at least 1; expected {EXPECTED}"
        )));
    }
    Ok(order)
}

/// What the prune function (the store's housekeeper) is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum PruneEvent {
    Prune(PruneOrder),
    /// `{"report": "audit", "from", "to"}` (the quarterly schedule sends no dates).
    AuditReport(AuditReportOrder),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseEvent {
    erase: ErasureOrder,
}

pub fn parse_prune(payload: Value) -> Result<PruneEvent, HandlerError> {
    const EXPECTED: &str = "an EventBridge scheduled event, {\"dryRun\", \"retentionDays\"} or {\"report\": \"audit\", \"from\", \"to\"}";
    if is_eventbridge(&payload) {
        let _: EventBridgeEvent = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        return Ok(PruneEvent::Prune(PruneOrder::default()));
    }
    if payload.get("report").is_some() {
        return serde_json::from_value(payload)
            .map(PruneEvent::AuditReport)
            .map_err(|e| invalid(EXPECTED, e));
    }
    serde_json::from_value(payload)
        .map(PruneEvent::Prune)
        .map_err(|e| invalid(EXPECTED, e))
}

#[derive(Debug, Clone, PartialEq)]
pub enum VerifyEvent {
    /// New backup objects announced by S3.
    ObjectsCreated(Vec<BackupId>),
    /// New change segments (`changes/<id>.segment`) announced by S3:
    /// each is verified (its document, object and chunks) with the chain.
    SegmentsCreated(Vec<backup_core::changes::SegmentId>),
    Scheduled,
    Manual(VerifyOrder),
}

/// The `detail` of S3's `Object Created` event on EventBridge.
#[derive(Debug, Deserialize, serde::Serialize)]
struct S3ObjectCreatedDetail {
    object: S3ObjectDetail,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct S3ObjectDetail {
    key: String,
}

/// The backup a new object's key names, if it is `…backups/<id>.backup`.
fn created_backup(key: &str) -> Option<BackupId> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let in_backups = key.split('/').rev().nth(1) == Some("backups");
    match name.strip_suffix(".backup").map(str::parse::<BackupId>) {
        Some(Ok(id)) if in_backups => Some(id),
        _ => {
            tracing::info!(key, "ignoring an S3 event that is not about a new backup object");
            None
        }
    }
}

/// The change segment a new object's key names, if it is
/// `…changes/<id>.segment` (its document, `.json`, is written after it and
/// needs no event of its own).
fn created_segment(key: &str) -> Option<backup_core::changes::SegmentId> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let in_changes = key.split('/').rev().nth(1) == Some("changes");
    let stem = name.strip_suffix(".segment").filter(|_| in_changes)?;
    backup_core::changes::SegmentId::try_from(stem.to_owned()).ok()
}

pub fn parse_verify(payload: Value) -> Result<VerifyEvent, HandlerError> {
    const EXPECTED: &str = "an S3 Object Created event for backups/*.backup or changes/*.segment (EventBridge or S3 notification), an EventBridge scheduled event, or {\"backupId\", \"depth\"}";
    let no_backup = || {
        HandlerError::InvalidEvent(format!(
            "no new backups/*.backup or changes/*.segment object in the S3 event; expected {EXPECTED}"
        ))
    };
    if is_eventbridge(&payload) && payload.get("source").and_then(Value::as_str) == Some("aws.s3") {
        let event: EventBridgeEvent<S3ObjectCreatedDetail> =
            serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        if event.detail_type != "Object Created" {
            return Err(no_backup());
        }
        // Keys on EventBridge are not URL-encoded; a backup id never needs it.
        if let Some(segment) = created_segment(&event.detail.object.key) {
            return Ok(VerifyEvent::SegmentsCreated(vec![segment]));
        }
        return created_backup(&event.detail.object.key)
            .map(|id| VerifyEvent::ObjectsCreated(vec![id]))
            .ok_or_else(no_backup);
    }
    if payload.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        let mut ids = Vec::new();
        let mut segments = Vec::new();
        for record in event.records {
            let created = record
                .event_name
                .as_deref()
                .is_some_and(|n| n.starts_with("ObjectCreated:"));
            let Some(key) = record
                .s3
                .object
                .url_decoded_key
                .clone()
                .or_else(|| record.s3.object.key.as_deref().map(url_decode))
            else {
                continue;
            };
            if !created {
                continue;
            }
            if let Some(segment) = created_segment(&key) {
                segments.push(segment);
            } else if let Some(id) = created_backup(&key) {
                ids.push(id);
            }
        }
        // S3 sends one record per notification: a batch is one kind.
        if ids.is_empty() && !segments.is_empty() {
            return Ok(VerifyEvent::SegmentsCreated(segments));
        }
        if ids.is_empty() {
            return Err(no_backup());
        }
        return Ok(VerifyEvent::ObjectsCreated(ids));
    }
    if is_eventbridge(&payload) {
        let _: EventBridgeEvent = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
        return Ok(VerifyEvent::Scheduled);
    }
    serde_json::from_value(payload)
        .map(VerifyEvent::Manual)
        .map_err(|e| invalid(EXPECTED, e))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManualRestore {
    /// A backup id, `latest`, `latest-verified`, `random` or `before:<RFC 3339 instant>`.
    /// Required unless `at` is given (never both).
    #[serde(default)]
    pub backup_id: Option<BackupSelector>,
    /// Point-in-time recovery (`"at": "2026-12-05T10:42:00Z"`, as
    /// `backupctl restore --at`): the newest base backup taken before it
    /// whose captured changes reach past it, brought forward to the last
    /// commit at or before it.
    #[serde(default)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Only these tables; others are not touched.
    #[serde(default)]
    pub tables: TableList,
    /// Database to restore into, on the same server; the application database when absent.
    pub target: Option<String>,
    /// Must equal the target database's name.
    pub confirm: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    /// Take a safety backup before an in-place restore (default true).
    pub safety_backup: Option<bool>,
    /// Create the roles the backup records that the server lacks:
    /// `true` or `"nologin"` (NOLOGIN), `"as-recorded"` (LOGIN and every
    /// attribute as recorded); never a password. Absent or `false`: a
    /// missing role is a warning.
    #[serde(default)]
    pub create_roles: Option<CreateRoles>,
    /// Create the target database when the server has none by that name,
    /// with the properties the backup recorded (owner, encoding, locale,
    /// settings, comment, grants), as `backupctl restore --create-db`.
    /// Never applied to an existing database.
    #[serde(default)]
    pub create_db: bool,
    /// Create everything in the target database's default tablespace,
    /// whatever tablespaces the backup names (each is reported as a
    /// warning), as `backupctl restore --no-tablespaces`.
    #[serde(default)]
    pub no_tablespaces: bool,
    /// Leave the backup's security labels out, with one warning naming
    /// them, as `backupctl restore --no-security-labels`; without it a
    /// label whose provider the target does not load refuses the restore.
    #[serde(default)]
    pub no_security_labels: bool,
    /// With `tables`, also restore the backup's large objects, as
    /// `backupctl restore --large-objects`; a full restore always does.
    #[serde(default)]
    pub large_objects: bool,
}

/// `createRoles`: a flag, or the mode by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CreateRoles {
    Flag(bool),
    Mode(RoleCreation),
}

impl CreateRoles {
    pub fn mode(self) -> Option<RoleCreation> {
        match self {
            Self::Flag(true) => Some(RoleCreation::Nologin),
            Self::Flag(false) => None,
            Self::Mode(mode) => Some(mode),
        }
    }
}

/// What the restore function (console only, MFA) is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreEvent {
    Restore(ManualRestore),
    /// `{"erase": {"table", "key": {"id": "…"}, "reason", "requestedBy"}}`:
    /// an erasure for the ledger every restore applies.
    Erase(ErasureOrder),
}

pub fn parse_restore(payload: Value) -> Result<RestoreEvent, HandlerError> {
    const EXPECTED: &str = "{\"backupId\" or \"at\", \"confirm\": \"<target database name>\", \"tables\", \"target\", \"reason\", \"requestedBy\", \"createRoles\", \"createDb\", \"noTablespaces\", \"largeObjects\"} or {\"erase\": {\"table\", \"key\": {\"<column>\": \"<value>\"}, \"reason\", \"requestedBy\"}}";
    if is_eventbridge(&payload) || payload.get("Records").is_some() {
        return Err(HandlerError::InvalidEvent(format!(
            "restore runs only on a manual invocation; expected {EXPECTED}"
        )));
    }
    if payload.get("erase").is_some() {
        return serde_json::from_value::<EraseEvent>(payload)
            .map(|event| RestoreEvent::Erase(event.erase))
            .map_err(|e| invalid(EXPECTED, e));
    }
    let restore: ManualRestore = serde_json::from_value(payload).map_err(|e| invalid(EXPECTED, e))?;
    match (&restore.backup_id, &restore.at) {
        (Some(_), Some(_)) => Err(HandlerError::InvalidEvent(format!(
            "give either \"backupId\" or \"at\" (the base backup of a point-in-time restore is chosen for the instant), not both; expected {EXPECTED}"
        ))),
        (None, None) => Err(HandlerError::InvalidEvent(format!(
            "missing field `backupId` (or `at`, an RFC 3339 instant); expected {EXPECTED}"
        ))),
        _ => Ok(RestoreEvent::Restore(restore)),
    }
}

/// S3 event keys are URL-encoded, with `+` for spaces.
pub fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_change_segment_is_a_segment_to_verify_not_a_missing_backup() {
        let id = "0000000001948DF8-1765087200123";
        // As an S3 notification (the handler tests' fixture, another key)
        let fixture = |key: &str| {
            let mut event: Value = serde_json::from_str(
                &std::fs::read_to_string(format!(
                    "{}/tests/fixtures/s3-object-created.json",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .unwrap(),
            )
            .unwrap();
            event["Records"][0]["s3"]["object"]["key"] = serde_json::json!(key);
            event
        };
        let notification = fixture(&format!("changes/{id}.segment"));
        match parse_verify(notification).unwrap() {
            VerifyEvent::SegmentsCreated(segments) => assert_eq!(segments[0].as_str(), id),
            other => panic!("{other:?}"),
        }
        // As an EventBridge event
        let bridged = serde_json::json!({
            "version": "0", "id": "e", "detail-type": "Object Created", "source": "aws.s3",
            "account": "1", "time": "2026-12-07T10:00:00Z", "region": "eu-west-1", "resources": [],
            "detail": {"bucket": {"name": "b"}, "object": {"key": format!("changes/{id}.segment")}}
        });
        assert!(matches!(
            parse_verify(bridged).unwrap(),
            VerifyEvent::SegmentsCreated(_)
        ));
        // Its document, or a stray name under changes/, is neither
        for key in [format!("changes/{id}.json"), "changes/junk.segment".to_owned()] {
            assert!(parse_verify(fixture(&key)).is_err(), "{key}");
        }
    }

    #[test]
    fn a_named_schedule_is_hourly_or_nightly_and_nothing_else() {
        let scheduled = |hourly| CreateEvent::Scheduled { rule: None, hourly };
        let parse = |payload: Value| parse_create(payload);
        assert_eq!(
            parse(serde_json::json!({"schedule": "hourly"})).unwrap(),
            scheduled(true)
        );
        assert_eq!(
            parse(serde_json::json!({"schedule": "nightly"})).unwrap(),
            scheduled(false)
        );
        assert!(matches!(
            parse(serde_json::json!({"schedule": "weekly"})),
            Err(HandlerError::InvalidEvent(_))
        ));
    }

    #[test]
    fn a_restore_payload_may_leave_the_security_labels_out() {
        let parse = |payload: Value| match parse_restore(payload) {
            Ok(RestoreEvent::Restore(manual)) => manual.no_security_labels,
            other => panic!("not a restore: {other:?}"),
        };
        let payload = |extra: Value| {
            let mut base = serde_json::json!({"backupId": "latest", "confirm": "carwash"});
            if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
                base.extend(extra.clone());
            }
            base
        };
        assert!(parse(payload(serde_json::json!({"noSecurityLabels": true}))));
        assert!(!parse(payload(serde_json::json!({}))));
    }

    #[test]
    fn a_restore_of_chosen_tables_asks_for_large_objects_by_name() {
        let parse = |payload: Value| match parse_restore(payload).unwrap() {
            RestoreEvent::Restore(restore) => restore,
            other => panic!("not a restore: {other:?}"),
        };
        let asked = parse(serde_json::json!({
            "backupId": "latest", "confirm": "carwash", "tables": ["Booking"], "largeObjects": true
        }));
        assert!(asked.large_objects);
        let not_asked =
            parse(serde_json::json!({"backupId": "latest", "confirm": "carwash", "tables": ["Booking"]}));
        assert!(!not_asked.large_objects);
        assert!(matches!(
            parse_restore(serde_json::json!({"backupId": "latest", "confirm": "carwash", "largeObject": true})),
            Err(HandlerError::InvalidEvent(message)) if message.contains("largeObjects")
        ));
    }

    #[test]
    fn a_restore_to_an_instant_names_the_instant_instead_of_a_backup() {
        // Given the console payload of a point-in-time restore of one table
        let fixture: Value = serde_json::from_str(include_str!("../../../events/restore-at.json")).unwrap();
        // When it is parsed
        let RestoreEvent::Restore(restore) = parse_restore(fixture).unwrap() else {
            panic!("not a restore")
        };
        // Then it carries the instant and the table, and no backup
        assert_eq!(
            restore.at,
            Some(
                "2026-12-05T10:42:00Z"
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap()
            )
        );
        assert_eq!(restore.backup_id, None);
        assert_eq!(restore.tables.names(), ["Booking".to_owned()]);
        // and an instant with an offset is the same instant in UTC
        let shifted =
            parse_restore(serde_json::json!({"at": "2026-12-05T11:42:00+01:00", "confirm": "carwash"}));
        assert!(matches!(shifted, Ok(RestoreEvent::Restore(r)) if r.at == restore.at));
        // while both a backup and an instant, neither, or a malformed instant are refused
        for (payload, says) in [
            (
                serde_json::json!({"backupId": "latest", "at": "2026-12-05T10:42:00Z", "confirm": "carwash"}),
                "not both",
            ),
            (serde_json::json!({"confirm": "carwash"}), "backupId"),
            (
                serde_json::json!({"at": "yesterday", "confirm": "carwash"}),
                "expected",
            ),
        ] {
            match parse_restore(payload.clone()) {
                Err(HandlerError::InvalidEvent(message)) => {
                    assert!(message.contains(says), "{payload}: {message}")
                }
                other => panic!("{payload} was accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn a_capture_runs_on_its_schedule_or_by_hand_with_a_limit() {
        let scheduled: Value = serde_json::from_str(include_str!("../../../events/scheduled.json")).unwrap();
        assert_eq!(parse_capture(scheduled).unwrap(), CaptureOrder::default());
        assert_eq!(
            parse_capture(serde_json::json!({})).unwrap(),
            CaptureOrder::default()
        );
        assert_eq!(
            parse_capture(serde_json::json!({"maxChanges": 5000}))
                .unwrap()
                .max_changes,
            Some(5000)
        );
        for bad in [
            serde_json::json!({"maxChanges": 0}),
            serde_json::json!({"max": 1}),
        ] {
            assert!(matches!(parse_capture(bad), Err(HandlerError::InvalidEvent(_))));
        }
    }

    #[test]
    fn url_encoded_keys_decode() {
        assert_eq!(
            url_decode("car+wash%2Fbackups/backup-1-0000000a.backup"),
            "car wash/backups/backup-1-0000000a.backup"
        );
        assert_eq!(url_decode("100%25"), "100%");
        assert_eq!(url_decode("trailing%2"), "trailing%2");
    }
}
