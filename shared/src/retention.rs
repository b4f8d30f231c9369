//! Retention: which backups to keep and which to delete — a pure function
//! of the backups, the policy and the current time.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::metadata::BackupId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Backups older than this many days may be deleted (`BACKUP_RETENTION_DAYS`).
    pub retention_days: u32,
    /// Always keep this many newest successfully verified backups (or, when
    /// none is verified, this many newest backups).
    pub keep_newest: usize,
    /// Backups of the hourly schedule older than this many hours may be
    /// deleted (`BACKUP_HOURLY_RETENTION_HOURS`): they are there for the
    /// RPO of the last hours, the nightly ones for the retention period; 24
    /// full hourly copies a day for 30 days would be ~720 backups.
    pub hourly_retention_hours: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            retention_days: 30,
            keep_newest: 3,
            hourly_retention_hours: 48,
        }
    }
}

/// What the policy needs to know about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: BackupId,
    pub taken_at: DateTime<Utc>,
    /// The latest verification passed.
    pub verified: bool,
    /// Taken by the hourly schedule (a shorter retention).
    pub hourly: bool,
}

impl From<&crate::metadata::BackupMetadata> for BackupFacts {
    fn from(metadata: &crate::metadata::BackupMetadata) -> Self {
        Self {
            id: metadata.id.clone(),
            // The time in the id: the document's `timestamp` could be moved
            // (by a bucket writer without the key) to keep a backup longer.
            taken_at: metadata.taken_at(),
            verified: metadata
                .verification
                .as_ref()
                .is_some_and(|v| v.status == crate::metadata::VerificationStatus::Passed),
            hourly: metadata.trigger == crate::metadata::Trigger::Hourly,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub backup_id: BackupId,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrunePlan {
    pub keep: Vec<Decision>,
    pub delete: Vec<Decision>,
}

/// Decides, newest first. A backup is deleted only if it is strictly older
/// than the retention period and is not one of the protected newest; the
/// newest backup is never deleted, so the plan never leaves zero backups.
pub fn plan_prune(backups: &[BackupFacts], policy: RetentionPolicy, now: DateTime<Utc>) -> PrunePlan {
    let mut sorted: Vec<&BackupFacts> = backups.iter().collect();
    sorted.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then_with(|| b.id.cmp(&a.id)));
    let any_verified = sorted.iter().any(|b| b.verified);
    let protected: Vec<&BackupId> = sorted
        .iter()
        .filter(|b| !any_verified || b.verified)
        .take(policy.keep_newest)
        .map(|b| &b.id)
        .collect();
    let cutoff = now - Duration::days(i64::from(policy.retention_days));
    let hourly_cutoff = now - Duration::hours(i64::from(policy.hourly_retention_hours));

    let mut plan = PrunePlan::default();
    for (position, backup) in sorted.iter().enumerate() {
        let keep_reason = if position == 0 {
            Some("newest backup".to_owned())
        } else if protected.contains(&&backup.id) {
            Some(if any_verified {
                format!("one of the {} newest verified backups", policy.keep_newest)
            } else {
                format!(
                    "one of the {} newest backups (none is verified)",
                    policy.keep_newest
                )
            })
        } else if backup.taken_at > now {
            Some("timestamp is in the future; kept until clocks agree".to_owned())
        } else if backup.hourly {
            (backup.taken_at >= hourly_cutoff.max(cutoff))
                .then(|| format!("an hourly backup within {} hours", policy.hourly_retention_hours))
        } else if backup.taken_at >= cutoff {
            Some(format!(
                "within the {}-day retention period",
                policy.retention_days
            ))
        } else {
            None
        };
        let decision = |reason| Decision {
            backup_id: backup.id.clone(),
            reason,
        };
        match keep_reason {
            Some(reason) => plan.keep.push(decision(reason)),
            None if backup.hourly && backup.taken_at >= cutoff => plan.delete.push(decision(format!(
                "an hourly backup older than {} hours ({} hours old)",
                policy.hourly_retention_hours,
                (now - backup.taken_at).num_hours()
            ))),
            None => plan.delete.push(decision(format!(
                "older than {} days ({} days old)",
                policy.retention_days,
                (now - backup.taken_at).num_days()
            ))),
        }
    }
    plan
}

/// What segment retention needs to know about one change segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFacts {
    pub id: String,
    pub slot: String,
    /// Just past its last commit: replay from a position at or past it
    /// needs nothing in it.
    pub end_lsn: crate::changes::Lsn,
}

/// A retained base backup's position in the change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFacts {
    pub backup_id: BackupId,
    pub slot: String,
    pub start_lsn: crate::changes::Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentDecision {
    pub segment_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentPrunePlan {
    pub keep: Vec<SegmentDecision>,
    pub delete: Vec<SegmentDecision>,
}

/// Change segments go with the base backups they extend: a segment is
/// deleted only when every retained base backup of its slot starts at or
/// past its end (`endLsn` ≤ the oldest retained base's
/// `changeStream.startLsn`), so no retained base's chain needs it. While
/// no retained base records a position of its slot, every segment of the
/// slot is kept (a base being taken now starts past them, but nothing is
/// deleted on a guess).
pub fn plan_segment_prune(segments: &[SegmentFacts], retained_bases: &[BaseFacts]) -> SegmentPrunePlan {
    let mut plan = SegmentPrunePlan::default();
    for segment in segments {
        let oldest = retained_bases
            .iter()
            .filter(|base| base.slot == segment.slot)
            .min_by(|a, b| {
                a.start_lsn
                    .cmp(&b.start_lsn)
                    .then_with(|| a.backup_id.cmp(&b.backup_id))
            });
        let decision = |reason| SegmentDecision {
            segment_id: segment.id.clone(),
            reason,
        };
        match oldest {
            None => plan.keep.push(decision(format!(
                "no retained base backup records a position of slot {}",
                segment.slot
            ))),
            Some(base) if segment.end_lsn <= base.start_lsn => plan.delete.push(decision(format!(
                "ends at LSN {}, at or before the oldest retained base backup {} (from LSN {})",
                segment.end_lsn, base.backup_id, base.start_lsn
            ))),
            Some(base) => plan.keep.push(decision(format!(
                "needed by base backup {} (from LSN {})",
                base.backup_id, base.start_lsn
            ))),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 3, 0, 0).unwrap()
    }

    fn backup(days_ago: i64, hours: i64, verified: bool) -> BackupFacts {
        let taken_at = now() - Duration::days(days_ago) - Duration::hours(hours);
        BackupFacts {
            id: format!(
                "backup-{}-0000000{}",
                taken_at.timestamp_millis(),
                (days_ago % 10).abs()
            )
            .parse()
            .unwrap(),
            taken_at,
            verified,
            hourly: false,
        }
    }

    fn hourly(hours_ago: i64) -> BackupFacts {
        BackupFacts {
            hourly: true,
            ..backup(0, hours_ago, false)
        }
    }

    fn deleted_ages(plan: &PrunePlan, backups: &[BackupFacts]) -> Vec<i64> {
        plan.delete
            .iter()
            .map(|d| {
                let b = backups.iter().find(|b| b.id == d.backup_id).unwrap();
                (now() - b.taken_at).num_days()
            })
            .collect()
    }

    #[test]
    fn backups_strictly_older_than_the_retention_period_go_and_the_boundary_stays() {
        // Given daily verified backups from today back to 40 days ago
        let backups: Vec<BackupFacts> = (0..=40).map(|d| backup(d, 0, true)).collect();
        // When planned with 30 days' retention
        let plan = plan_prune(&backups, RetentionPolicy::default(), now());
        // Then exactly those older than 30 days are deleted; day 30 itself stays
        assert_eq!(deleted_ages(&plan, &backups), (31..=40).collect::<Vec<_>>());
        assert_eq!(plan.keep.len(), 31);
        let one_second_past = BackupFacts {
            taken_at: now() - Duration::days(30) - Duration::seconds(1),
            ..backup(30, 0, true)
        };
        let keep_one = RetentionPolicy {
            keep_newest: 1,
            ..RetentionPolicy::default()
        };
        let plan = plan_prune(&[backup(0, 0, true), one_second_past], keep_one, now());
        assert_eq!(plan.delete.len(), 1);
    }

    #[test]
    fn hourly_backups_go_after_their_own_hours_while_nightly_ones_keep_the_retention_period() {
        // Given nightly verified backups for 5 days and hourly ones for 72 hours
        let mut backups: Vec<BackupFacts> = (1..=5).map(|d| backup(d, 0, true)).collect();
        backups.extend((1..=72).map(hourly));
        // When planned with 48 hours for the hourly ones and 30 days
        let plan = plan_prune(&backups, RetentionPolicy::default(), now());
        // Then exactly the hourly backups older than 48 hours go, each saying why
        let deleted: Vec<&BackupFacts> = plan
            .delete
            .iter()
            .map(|d| backups.iter().find(|b| b.id == d.backup_id).unwrap())
            .collect();
        assert_eq!(deleted.len(), 24, "{plan:#?}");
        assert!(
            deleted
                .iter()
                .all(|b| b.hourly && (now() - b.taken_at).num_hours() > 48)
        );
        assert!(
            plan.delete[0]
                .reason
                .contains("an hourly backup older than 48 hours")
        );
        assert!(
            plan.keep
                .iter()
                .any(|k| k.reason.contains("an hourly backup within 48 hours"))
        );
        // And an hourly backup is never kept longer than the retention period
        let short = RetentionPolicy {
            retention_days: 1,
            hourly_retention_hours: 72,
            keep_newest: 1,
        };
        let plan = plan_prune(&[backup(0, 0, true), hourly(30)], short, now());
        assert_eq!(plan.delete.len(), 1, "{plan:#?}");
    }

    #[test]
    fn the_newest_verified_backups_survive_however_old() {
        // Given old verified backups and newer unverified ones
        let backups = vec![
            backup(1, 0, false),
            backup(2, 0, false),
            backup(50, 0, true),
            backup(60, 0, true),
            backup(70, 0, true),
            backup(80, 0, true),
        ];
        let plan = plan_prune(&backups, RetentionPolicy::default(), now());
        // Then the three newest verified stay, the fourth goes
        assert_eq!(deleted_ages(&plan, &backups), vec![80]);
    }

    #[test]
    fn with_nothing_verified_the_newest_backups_are_protected() {
        let backups: Vec<BackupFacts> = [40, 45, 50, 55, 60]
            .iter()
            .map(|&d| backup(d, 0, false))
            .collect();
        let plan = plan_prune(&backups, RetentionPolicy::default(), now());
        assert_eq!(deleted_ages(&plan, &backups), vec![55, 60]);
        assert!(plan.keep.iter().any(|k| k.reason.contains("none is verified")));
    }

    #[test]
    fn fewer_backups_than_the_minimum_are_all_kept_and_zero_is_never_left() {
        let backups = vec![backup(100, 0, false), backup(200, 0, false)];
        assert!(
            plan_prune(&backups, RetentionPolicy::default(), now())
                .delete
                .is_empty()
        );
        let policy = RetentionPolicy {
            retention_days: 1,
            keep_newest: 0,
            ..RetentionPolicy::default()
        };
        let plan = plan_prune(&backups, policy, now());
        assert_eq!(plan.keep.len(), 1, "the newest always stays");
        assert_eq!(plan_prune(&[], policy, now()), PrunePlan::default());
    }

    #[test]
    fn backups_from_the_future_are_kept() {
        let backups = vec![
            backup(-2, 0, false),
            backup(40, 0, true),
            backup(41, 0, true),
            backup(42, 0, true),
            backup(43, 0, true),
        ];
        let plan = plan_prune(&backups, RetentionPolicy::default(), now());
        assert_eq!(deleted_ages(&plan, &backups), vec![43]);
        assert!(plan.keep.iter().any(|k| k.reason.contains("newest backup")));
    }

    fn segment(id: &str, end: u64) -> SegmentFacts {
        SegmentFacts {
            id: id.to_owned(),
            slot: "s".to_owned(),
            end_lsn: crate::changes::Lsn(end),
        }
    }

    fn base(days_ago: i64, start: u64) -> BaseFacts {
        BaseFacts {
            backup_id: backup(days_ago, 0, true).id,
            slot: "s".to_owned(),
            start_lsn: crate::changes::Lsn(start),
        }
    }

    #[test]
    fn segments_go_only_once_every_retained_base_starts_past_them() {
        // Given segments ending at 0x100 … 0x500 and retained bases from 0x300 and 0x450
        let segments: Vec<SegmentFacts> = (1..=5).map(|n| segment(&format!("seg{n}"), n * 0x100)).collect();
        let bases = [base(1, 0x450), base(2, 0x300)];
        // When planned
        let plan = plan_segment_prune(&segments, &bases);
        // Then the segments ending at or before the oldest base's position go
        let deleted: Vec<&str> = plan.delete.iter().map(|d| d.segment_id.as_str()).collect();
        assert_eq!(deleted, ["seg1", "seg2", "seg3"]);
        assert!(
            plan.delete[2]
                .reason
                .contains("at or before the oldest retained base backup")
        );
        assert!(plan.keep[0].reason.contains("needed by base backup"));
        // And no segment a retained base needs is deleted, whatever the bases
        for start in (0..0x600).step_by(0x40) {
            let plan = plan_segment_prune(&segments, &[base(3, start), base(1, 0x580)]);
            for deleted in &plan.delete {
                let end = segments
                    .iter()
                    .find(|s| s.id == deleted.segment_id)
                    .unwrap()
                    .end_lsn;
                assert!(
                    end.0 <= start,
                    "{} ends at {end}, a base starts at {start:#x}",
                    deleted.segment_id
                );
            }
            assert_eq!(plan.keep.len() + plan.delete.len(), segments.len());
        }
    }

    #[test]
    fn segments_of_a_slot_no_retained_base_records_are_kept() {
        let segments = vec![segment("seg1", 0x100)];
        let plan = plan_segment_prune(&segments, &[]);
        assert!(plan.delete.is_empty());
        assert!(
            plan.keep[0]
                .reason
                .contains("no retained base backup records a position of slot s")
        );
        let other = BaseFacts {
            slot: "other".to_owned(),
            ..base(1, 0x900)
        };
        assert!(plan_segment_prune(&segments, &[other]).delete.is_empty());
    }
}
