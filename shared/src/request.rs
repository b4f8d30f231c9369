//! What people and schedules ask for, parsed and validated once for every
//! front end: serde for the Lambda payloads, `FromStr` for the CLI's flags.
//! The CLI and the handlers map nothing by hand; they hold these values.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::metadata::{BackupRequest, Trigger, VerificationDepth};
use crate::repository::BackupSelector;
use crate::retention::RetentionPolicy;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("trigger {0:?} is not one of manual, pre-deployment, emergency")]
    UnknownTrigger(String),
    #[error(
        "trigger \"schedule\" is reserved for the EventBridge schedule; a person asks with manual, pre-deployment or emergency"
    )]
    ScheduleByHand,
    #[error(
        "trigger \"safety\" is reserved for the backup an in-place restore takes first; a person asks with manual, pre-deployment or emergency"
    )]
    SafetyByHand,
    #[error("the table list {0:?} names an empty table; give names like Booking,User or public.Booking")]
    EmptyTableName(String),
    #[error("{0:?} is not a date: write 2026-10-01 (a whole day, UTC) or an RFC 3339 instant")]
    ReportDate(String),
    #[error("the report period is not valid: {0}")]
    ReportPeriod(&'static str),
    #[error(
        "retention days {0:?} is not valid: a whole number of days, at least 1 (0 would delete every backup but the kept verified ones)"
    )]
    RetentionDays(String),
}

impl FromStr for Trigger {
    type Err = RequestError;

    /// The names the metadata uses: `schedule`, `manual`, `pre-deployment`, `emergency`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "schedule" => Ok(Self::Schedule),
            "manual" => Ok(Self::Manual),
            "pre-deployment" => Ok(Self::PreDeployment),
            "emergency" => Ok(Self::Emergency),
            "safety" => Ok(Self::Safety),
            other => Err(RequestError::UnknownTrigger(other.to_owned())),
        }
    }
}

/// A trigger a person may give: anything but `schedule`, which only the
/// EventBridge schedule sets (it is what `ENABLE_AUTO_BACKUP` switches off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ManualTrigger(Trigger);

impl Default for ManualTrigger {
    fn default() -> Self {
        Self(Trigger::Manual)
    }
}

impl ManualTrigger {
    pub fn trigger(self) -> Trigger {
        self.0
    }
}

impl FromStr for ManualTrigger {
    type Err = RequestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<Trigger>()? {
            Trigger::Schedule | Trigger::Hourly => Err(RequestError::ScheduleByHand),
            Trigger::Safety => Err(RequestError::SafetyByHand),
            trigger => Ok(Self(trigger)),
        }
    }
}

impl fmt::Display for ManualTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Deserializes through `FromStr`, so a payload and a flag give the same
/// value and the same error.
fn from_text<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for ManualTrigger {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer)
    }
}

impl<'de> Deserialize<'de> for BackupSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer)
    }
}

/// The tables a backup or restore is limited to; empty means all. Names are
/// `Booking` (schema `public`) or `schema.Table`, matched as
/// [`crate::postgres::resolve_table_names`] does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct TableList(Vec<String>);

impl TableList {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn new<I, S>(names: I) -> Result<Self, RequestError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(|n| n.into().trim().to_owned()).collect();
        if names.iter().any(String::is_empty) {
            return Err(RequestError::EmptyTableName(names.join(",")));
        }
        Ok(Self(names))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl FromStr for TableList {
    type Err = RequestError;

    /// `Booking,User` or `public.Booking`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return Err(RequestError::EmptyTableName(text.to_owned()));
        }
        Self::new(text.split(','))
    }
}

impl<'de> Deserialize<'de> for TableList {
    /// A JSON array of names, as the console payloads send them.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        Self::new(names).map_err(serde::de::Error::custom)
    }
}

/// A retention period given by hand: at least one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RetentionDays(NonZeroU32);

impl RetentionDays {
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<u32> for RetentionDays {
    type Error = RequestError;

    fn try_from(days: u32) -> Result<Self, Self::Error> {
        NonZeroU32::new(days)
            .map(Self)
            .ok_or_else(|| RequestError::RetentionDays(days.to_string()))
    }
}

impl FromStr for RetentionDays {
    type Err = RequestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim()
            .parse::<u32>()
            .map_err(|_| RequestError::RetentionDays(text.to_owned()))
            .and_then(Self::try_from)
    }
}

impl<'de> Deserialize<'de> for RetentionDays {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let days = u32::deserialize(deserializer)?;
        Self::try_from(days).map_err(serde::de::Error::custom)
    }
}

/// A manual backup: `{"reason", "trigger", "requestedBy", "tables"}` from
/// the console, or `backupctl create`'s flags.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupOrder {
    pub reason: Option<String>,
    /// `manual` (default), `pre-deployment` or `emergency`.
    #[serde(default)]
    pub trigger: ManualTrigger,
    pub requested_by: Option<String>,
    #[serde(default)]
    pub tables: TableList,
}

impl BackupOrder {
    /// Who asked and why, as the metadata records it.
    pub fn request(&self) -> BackupRequest {
        BackupRequest {
            trigger: self.trigger.trigger(),
            reason: self.reason.clone(),
            requested_by: self.requested_by.clone(),
        }
    }
}

/// A verification asked for by hand: `{"backupId", "depth"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyOrder {
    /// A backup id, `latest`, `latest-verified`, `random` or `before:<RFC 3339 instant>`.
    pub backup_id: BackupSelector,
    /// `quick`, `full` (default) or `deep`.
    #[serde(default = "full")]
    pub depth: VerificationDepth,
}

fn full() -> VerificationDepth {
    VerificationDepth::Full
}

/// Overrides of a prune run: `{"dryRun", "retentionDays"}` or
/// `backupctl prune --dry-run --retention-days N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneOrder {
    #[serde(default)]
    pub dry_run: bool,
    pub retention_days: Option<RetentionDays>,
}

impl PruneOrder {
    /// The configured policy with this order's overrides.
    pub fn policy(&self, configured: RetentionPolicy) -> RetentionPolicy {
        RetentionPolicy {
            retention_days: self
                .retention_days
                .map_or(configured.retention_days, RetentionDays::get),
            ..configured
        }
    }
}

/// A day (`2026-10-01`, midnight UTC) or an RFC 3339 instant, as report
/// periods are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportDate {
    pub start: chrono::DateTime<chrono::Utc>,
    /// Whether it was a whole day (an end date then includes that day).
    pub whole_day: bool,
}

impl ReportDate {
    /// The instant a period ending on this date ends (exclusive): the next
    /// midnight for a whole day.
    pub fn end(self) -> chrono::DateTime<chrono::Utc> {
        if self.whole_day {
            self.start + chrono::Duration::days(1)
        } else {
            self.start
        }
    }
}

impl FromStr for ReportDate {
    type Err = RequestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Self {
                start: day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
                whole_day: true,
            });
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|at| Self {
                start: at.with_timezone(&chrono::Utc),
                whole_day: false,
            })
            .map_err(|_| RequestError::ReportDate(text.to_owned()))
    }
}

impl<'de> Deserialize<'de> for ReportDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer)
    }
}

/// `{"report": "audit", "from": "2026-07-01", "to": "2026-09-30"}` to the
/// prune function (the quarterly schedule sends only `{"report": "audit"}`:
/// the previous calendar quarter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditReportOrder {
    pub report: ReportKind,
    pub from: Option<ReportDate>,
    /// The last day included (or an instant, excluded).
    pub to: Option<ReportDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Audit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_flag_and_a_payload_give_the_same_values_and_the_same_errors() {
        // Given the same words as a flag and as JSON
        let from_flag: ManualTrigger = "pre-deployment".parse().unwrap();
        let from_json: ManualTrigger = serde_json::from_value(json!("pre-deployment")).unwrap();
        // Then they are one value
        assert_eq!(from_flag, from_json);
        assert_eq!(from_flag.trigger(), Trigger::PreDeployment);
        // And a person cannot pose as the schedule, by either route
        let flag_error = "schedule".parse::<ManualTrigger>().unwrap_err().to_string();
        let json_error = serde_json::from_value::<ManualTrigger>(json!("schedule"))
            .unwrap_err()
            .to_string();
        assert!(
            flag_error.contains("reserved for the EventBridge schedule"),
            "{flag_error}"
        );
        assert!(json_error.contains(&flag_error), "{json_error}");
    }

    #[test]
    fn zero_retention_days_is_refused_by_both_routes() {
        assert!("0".parse::<RetentionDays>().is_err());
        assert!(serde_json::from_value::<PruneOrder>(json!({"retentionDays": 0})).is_err());
        let order: PruneOrder = serde_json::from_value(json!({"retentionDays": 7, "dryRun": true})).unwrap();
        let policy = order.policy(RetentionPolicy {
            retention_days: 30,
            keep_newest: 3,
            hourly_retention_hours: 48,
        });
        assert_eq!(
            (policy.retention_days, policy.keep_newest, order.dry_run),
            (7, 3, true)
        );
        assert_eq!("7".parse::<RetentionDays>().unwrap().get(), 7);
    }

    #[test]
    fn table_lists_refuse_empty_names() {
        assert_eq!(
            "Booking, User".parse::<TableList>().unwrap().names(),
            ["Booking", "User"]
        );
        for bad in ["", "Booking,,User", "Booking,"] {
            assert!(bad.parse::<TableList>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_value::<TableList>(json!(["Booking", " "])).is_err());
    }

    #[test]
    fn manual_payloads_parse_into_typed_orders() {
        let order: BackupOrder = serde_json::from_value(json!({
            "reason": "before migration", "trigger": "emergency", "requestedBy": "ops", "tables": ["Booking"]
        }))
        .unwrap();
        assert_eq!(order.request().trigger, Trigger::Emergency);
        assert_eq!(order.tables.names(), ["Booking"]);
        assert_eq!(
            serde_json::from_value::<BackupOrder>(json!({}))
                .unwrap()
                .trigger
                .trigger(),
            Trigger::Manual
        );
        let verify: VerifyOrder = serde_json::from_value(json!({"backupId": "latest-verified"})).unwrap();
        assert_eq!(
            (verify.backup_id, verify.depth),
            (BackupSelector::LatestVerified, VerificationDepth::Full)
        );
        assert!(
            serde_json::from_value::<VerifyOrder>(json!({"backupId": "latest", "depth": "shallow"})).is_err()
        );
        assert!(serde_json::from_value::<VerifyOrder>(json!({"backupId": "yesterday"})).is_err());
    }

    #[test]
    fn a_backup_can_be_chosen_at_random_or_by_instant_from_a_flag_or_a_payload() {
        let random: VerifyOrder =
            serde_json::from_value(json!({"backupId": "random", "depth": "deep"})).unwrap();
        assert_eq!(random.backup_id, BackupSelector::Random);
        let instant: BackupSelector = "before:2026-11-20T11:00:00+01:00".parse().unwrap();
        let from_json: VerifyOrder =
            serde_json::from_value(json!({"backupId": "before:2026-11-20T10:00:00Z"})).unwrap();
        assert_eq!(instant, from_json.backup_id);
        assert_eq!(instant.to_string(), "before:2026-11-20T10:00:00Z");
        for bad in ["before:", "before:2026-11-20", "before:yesterday", "Random"] {
            let error = bad.parse::<BackupSelector>().unwrap_err().to_string();
            assert!(
                error.contains("instant") || error.contains("random or before:"),
                "{bad}: {error}"
            );
        }
    }
}
