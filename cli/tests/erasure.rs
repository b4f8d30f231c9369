//! The right to deletion: `backupctl erase` appends to the erasure ledger,
//! and no restore (in place, into a target, partial) or deep verification
//! brings an erased person back, while the backups themselves stay as they
//! were. Run as a process on local storage and on the S3 stand-in.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use serde_json::Value;
use support::*;
use tokio_postgres::Client;

/// A user with bookings, and how many.
async fn customer(client: &Client, skip: i64) -> (String, i64) {
    let row = client
        .query_one(
            "SELECT b.\"userId\", count(*) FROM \"Booking\" b GROUP BY 1 ORDER BY 2 DESC, 1 OFFSET $1 LIMIT 1",
            &[&skip],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn rows_of(client: &Client, user: &str) -> (i64, i64) {
    let users: i64 = client
        .query_one("SELECT count(*) FROM \"User\" WHERE \"id\" = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    let bookings: i64 = client
        .query_one("SELECT count(*) FROM \"Booking\" WHERE \"userId\" = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    (users, bookings)
}

/// The application deletes a person: their bookings, then the user.
async fn app_deletes(client: &Client, user: &str) {
    client
        .execute("DELETE FROM \"Booking\" WHERE \"userId\" = $1", &[&user])
        .await
        .unwrap();
    client
        .execute("DELETE FROM \"User\" WHERE \"id\" = $1", &[&user])
        .await
        .unwrap();
}

async fn an_erased_person_never_comes_back(
    cli: &Backupctl,
    client: &Client,
    ledger: impl AsyncFn() -> Vec<(String, Vec<u8>)>,
) {
    // Given a backup holding a customer with bookings
    let (user, bookings) = customer(client, 0).await;
    assert!(bookings > 0);
    let old = cli.json(&["create"]).await;
    let old_id = old["id"].as_str().unwrap().to_owned();

    // When the person asks to be forgotten: the app deletes them, and the
    // erasures are recorded (the user first: the ledger's order must not matter)
    app_deletes(client, &user).await;
    let forgotten = table_digests(client).await;
    let user_key = format!("id={user}");
    let booking_key = format!("userId={user}");
    let recorded = cli
        .json(&[
            "erase",
            "--table",
            "User",
            "--key",
            &user_key,
            "--reason",
            "GDPR request #42",
        ])
        .await;
    assert!(recorded["id"].as_str().unwrap().starts_with("erasure-"));
    cli.json(&[
        "erase",
        "--table",
        "Booking",
        "--key",
        &booking_key,
        "--reason",
        "GDPR request #42",
    ])
    .await;
    // Then the ledger holds no readable trace of them
    for (key, bytes) in ledger().await {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&user),
            "{key} shows the erased id"
        );
    }

    // When the old backup is restored in place
    let restored = cli
        .json(&["restore", "--backup-id", &old_id, "--yes", "--no-safety-backup"])
        .await;
    // Then the person stays gone, with their bookings (and the notifications cascading from them)
    assert_eq!(rows_of(client, &user).await, (0, 0));
    assert_eq!(table_digests(client).await, forgotten);
    let erased: Vec<(String, u64)> = restored["erased"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["table"].as_str().unwrap().to_owned(),
                e["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(erased.len(), 2, "{restored}");
    assert!(erased.contains(&("User".to_owned(), 1)));
    assert!(erased.contains(&("Booking".to_owned(), bookings as u64)));

    // Into another database, and a partial restore of User alone: the same
    let copy = TestDatabase::create("erasure_copy").await;
    cli.json(&[
        "restore",
        "--backup-id",
        &old_id,
        "--target-url",
        &copy.url,
        "--yes",
    ])
    .await;
    assert_eq!(rows_of(&copy.client().await, &user).await, (0, 0));
    assert_eq!(table_digests(&copy.client().await).await, forgotten);
    cli.json(&[
        "restore",
        "--backup-id",
        &old_id,
        "--tables",
        "User",
        "--yes",
        "--no-safety-backup",
    ])
    .await;
    assert_eq!(rows_of(client, &user).await, (0, 0));

    // Deep verification restores and compares the backup as it is, then applies the ledger
    let report = cli
        .json(&["verify", "--backup-id", &old_id, "--depth", "deep"])
        .await;
    assert_eq!(report["status"], "passed", "{report}");
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("erasure ledger (2 erasures)")),
        "{report}"
    );

    // The report names the backups still holding the person, and when retention ends that
    let newer = cli.json(&["create"]).await;
    let report = cli.json(&["erase", "--report"]).await;
    for erasure in report.as_array().unwrap() {
        assert_eq!(
            erasure["backupsContaining"],
            serde_json::json!([old_id]),
            "{report}"
        );
        let until = chrono::DateTime::parse_from_rfc3339(erasure["lastRemovedBy"].as_str().unwrap()).unwrap();
        let taken = chrono::DateTime::parse_from_rfc3339(old["timestamp"].as_str().unwrap()).unwrap();
        // (to the second: the date is written without milliseconds)
        let retained = (until - taken).num_seconds();
        assert!((30 * 86_400 - 1..=30 * 86_400).contains(&retained), "{retained}");
    }
    assert!(newer["id"].is_string());

    // An erasure a cascade cannot complete refuses the restore and changes nothing
    let (other, _) = customer(client, 0).await;
    cli.json(&["erase", "--table", "User", "--key", &format!("id={other}")])
        .await;
    let before = table_digests(client).await;
    let blocked = cli
        .run(&["restore", "--backup-id", &old_id, "--yes", "--no-safety-backup"])
        .await;
    assert!(!blocked.status.success());
    assert!(
        cause_of(&blocked).contains("record an erasure for those rows too"),
        "{}",
        stderr_of(&blocked)
    );
    assert_eq!(table_digests(client).await, before);

    // The audit trail records who asked and why, never the person's key
    let listed = cli
        .json(&["report", "audit", "--from", "2026-01-01", "--format", "json"])
        .await;
    let erasures: Vec<&Value> = listed["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["operation"] == "erase")
        .collect();
    assert_eq!(erasures.len(), 3);
    assert_eq!(erasures[0]["reason"], "GDPR request #42");
    assert_eq!(erasures[2]["missingReason"], true);
    assert!(!listed.to_string().contains(&user));
}

#[tokio::test]
async fn on_local_storage_an_erased_person_never_comes_back_and_a_forged_ledger_is_refused() {
    let database = TestDatabase::create("erasure_local").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let ledger_dir = dir.path().join("erasures");
    let ledger = async || {
        paths_under(&ledger_dir)
            .into_iter()
            .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
            .collect::<Vec<_>>()
    };
    an_erased_person_never_comes_back(&cli, &client, ledger).await;

    // A ledger record altered to erase someone else is refused as forged
    let record = paths_under(&ledger_dir).into_iter().next().unwrap();
    let mut document: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    document["table"] = Value::from("public.Service");
    std::fs::write(&record, document.to_string()).unwrap();
    let latest = cli.json(&["list"]).await[0]["id"].as_str().unwrap().to_owned();
    let refused = cli
        .run(&["restore", "--backup-id", &latest, "--yes", "--no-safety-backup"])
        .await;
    assert!(
        cause_of(&refused).contains("fails its MAC"),
        "{}",
        stderr_of(&refused)
    );
}

#[tokio::test]
async fn on_s3_an_erased_person_never_comes_back() {
    let database = TestDatabase::create("erasure_s3").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let (s3, bucket) = s3_test_bucket("erasure", false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = cloud_env(&[("BACKUP_STORAGE_TYPE", "s3"), ("S3_BACKUP_BUCKET", &bucket)]);
    let ledger = async || {
        let listed = s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("erasures/")
            .send()
            .await
            .unwrap();
        let mut records = Vec::new();
        for key in listed.contents().iter().filter_map(|o| o.key()) {
            records.push((key.to_owned(), s3_object(&s3, &bucket, key).await));
        }
        assert!(!records.is_empty());
        records
    };
    an_erased_person_never_comes_back(&cli, &client, ledger).await;
}
