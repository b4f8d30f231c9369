//! Anomalies: a new backup whose size or per-table row counts stray far
//! from the median of the backups before it. A table that lost most of its
//! rows is the classic sign of an incident being backed up over good data,
//! so it is reported at once (webhook `backup_anomaly`, metric
//! `BackupAnomaly`), while the older, good backups are still kept.

use serde::Serialize;

use crate::metadata::BackupMetadata;

/// How many earlier backups the median is taken over.
pub const HISTORY: usize = 7;
/// Fewer earlier backups than this make no meaningful median.
pub const MIN_HISTORY: usize = 3;

/// One measure of a backup that strays from its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    /// `size` or `table Booking`.
    pub subject: String,
    pub value: u64,
    pub median: u64,
    /// Signed change from the median, in percent (-99.5: nearly all gone).
    pub change_percent: f64,
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {} where the median of the last backups is {} ({:+.1} %)",
            self.subject, self.value, self.median, self.change_percent
        )
    }
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        values[middle - 1].midpoint(values[middle])
    })
}

fn compare(subject: String, value: u64, history: Vec<u64>, threshold_percent: f64) -> Option<Anomaly> {
    if history.len() < MIN_HISTORY {
        return None;
    }
    let median = median(history)?;
    let change_percent = if median == 0 {
        if value == 0 {
            return None;
        }
        100.0
    } else {
        (value as f64 - median as f64) / median as f64 * 100.0
    };
    (change_percent.abs() > threshold_percent).then_some(Anomaly {
        subject,
        value,
        median,
        change_percent,
    })
}

/// Compares `new` with `history` (earlier backups, newest first; only the
/// first [`HISTORY`] that hold the same tables count). `threshold_percent`
/// 0 turns detection off.
pub fn detect(new: &BackupMetadata, history: &[BackupMetadata], threshold_percent: f64) -> Vec<Anomaly> {
    if threshold_percent <= 0.0 {
        return Vec::new();
    }
    let comparable: Vec<&BackupMetadata> = history
        .iter()
        .filter(|old| old.id != new.id && old.tables == new.tables)
        .take(HISTORY)
        .collect();
    let mut anomalies = Vec::new();
    if let Some(anomaly) = compare(
        "size".into(),
        new.size_bytes,
        comparable.iter().map(|m| m.size_bytes).collect(),
        threshold_percent,
    ) {
        anomalies.push(anomaly);
    }
    for (name, rows) in new.table_rows() {
        let history = comparable
            .iter()
            .filter_map(|old| {
                old.table_rows()
                    .into_iter()
                    .find(|(known, _)| *known == name)
                    .map(|(_, rows)| rows)
            })
            .collect();
        if let Some(anomaly) = compare(format!("table {name}"), rows, history, threshold_percent) {
            anomalies.push(anomaly);
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_histories() {
        assert_eq!(median(vec![5, 1, 3]), Some(3));
        assert_eq!(median(vec![4, 1, 3, 2]), Some(2));
        assert_eq!(median(vec![u64::MAX, u64::MAX]), Some(u64::MAX));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn a_change_beyond_the_threshold_is_an_anomaly_either_way() {
        let history = || vec![1000, 1100, 900];
        let lost = compare("table Booking".into(), 12, history(), 50.0).unwrap();
        assert_eq!(lost.median, 1000);
        assert!((lost.change_percent + 98.8).abs() < 0.01, "{lost:?}");
        assert!(lost.to_string().contains("(-98.8 %)"), "{lost}");
        assert!(compare("size".into(), 2600, history(), 50.0).is_some());
        assert!(compare("size".into(), 1400, history(), 50.0).is_none());
        assert!(
            compare("size".into(), 12, vec![1000, 1000], 50.0).is_none(),
            "too little history"
        );
        assert!(compare("table T".into(), 0, vec![0, 0, 0], 50.0).is_none());
        assert!(compare("table T".into(), 5, vec![0, 0, 0], 50.0).is_some());
    }
}
