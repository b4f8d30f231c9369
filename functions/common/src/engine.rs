//! When a database outgrows one Lambda run. A create, or the restore a deep
//! verification measured, that used more than 60 % of its function's
//! timeout is reported — a warning in the log and the result, a
//! `NearTimeout` metric (alarm in template.yaml) and a `switch_to_fargate`
//! webhook — while there is still room to move the database to the
//! Fargate engine before a run fails at the 15-minute limit.

use std::time::Duration;

use backup_core::metrics::{MetricSet, Unit};
use backup_core::operations::{Operation, Services};
use serde_json::{Value, json};

/// The share of the timeout past which the switch is advised: the growth
/// of a month or two still fits before a run fails.
pub const NEAR_TIMEOUT_SHARE: f64 = 0.6;

/// What was measured against which timeout.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// `create`, or `restore` (measured by a deep verification).
    pub what: &'static str,
    /// The function whose timeout it is measured against.
    pub function: &'static str,
    pub took: Duration,
    pub timeout: Duration,
}

impl Measured {
    fn share(&self) -> f64 {
        if self.timeout.is_zero() {
            return 0.0;
        }
        self.took.as_secs_f64() / self.timeout.as_secs_f64()
    }

    pub fn is_near_timeout(&self) -> bool {
        self.share() > NEAR_TIMEOUT_SHARE
    }

    fn message(&self) -> String {
        format!(
            "the {} took {:.1} s, {:.0} % of the {} function's {:.1} s timeout: switch this database to the Fargate engine (EnableFargate=true, BackupEngine=fargate; README, \"Large databases\")",
            self.what,
            self.took.as_secs_f64(),
            self.share() * 100.0,
            self.function,
            self.timeout.as_secs_f64(),
        )
    }
}

/// Reports `measured` when it passed [`NEAR_TIMEOUT_SHARE`]: log, metric
/// (under `operation`, the function that measured it) and webhook. Returns
/// the warning for the function's result, `None` when there is none.
pub async fn report_near_timeout(
    services: &Services,
    operation: Operation,
    measured: Measured,
    backup_id: Option<&str>,
) -> Option<Value> {
    if !measured.is_near_timeout() {
        return None;
    }
    let message = measured.message();
    let warning = json!({
        "what": measured.what,
        "backupId": backup_id,
        "measuredSeconds": round(measured.took.as_secs_f64()),
        "timeoutSeconds": round(measured.timeout.as_secs_f64()),
        "sharePercent": (measured.share() * 100.0).round(),
        "message": message,
    });
    tracing::warn!(
        what = measured.what,
        measured_seconds = measured.took.as_secs_f64(),
        timeout_seconds = measured.timeout.as_secs_f64(),
        "{message}"
    );
    MetricSet::new(operation.as_str())
        .with("NearTimeout", 1.0, Unit::Count)
        .with("NearTimeoutPercent", measured.share() * 100.0, Unit::Percent)
        .emit(&services.metrics);
    services
        .notifier
        .event("switch_to_fargate", warning.clone())
        .await;
    Some(warning)
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_percent_of_the_timeout_is_the_line() {
        let measured = |seconds| Measured {
            what: "create",
            function: "create",
            took: Duration::from_secs(seconds),
            timeout: Duration::from_secs(900),
        };
        assert!(!measured(540).is_near_timeout());
        assert!(measured(541).is_near_timeout());
        assert!(
            measured(541)
                .message()
                .contains("switch this database to the Fargate engine")
        );
        assert!(
            !Measured {
                timeout: Duration::ZERO,
                ..measured(5)
            }
            .is_near_timeout()
        );
    }
}
