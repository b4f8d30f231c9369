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

#[tokio::test]
async fn a_blocked_erasure_names_the_constraint_and_never_the_erased_key() {
    // Given a backup holding a customer with bookings, whose key the
    // bookings reference without cascading (ON DELETE RESTRICT)
    let database = TestDatabase::create("erasure_blocked_quiet").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let mut cli = Backupctl::new(&database, dir.path());
    cli.webhook = Some((receiver.url.clone(), "whsec-erasure".into()));
    cli.extra_env = vec![("RUST_LOG".into(), "debug,hyper=info,h2=info,rustls=info".into())];
    let (user, _) = customer(&client, 0).await;
    let backup = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // When only the user is erased, and the backup is restored in place
    let user_key = format!("id={user}");
    cli.json(&[
        "erase",
        "--table",
        "User",
        "--key",
        &user_key,
        "--reason",
        "GDPR request #7",
    ])
    .await;
    let blocked = cli
        .run(&["restore", "--backup-id", &backup, "--yes", "--no-safety-backup"])
        .await;

    // Then the restore fails naming the constraint and the table to erase
    // from too, the database is as it was, and the erased key appears in
    // nothing it said or wrote: not the output (debug logs included), not
    // the audit records kept for years, not the webhooks
    assert!(!blocked.status.success());
    let cause = cause_of(&blocked);
    assert!(cause.contains("cannot be applied"), "{}", stderr_of(&blocked));
    assert!(cause.contains("SQLSTATE 23503"), "{cause}");
    assert!(cause.contains("Booking_userId_fkey"), "{cause}");
    assert_eq!(rows_of(&client, &user).await.0, 1);
    let mut said = vec![
        (
            "stdout".to_owned(),
            String::from_utf8_lossy(&blocked.stdout).to_string(),
        ),
        ("stderr".to_owned(), stderr_of(&blocked)),
    ];
    for path in paths_under(dir.path()) {
        said.push((
            path.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string(),
        ));
    }
    let deliveries = receiver.received();
    assert!(!deliveries.is_empty(), "the failure was reported by webhook");
    for delivery in deliveries {
        said.push(("webhook".to_owned(), delivery.raw_body));
    }
    let audit = audit_records(dir.path());
    assert!(
        audit.iter().any(|r| r["operation"] == "restore"
            && r["outcome"] == "failure"
            && r["error"]
                .as_str()
                .unwrap_or_default()
                .contains("Booking_userId_fkey")),
        "the failure and its constraint are in the audit trail: {audit:#?}"
    );
    for (origin, text) in said {
        assert!(
            !text.contains(&user),
            "{origin} shows the erased key {user}:\n{text}"
        );
    }
}

/// The user's row as JSON, to sign them up again with the same id.
async fn user_row(client: &Client, user: &str) -> String {
    client
        .query_one(
            "SELECT row_to_json(u)::text FROM \"User\" u WHERE \"id\" = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_erasure_acts_on_older_backups_and_restored_tables_only_and_a_partial_restore_it_cannot_reach_is_refused()
 {
    // Given a backup holding a customer with bookings (and their
    // notifications, which cascade from the bookings), who is then erased
    let database = TestDatabase::create("erasure_scope").await;
    let client = database.client().await;
    load_carwash(&client, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let (user, bookings) = customer(&client, 0).await;
    assert!(bookings > 0);
    let row = user_row(&client, &user).await;
    let old = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    app_deletes(&client, &user).await;
    cli.json(&["erase", "--table", "User", "--key", &format!("id={user}")])
        .await;
    cli.json(&["erase", "--table", "Booking", "--key", &format!("userId={user}")])
        .await;

    // When the same person signs up again (the same id) and a partial
    // restore of a table unrelated to them runs in place
    client
        .execute(
            "INSERT INTO \"User\" SELECT * FROM json_populate_record(NULL::\"User\", $1::text::json)",
            &[&row],
        )
        .await
        .unwrap();
    let partial = cli
        .json(&[
            "restore",
            "--backup-id",
            &old,
            "--tables",
            "Setting",
            "--yes",
            "--no-safety-backup",
        ])
        .await;
    // Then the new account stays: an erasure acts only on restored tables
    assert_eq!(rows_of(&client, &user).await, (1, 0), "{partial}");
    assert!(
        partial["erased"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["rows"] == 0),
        "{partial}"
    );

    // When a backup taken after the erasures is restored in place
    let newer = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let restored = cli
        .json(&["restore", "--backup-id", &newer, "--yes", "--no-safety-backup"])
        .await;
    // Then the new account stays too: the erasures were recorded before it was taken
    assert_eq!(rows_of(&client, &user).await, (1, 0), "{restored}");
    let skipped: Vec<&str> = restored["erased"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["skipped"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(skipped.len(), 2, "{restored}");
    assert!(
        skipped.iter().all(|s| s.contains("recorded before this backup")),
        "{restored}"
    );
    let live = table_digests(&client).await;

    // When the notifications alone are restored from the older backup into
    // a new database: their erased rows go only with the bookings'
    let copy = TestDatabase::create("erasure_scope_copy").await;
    let refused = cli
        .run(&[
            "restore",
            "--backup-id",
            &old,
            "--tables",
            "EmailNotification",
            "--target-url",
            &copy.url,
            "--yes",
        ])
        .await;
    // Then the restore is refused, naming the erasure's table and what to add
    assert!(!refused.status.success());
    let cause = cause_of(&refused);
    assert!(
        cause.contains("without Booking") || cause.contains("without public.Booking"),
        "{cause}"
    );
    assert!(cause.contains("--tables"), "{cause}");
    let copy_client = copy.client().await;
    let tables: i64 = copy_client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "nothing was restored");
    // And restored together with the bookings, the erased ones and their notifications stay gone
    cli.json(&[
        "restore",
        "--backup-id",
        &old,
        "--tables",
        "Booking,EmailNotification",
        "--target-url",
        &copy.url,
        "--yes",
    ])
    .await;
    let count = |table: &'static str| {
        let (copy_client, client) = (&copy_client, &client);
        async move {
            let sql = format!("SELECT count(*) FROM \"{table}\"");
            let copied: i64 = copy_client.query_one(&sql, &[]).await.unwrap().get(0);
            let now: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
            (copied, now)
        }
    };
    let (copied, now) = count("Booking").await;
    assert_eq!(copied, now);
    let (copied, now) = count("EmailNotification").await;
    assert_eq!(copied, now);
    assert!(!live.is_empty());
}
