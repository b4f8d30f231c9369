//! `backupctl report audit`: the quarterly review from the audit trail and
//! the store, as Markdown, JSON and CSV.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use serde_json::{Value, json};
use support::*;

/// A copy of backup `id`'s metadata as if taken `days` ago (its MAC then
/// fails, as a planted document's would; the report counts it all the same).
fn plant_old_backup(dir: &std::path::Path, id: &str, days: i64, verified: bool) -> String {
    let taken = chrono::Utc::now() - chrono::Duration::days(days);
    let old_id = format!("backup-{}-0ddba11a", taken.timestamp_millis());
    let mut metadata: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("metadata/{id}.json"))).unwrap()).unwrap();
    metadata["id"] = json!(old_id);
    metadata["timestamp"] = json!(taken.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    std::fs::write(dir.join(format!("metadata/{old_id}.json")), metadata.to_string()).unwrap();
    if verified {
        let record = json!({"status": "passed", "depth": "full", "durationMs": 1,
                            "verifiedAt": taken.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)});
        std::fs::write(
            dir.join(format!("verification/{old_id}.json")),
            record.to_string(),
        )
        .unwrap();
    }
    old_id
}

#[tokio::test]
async fn the_audit_report_lists_operations_flags_missing_reasons_gaps_and_retention() {
    // Given a period that began three hours ago, and a day of operations in it
    let started = chrono::Utc::now() - chrono::Duration::hours(3);
    let database = TestDatabase::create("audit_report").await;
    load_carwash(&database.client().await, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = vec![
        ("BACKUP_RPO_MINUTES".into(), "60".into()),
        ("BACKUP_KEEP_VERIFIED".into(), "3".into()),
        ("USER".into(), "ops@carwash".into()),
    ];
    let with_reason = cli
        .json(&["create", "--reason", "before release 2.4, with migrations"])
        .await;
    let id = with_reason["id"].as_str().unwrap().to_owned();
    cli.json(&["create"]).await; // a manual backup without a reason
    cli.json(&[
        "verify",
        "--backup-id",
        &id,
        "--depth",
        "deep",
        "--checks",
        &format!(
            "{}/../tests/fixtures/carwash-queries.sql",
            env!("CARGO_MANIFEST_DIR")
        ),
    ])
    .await;
    cli.json(&[
        "restore",
        "--backup-id",
        &id,
        "--yes",
        "--no-safety-backup",
        "--reason",
        "drill",
    ])
    .await;
    cli.json(&["restore", "--backup-id", &id, "--yes", "--no-safety-backup"])
        .await; // no reason
    let expired = plant_old_backup(dir.path(), &id, 45, false);
    let kept_old = plant_old_backup(dir.path(), &id, 40, true);

    // When the report is asked for as JSON
    let from = started.to_rfc3339();
    let report = cli
        .json(&["report", "audit", "--from", &from, "--format", "json"])
        .await;

    // Then it counts and lists every operation, flagging manual ones without a reason
    assert_eq!(report["counts"]["create"]["success"], 2, "{}", report["counts"]);
    assert_eq!(report["counts"]["restore"]["success"], 2);
    assert_eq!(report["counts"]["verify"]["success"], 1);
    assert_eq!(report["manualWithoutReason"], 2);
    let operations = report["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 5);
    assert!(operations.iter().all(|o| o["actor"] == "ops@carwash"));
    let flagged: Vec<&str> = operations
        .iter()
        .filter(|o| o["missingReason"] == true)
        .map(|o| o["operation"].as_str().unwrap())
        .collect();
    assert_eq!(flagged, ["create", "restore"]);
    assert_eq!(report["restores"].as_array().unwrap().len(), 2);
    // and the verification with its drill
    let verification = &report["verifications"][0];
    assert_eq!(verification["backupId"], id.as_str());
    assert_eq!(verification["details"]["drill"]["checksPassed"], 11);
    // and the three hours before the first backup as a gap longer than the RPO
    let gaps = report["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0]["minutes"].as_i64().unwrap() >= 179);
    // and retention: the expired backup awaits the next prune, the verified old one is kept and why
    let retention = &report["retention"];
    assert_eq!(retention["backups"], 4);
    assert_eq!(retention["oldestBackup"], expired.as_str());
    assert_eq!(retention["oldestAgeDays"], 45);
    assert_eq!(retention["awaitingPrune"], json!([expired]));
    assert_eq!(retention["keptPastRetention"][0]["backupId"], kept_old.as_str());
    assert!(
        retention["keptPastRetention"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("newest verified")
    );
    assert_eq!(report["keyIdsInUse"].as_object().unwrap().len(), 1);
    assert_eq!(
        report["keyIdsInUse"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap(),
        4
    );

    // As Markdown, the same facts for people
    let markdown = cli.run(&["report", "audit", "--from", &from]).await;
    let markdown = String::from_utf8(markdown.stdout).unwrap();
    for expected in [
        "# Backup audit report",
        "| create | 2 | 0 |",
        "Manual operations without a reason: **2**",
        "**MISSING**",
        "drill: RTO",
        &format!("past the policy, deleted at the next prune: {expired}"),
    ] {
        assert!(markdown.contains(expected), "{expected:?} in\n{markdown}");
    }

    // As CSV, one row per operation, quoted where needed
    let csv = cli
        .run(&["report", "audit", "--from", &from, "--format", "csv"])
        .await;
    let csv = String::from_utf8(csv.stdout).unwrap();
    let rows: Vec<&str> = csv.split("\r\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows[0].starts_with("time,operation,backup_id"));
    assert!(
        rows.iter()
            .any(|r| r.contains(",\"before release 2.4, with migrations\",false,success,")),
        "{csv}"
    );

    // Saved, it lands under reports/; a bad period is refused
    let saved = cli
        .run(&[
            "report",
            "audit",
            "--from",
            "2026-07-01",
            "--to",
            "2026-09-30",
            "--save",
        ])
        .await;
    assert!(saved.status.success(), "{}", stderr_of(&saved));
    assert!(dir.path().join("reports/audit-2026-Q3.md").exists());
    assert!(dir.path().join("reports/audit-2026-Q3.json").exists());
    let backwards = cli
        .run(&["report", "audit", "--from", "2026-09-30", "--to", "2026-07-01"])
        .await;
    assert!(cause_of(&backwards).contains("must start before it ends"));
}
