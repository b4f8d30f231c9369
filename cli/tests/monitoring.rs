//! Anomalies and capacity: a backup far from the median of the last ones
//! is reported (webhook `backup_anomaly`, metric `BackupAnomaly`); prune
//! measures the store (`StorageUsedBytes`, `BackupCount`) and warns at
//! 80 % of `BACKUP_STORAGE_BUDGET_BYTES`; local storage refuses to start a
//! backup that cannot fit.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use serde_json::Value;
use support::*;

/// Every metric line the runs wrote to `file`.
fn metrics_in(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn a_backup_that_lost_most_of_a_table_is_reported_as_an_anomaly() {
    // Given three ordinary backups, a webhook and a metrics file
    let database = TestDatabase::create("anomaly").await;
    let client = database.client().await;
    load_carwash(&client, 400).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(vec![]).await;
    let metrics = dir.path().join("metrics.jsonl");
    let mut cli = Backupctl::new(&database, dir.path());
    cli.webhook = Some((receiver.url.clone(), "secret".into()));
    cli.extra_env = vec![("BACKUP_METRICS".into(), format!("file:{}", metrics.display()))];
    for _ in 0..3 {
        cli.json(&["create"]).await;
    }
    assert!(!receiver.events().contains(&"backup_anomaly".to_owned()));

    // When most bookings are gone (an incident) and the next backup is taken
    client
        .batch_execute("DELETE FROM \"EmailNotification\"; DELETE FROM \"Booking\" WHERE \"id\" % 10 <> 0;")
        .await
        .unwrap();
    let created = cli.json(&["create"]).await;

    // Then the backup is still made, and the anomaly is reported by webhook, metric and audit
    assert!(created["id"].is_string());
    let anomaly = receiver
        .received()
        .into_iter()
        .find(|r| r.body["event"] == "backup_anomaly")
        .expect("a backup_anomaly webhook");
    let subjects: Vec<&str> = anomaly.body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"table public.Booking"), "{subjects:?}");
    assert!(
        subjects.contains(&"table public.EmailNotification"),
        "{subjects:?}"
    );
    let booking = anomaly.body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["subject"] == "table public.Booking")
        .unwrap();
    assert_eq!(booking["median"], 400);
    assert_eq!(booking["value"], 40);
    assert!(anomaly.body["message"].as_str().unwrap().contains("-90.0 %"));
    assert!(
        metrics_in(&metrics)
            .iter()
            .any(|m| m["BackupAnomaly"].as_f64() >= Some(2.0))
    );
    let audited = audit_records(dir.path());
    assert!(audited.iter().any(|r| {
        r["backupId"] == created["id"]
            && r["details"]["anomalies"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    }));

    // With detection off, the same change is not reported
    let quiet = receiver.received().len();
    let mut off = Backupctl::new(&database, dir.path());
    off.webhook = cli.webhook.clone();
    off.extra_env = vec![("BACKUP_ANOMALY_THRESHOLD_PERCENT".into(), "0".into())];
    client
        .batch_execute("DELETE FROM \"Booking\" WHERE \"id\" % 20 <> 0")
        .await
        .unwrap();
    off.json(&["create"]).await;
    assert!(
        receiver.received()[quiet..]
            .iter()
            .all(|r| r.body["event"] != "backup_anomaly")
    );
}

#[tokio::test]
async fn prune_measures_the_store_and_warns_near_the_storage_budget() {
    // Given two backups on local storage
    let database = TestDatabase::create("budget").await;
    load_carwash(&database.client().await, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(vec![]).await;
    let metrics = dir.path().join("metrics").join("prune.jsonl");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.webhook = Some((receiver.url.clone(), "secret".into()));
    cli.json(&["create"]).await;
    cli.json(&["create"]).await;

    // When prune runs with a budget the store is close to
    let stored: u64 = paths_under(dir.path())
        .iter()
        .filter(|p| !p.starts_with(metrics.parent().unwrap()))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    cli.extra_env = vec![
        (
            "BACKUP_STORAGE_BUDGET_BYTES".into(),
            (stored * 100 / 85).to_string(),
        ),
        ("BACKUP_METRICS".into(), format!("file:{}", metrics.display())),
    ];
    let outcome = cli.json(&["prune"]).await;

    // Then it reports what the store holds, as metrics too, and warns
    let storage = &outcome["storage"];
    assert_eq!(storage["backupCount"], 2, "{outcome}");
    let used = storage["usedBytes"].as_u64().unwrap();
    // (prune's own audit record is written after the measurement)
    assert!(used >= stored * 95 / 100 && used <= stored, "{used} vs {stored}");
    assert!(
        storage["budgetUsedPercent"].as_f64().unwrap() >= 80.0,
        "{storage}"
    );
    let emitted = metrics_in(&metrics);
    let prune_metrics = emitted.iter().find(|m| m["Operation"] == "prune").unwrap();
    assert_eq!(prune_metrics["StorageUsedBytes"].as_f64(), Some(used as f64));
    assert_eq!(prune_metrics["BackupCount"].as_f64(), Some(2.0));
    assert!(prune_metrics["StorageBudgetUsedPercent"].as_f64().unwrap() >= 80.0);
    let warning = receiver
        .received()
        .into_iter()
        .find(|r| r.body["event"] == "backup_storage_warning")
        .expect("a storage warning");
    assert!(
        warning.body["message"]
            .as_str()
            .unwrap()
            .contains("of the storage budget")
    );

    // Under a comfortable budget there is no warning
    let before = receiver.received().len();
    cli.extra_env = vec![("BACKUP_STORAGE_BUDGET_BYTES".into(), (stored * 10).to_string())];
    let outcome = cli.json(&["prune"]).await;
    assert!(outcome["storage"]["budgetUsedPercent"].as_f64().unwrap() < 20.0);
    assert!(
        receiver.received()[before..]
            .iter()
            .all(|r| r.body["event"] != "backup_storage_warning")
    );
}

#[tokio::test]
async fn local_storage_refuses_a_backup_that_cannot_fit_before_writing_anything() {
    // Given a 3 MiB disk holding one backup of about 2.2 MiB
    let database = TestDatabase::create("free_space").await;
    let client = database.client().await;
    load_carwash(&client, 100).await;
    client
        .batch_execute(
            "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS noise \
             FROM generate_series(1, 30000) AS g",
        )
        .await
        .unwrap();
    let disk = SmallDisk::mount("3m");
    let mut cli = Backupctl::new(&database, disk.path());
    cli.extra_env = vec![("BACKUP_COMPRESSION_LEVEL".into(), "0".into())];
    let first = cli.json(&["create"]).await;
    let size = first["sizeBytes"].as_u64().unwrap();
    assert!(size > 1_500_000 && size < 2_500_000, "{size}");
    let files_before = files_in(disk.path());

    // When the next backup is asked for
    let refused = cli.run(&["create"]).await;

    // Then it is refused at once, saying why, and nothing new is on the disk
    assert!(!refused.status.success());
    let cause = cause_of(&refused);
    assert!(cause.contains("not enough free space"), "{}", stderr_of(&refused));
    let new_files: Vec<String> = files_in(disk.path())
        .into_iter()
        .filter(|f| !files_before.contains(f) && !f.ends_with(".json"))
        .collect();
    assert!(
        new_files.is_empty(),
        "only the audit record may be new: {new_files:?}"
    );
}
