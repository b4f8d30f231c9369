//! Disaster-recovery drills: the application's own queries, run on a
//! restored scratch copy, each judged against the expectation written
//! beside it. The source at the backup's instant is gone, so expectations,
//! not a comparison with the live database, are the oracle.
//!
//! A checks file holds `-- name:` blocks (as `tests/fixtures/carwash-queries.sql`):
//!
//! ```sql
//! -- name: open_hours
//! -- expect: rows = 7
//! SELECT "dayOfWeek" FROM "BusinessHours";
//!
//! -- name: revenue
//! -- expect: value > 0
//! SELECT sum("totalPrice") FROM "Booking" WHERE "status" = 'COMPLETED';
//! ```
//!
//! `rows` is the number of rows the query returns, `value` the first column
//! of its first row read as a number. Operators: `=`, `!=`, `>`, `>=`, `<`, `<=`.
//! A block without `-- expect:` must only run without error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio_postgres::SimpleQueryMessage;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("checks file line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("the checks file holds no `-- name:` block")]
    Empty,
    #[error("the checks file {path} cannot be read")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the checks file {key} cannot be read from the backup store")]
    NotInStore {
        key: String,
        #[source]
        source: crate::storage::StorageError,
    },
    #[error("the checks file {0} is not UTF-8 text")]
    NotText(String),
}

/// A checks file is small; a larger one is not ours.
const MAX_CHECKS_BYTES: u64 = 1 << 20;

/// Loads the checks a setting names: `store:drills/checks.sql` (an object
/// in the backup store, as the Lambda reads it) or a file path.
pub async fn load_checks(
    spec: &str,
    store: &dyn crate::storage::BackupStore,
) -> Result<Vec<Check>, DrillError> {
    let (name, bytes) = match spec.strip_prefix("store:") {
        Some(key) => (
            key.to_owned(),
            crate::storage::get_bytes(store, key, MAX_CHECKS_BYTES)
                .await
                .map_err(|source| DrillError::NotInStore {
                    key: key.to_owned(),
                    source,
                })?,
        ),
        None => (
            spec.to_owned(),
            tokio::fs::read(spec)
                .await
                .map_err(|source| DrillError::Unreadable {
                    path: spec.to_owned(),
                    source,
                })?,
        ),
    };
    let text = String::from_utf8(bytes).map_err(|_| DrillError::NotText(name))?;
    parse_checks(&text)
}

/// What an expectation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Rows,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    fn holds(self, actual: f64, expected: f64) -> bool {
        match self {
            Self::Equal => actual == expected,
            Self::NotEqual => actual != expected,
            Self::Greater => actual > expected,
            Self::GreaterOrEqual => actual >= expected,
            Self::Less => actual < expected,
            Self::LessOrEqual => actual <= expected,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Greater => ">",
            Self::GreaterOrEqual => ">=",
            Self::Less => "<",
            Self::LessOrEqual => "<=",
        }
    }
}

/// `rows >= 1`, `value > 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub subject: Subject,
    pub comparison: Comparison,
    pub threshold: f64,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = match self.subject {
            Subject::Rows => "rows",
            Subject::Value => "value",
        };
        write!(f, "{subject} {} {}", self.comparison.symbol(), self.threshold)
    }
}

impl FromStr for Expectation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (subject, rest) = if let Some(rest) = text.strip_prefix("rows") {
            (Subject::Rows, rest)
        } else if let Some(rest) = text.strip_prefix("value") {
            (Subject::Value, rest)
        } else {
            return Err(format!("expectation {text:?} must start with rows or value"));
        };
        let rest = rest.trim_start();
        // Longest operators first, so `>=` is not read as `>` then `=1`.
        let (comparison, number) = [
            (">=", Comparison::GreaterOrEqual),
            ("<=", Comparison::LessOrEqual),
            ("!=", Comparison::NotEqual),
            ("=", Comparison::Equal),
            (">", Comparison::Greater),
            ("<", Comparison::Less),
        ]
        .into_iter()
        .find_map(|(symbol, comparison)| rest.strip_prefix(symbol).map(|n| (comparison, n)))
        .ok_or_else(|| format!("expectation {text:?} needs one of = != > >= < <="))?;
        let threshold: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("expectation {text:?} must end with a number"))?;
        Ok(Self {
            subject,
            comparison,
            threshold,
        })
    }
}

/// One named query and what its result must meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub sql: String,
    pub expectations: Vec<Expectation>,
}

/// Parses a checks file.
pub fn parse_checks(text: &str) -> Result<Vec<Check>, DrillError> {
    let mut checks: Vec<Check> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("-- name:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(DrillError::Syntax {
                    line: number,
                    message: "a `-- name:` block needs a name".into(),
                });
            }
            if checks.iter().any(|c| c.name == name) {
                return Err(DrillError::Syntax {
                    line: number,
                    message: format!("the name {name:?} is used twice"),
                });
            }
            checks.push(Check {
                name: name.to_owned(),
                sql: String::new(),
                expectations: Vec::new(),
            });
            continue;
        }
        let Some(current) = checks.last_mut() else {
            continue; // the file's own header comments
        };
        if let Some(expectation) = trimmed.strip_prefix("-- expect:") {
            let expectation = expectation.parse().map_err(|message| DrillError::Syntax {
                line: number,
                message,
            })?;
            current.expectations.push(expectation);
        } else if !trimmed.starts_with("--") {
            current.sql.push_str(line);
            current.sql.push('\n');
        }
    }
    if checks.is_empty() {
        return Err(DrillError::Empty);
    }
    if let Some(empty) = checks.iter().find(|c| c.sql.trim().is_empty()) {
        return Err(DrillError::Syntax {
            line: 0,
            message: format!("the block {:?} has no query", empty.name),
        });
    }
    Ok(checks)
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckOutcome {
    pub name: String,
    pub passed: bool,
    /// The rows returned, or why it failed.
    pub detail: String,
}

/// The drill's result, stored with the verification record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    /// How long the restore into the scratch database took: the measured RTO.
    pub rto_ms: u64,
    pub checks_passed: usize,
    pub checks_failed: usize,
    pub checks: Vec<CheckOutcome>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.checks_failed == 0
    }
}

/// Judges a result against a check's expectations.
fn judge(check: &Check, rows: &[Vec<Option<String>>]) -> CheckOutcome {
    let first_value = rows.first().and_then(|row| row.first().cloned().flatten());
    let mut failures = Vec::new();
    for expectation in &check.expectations {
        let actual = match expectation.subject {
            Subject::Rows => Some(rows.len() as f64),
            Subject::Value => first_value.as_deref().and_then(|v| v.trim().parse::<f64>().ok()),
        };
        match actual {
            Some(actual) if expectation.comparison.holds(actual, expectation.threshold) => {}
            Some(actual) => failures.push(format!("expected {expectation}, got {actual}")),
            None => failures.push(format!(
                "expected {expectation}, but the first value is {}",
                first_value
                    .as_deref()
                    .map_or("NULL or missing".to_owned(), |v| format!("{v:?} (not a number)"))
            )),
        }
    }
    CheckOutcome {
        name: check.name.clone(),
        passed: failures.is_empty(),
        detail: if failures.is_empty() {
            format!("{} rows", rows.len())
        } else {
            failures.join("; ")
        },
    }
}

/// Runs every check on `client` (the restored copy), each in its own
/// read-only transaction with a statement timeout, so a check can neither
/// change the copy nor hang the drill.
pub async fn run_checks(client: &tokio_postgres::Client, checks: &[Check]) -> Vec<CheckOutcome> {
    let mut outcomes = Vec::new();
    for check in checks {
        let outcome = match run_one(client, check).await {
            Ok(rows) => judge(check, &rows),
            Err(error) => CheckOutcome {
                name: check.name.clone(),
                passed: false,
                detail: format!(
                    "the query failed: {}",
                    error
                        .as_db_error()
                        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
                ),
            },
        };
        if !outcome.passed {
            tracing::warn!(
                check = outcome.name,
                detail = outcome.detail,
                "drill check failed"
            );
        }
        outcomes.push(outcome);
    }
    outcomes
}

async fn run_one(
    client: &tokio_postgres::Client,
    check: &Check,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL statement_timeout = '120s'")
        .await?;
    let result = client.simple_query(&check.sql).await;
    client.batch_execute("ROLLBACK").await?;
    let mut rows = Vec::new();
    for message in result? {
        if let SimpleQueryMessage::Row(row) = message {
            rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checks_parse_with_their_expectations() {
        let checks = parse_checks(
            "-- header comment\n-- name: hours\n-- expect: rows = 7\n-- expect: value>=0\nSELECT 1;\n\n-- name: plain\nSELECT 2\n",
        )
        .unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].name, "hours");
        assert_eq!(checks[0].sql.trim(), "SELECT 1;");
        assert_eq!(checks[0].expectations[0].to_string(), "rows = 7");
        assert_eq!(checks[0].expectations[1].comparison, Comparison::GreaterOrEqual);
        assert!(checks[1].expectations.is_empty());
        for (bad, says) in [
            (
                "-- name: a\n-- expect: count > 1\nSELECT 1",
                "must start with rows or value",
            ),
            ("-- name: a\n-- expect: rows ~ 1\nSELECT 1", "needs one of"),
            (
                "-- name: a\n-- expect: rows > many\nSELECT 1",
                "must end with a number",
            ),
            ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2", "used twice"),
            ("-- name: a\n-- expect: rows > 1\n", "has no query"),
            ("SELECT 1", "no `-- name:` block"),
        ] {
            let error = parse_checks(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn results_are_judged_by_rows_and_first_value() {
        let check = |expect: &str| Check {
            name: "c".into(),
            sql: "SELECT 1".into(),
            expectations: vec![expect.parse().unwrap()],
        };
        let rows = vec![vec![Some("42.5".to_owned())], vec![Some("1".to_owned())]];
        assert!(judge(&check("rows = 2"), &rows).passed);
        assert!(judge(&check("value > 42"), &rows).passed);
        let failed = judge(&check("rows = 0"), &rows);
        assert!(!failed.passed);
        assert_eq!(failed.detail, "expected rows = 0, got 2");
        let null = judge(&check("value > 0"), &[vec![None]]);
        assert!(!null.passed && null.detail.contains("NULL"), "{}", null.detail);
        let text = judge(&check("value > 0"), &[vec![Some("abc".into())]]);
        assert!(text.detail.contains("not a number"), "{}", text.detail);
        assert!(!judge(&check("value != 0"), &[]).passed);
    }
}
