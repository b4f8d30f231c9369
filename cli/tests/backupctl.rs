//! `backupctl` run as a process against the real PostgreSQL, local storage
//! and a real local webhook receiver.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use hmac::{Hmac, KeyInit, Mac};
use integration_tests::*;
use serde_json::Value;
use support::*;

fn valid_signature(request: &ReceivedRequest, secret: &str) -> bool {
    let (Some(timestamp), Some(signature)) = (
        request.headers.get("x-backup-timestamp"),
        request.headers.get("x-backup-signature"),
    ) else {
        return false;
    };
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", request.raw_body).as_bytes());
    signature == &format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn create_list_verify_restore_and_prune_on_the_fixture() {
    // Given the car-wash database, a backup folder and a webhook receiver
    let database = TestDatabase::create("cli_flow").await;
    let client = database.client().await;
    load_carwash(&client, 2_000).await;
    let original = table_digests(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(vec![]).await;
    let mut cli = Backupctl::new(&database, dir.path());
    cli.webhook = Some((receiver.url.clone(), "webhook-secret".into()));

    // When a backup is created, it prints its metadata with the user's fields
    let created = cli
        .json(&[
            "create",
            "--reason",
            "before release 2.4",
            "--trigger",
            "pre-deployment",
            "--requested-by",
            "ops@carwash",
        ])
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("backup-"));
    assert_eq!(
        created["recordCount"],
        original.values().map(|(n, _)| *n).sum::<i64>()
    );
    assert_eq!(created["encrypted"], true);
    assert_eq!(created["compressed"], true);
    assert_eq!(created["trigger"], "pre-deployment");
    assert_eq!(created["requestedBy"], "ops@carwash");
    assert_eq!(created["tables"].as_array().unwrap().len(), 10);
    let object = dir.path().join(format!("{id}.backup"));
    let stored = std::fs::read(&object).unwrap();
    assert_eq!(created["checksum"], backup_core::checksum::sha256_hex(&stored));
    assert!(dir.path().join(format!("metadata/{id}.json")).exists());

    // list shows it; verify passes at every depth and is recorded
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    for depth in ["quick", "full", "deep"] {
        let report = cli
            .json(&["verify", "--backup-id", "latest", "--depth", depth])
            .await;
        assert_eq!(report["status"], "passed", "{depth}: {report}");
        assert_eq!(report["backupId"], id.as_str());
    }
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed[0]["verification"]["status"], "passed");
    assert_eq!(listed[0]["verification"]["depth"], "deep");
    assert!(listed[0]["verification"]["restoreDurationMs"].as_u64().is_some());

    // When the data changes and the backup is restored in place
    client
        .batch_execute("UPDATE \"Booking\" SET \"status\" = 'CANCELLED'; DELETE FROM \"Testimonial\";")
        .await
        .unwrap();
    let refused = cli.run(&["restore", "--backup-id", &id]).await;
    assert!(!refused.status.success());
    assert!(cause_of(&refused).contains("--yes"), "{}", stderr_of(&refused));
    let restored = cli
        .json(&[
            "restore",
            "--backup-id",
            &id,
            "--yes",
            "--reason",
            "bad migration",
        ])
        .await;
    // Then everything is as backed up, and a safety backup was taken first
    assert_eq!(table_digests(&client).await, original);
    let safety = restored["safetyBackupId"].as_str().unwrap().to_owned();
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["id"], safety.as_str());
    assert_eq!(listed[0]["trigger"], "safety");

    // Restoring only Booking and User leaves the other tables as they are
    client
        .batch_execute("UPDATE \"Booking\" SET \"notes\" = 'x'; UPDATE \"Service\" SET \"price\" = 1;")
        .await
        .unwrap();
    let changed = table_digests(&client).await;
    let partial = cli
        .json(&[
            "restore",
            "--backup-id",
            &id,
            "--tables",
            "Booking,User",
            "--no-safety-backup",
            "--yes",
        ])
        .await;
    assert_eq!(partial["tables"].as_array().unwrap().len(), 2);
    assert!(partial.get("safetyBackupId").is_none());
    for (table, digest) in table_digests(&client).await {
        let expected = if table == "public.Booking" || table == "public.User" {
            &original[&table]
        } else {
            &changed[&table]
        };
        assert_eq!(&digest, expected, "{table}");
    }

    // prune: an old backup goes, an orphan left by a crash is swept, recent ones stay
    let old_id = "backup-1700000000000-01d0ba5e";
    let mut old_metadata: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("metadata/{id}.json"))).unwrap())
            .unwrap();
    old_metadata["id"] = old_id.into();
    old_metadata["timestamp"] = "2023-11-14T22:13:20.000Z".into();
    std::fs::write(
        dir.path().join(format!("metadata/{old_id}.json")),
        old_metadata.to_string(),
    )
    .unwrap();
    std::fs::copy(&object, dir.path().join(format!("{old_id}.backup"))).unwrap();
    let orphan = dir.path().join("backup-1700000000001-deadbeef.backup");
    std::fs::write(&orphan, b"half-written").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&orphan)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        .unwrap();
    let plan = cli.json(&["prune", "--dry-run"]).await;
    assert_eq!(plan["deleted"][0]["backupId"], old_id);
    // and a person reading the dry run is told why each backup stays or goes
    let told = cli.run(&["prune", "--dry-run"]).await;
    let told = String::from_utf8_lossy(&told.stdout).into_owned();
    assert!(told.contains(&format!("would delete {old_id} (")), "{told}");
    for kept in plan["kept"].as_array().unwrap() {
        let line = format!(
            "would keep {} ({})",
            kept["backupId"].as_str().unwrap(),
            kept["reason"].as_str().unwrap()
        );
        assert!(told.contains(&line), "{line:?} missing from: {told}");
    }
    assert!(
        dir.path().join(format!("{old_id}.backup")).exists(),
        "dry run deletes nothing"
    );
    let pruned = cli.json(&["prune"]).await;
    assert_eq!(pruned["deleted"].as_array().unwrap().len(), 1);
    assert_eq!(
        pruned["orphansDeleted"],
        serde_json::json!(["backups/backup-1700000000001-deadbeef.backup"])
    );
    assert!(!dir.path().join(format!("{old_id}.backup")).exists());
    assert!(!dir.path().join(format!("metadata/{old_id}.json")).exists());
    assert!(!orphan.exists());
    assert_eq!(cli.json(&["list"]).await.as_array().unwrap().len(), 2);

    // The webhook received every event, signed (each delivery is recorded
    // before it is answered, and backupctl waits for the answer); the audit
    // trail has a record per operation
    let events = receiver.events();
    for expected in [
        "backup_created",
        "backup_verified",
        "backup_restored",
        "backups_pruned",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} missing from {events:?}"
        );
    }
    assert_eq!(
        events.iter().filter(|e| *e == "backup_created").count(),
        2,
        "{events:?}"
    );
    assert_eq!(events.iter().filter(|e| *e == "backup_verified").count(), 3);
    let created_event = receiver
        .received()
        .into_iter()
        .find(|r| r.body["event"] == "backup_created")
        .unwrap();
    assert_eq!(created_event.body["type"], "backup_event");
    assert_eq!(created_event.body["backupId"], id.as_str());
    assert_eq!(created_event.body["recordCount"], created["recordCount"]);
    assert!(created_event.body["tables"].is_array() && created_event.body["timestamp"].is_string());
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| valid_signature(r, "webhook-secret"))
    );

    let audit = audit_records(dir.path());
    let count = |operation: &str| audit.iter().filter(|r| r["operation"] == operation).count();
    let outcomes = |operation: &str, outcome: &str| {
        audit
            .iter()
            .filter(|r| r["operation"] == operation && r["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("create"), 2, "the backup and the safety backup");
    assert_eq!(count("verify"), 3);
    assert_eq!(outcomes("restore", "success"), 2);
    assert_eq!(
        outcomes("restore", "failure"),
        1,
        "the attempt without --yes is audited too"
    );
    assert!(count("prune") >= 2, "a record per deleted backup and a summary");
    let restore_record = audit
        .iter()
        .find(|r| r["operation"] == "restore" && r["reason"] == "bad migration")
        .unwrap();
    assert_eq!(restore_record["outcome"], "success");
    assert!(restore_record["actor"].is_string());
    assert!(
        files_in(dir.path()).iter().all(|f| !f.contains(".tmp-")),
        "no temporary files left"
    );
}

#[tokio::test]
async fn tampered_truncated_and_wrong_key_backups_fail_and_leave_the_database_untouched() {
    // Given a backup, then changes to the database
    let database = TestDatabase::create("cli_tamper").await;
    let client = database.client().await;
    load_carwash(&client, 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    client
        .batch_execute("UPDATE \"User\" SET \"name\" = 'changed'")
        .await
        .unwrap();
    let current = table_digests(&client).await;
    let object = dir.path().join(format!("{id}.backup"));
    let pristine = std::fs::read(&object).unwrap();

    let mut flipped = pristine.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x04;
    let truncated = pristine[..pristine.len() - 1000].to_vec();
    for (what, bytes, key, expected_cause) in [
        ("a flipped bit", flipped, KEY, "integrity check failed"),
        ("a truncated object", truncated, KEY, "integrity check failed"),
        (
            "the wrong key",
            pristine.clone(),
            OTHER_KEY,
            "which is not in the configured keyring",
        ),
    ] {
        std::fs::write(&object, &bytes).unwrap();
        let mut cli = Backupctl::new(&database, dir.path());
        cli.key = key.into();
        // When it is verified in full, then restored
        let verify = cli.run(&["verify", "--backup-id", &id, "--depth", "full"]).await;
        let restore = cli
            .run(&["restore", "--backup-id", &id, "--yes", "--no-safety-backup"])
            .await;
        // Then both fail with a one-line cause and the database is untouched
        assert!(!verify.status.success(), "{what}: verify passed");
        assert!(!restore.status.success(), "{what}: restore succeeded");
        let cause = cause_of(&restore);
        assert!(cause.contains(expected_cause), "{what}: {cause}");
        assert!(!cause.contains(KEY) && !cause.contains(OTHER_KEY));
        assert_eq!(table_digests(&client).await, current, "{what}: database changed");
    }
    // A quick check catches the flipped bit through the checksum alone
    let mut flipped = pristine.clone();
    flipped[100] ^= 0x01;
    std::fs::write(&object, &flipped).unwrap();
    let quick = cli.run(&["verify", "--backup-id", &id, "--depth", "quick"]).await;
    assert!(!quick.status.success());
    assert!(cause_of(&quick).contains("SHA-256"), "{}", stderr_of(&quick));
}

#[tokio::test]
async fn latest_resolves_to_the_newest_backup_and_unknown_ids_are_refused() {
    let database = TestDatabase::create("cli_latest").await;
    load_carwash(&database.client().await, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let first = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    // Given only the older of two backups is verified
    cli.json(&["verify", "--backup-id", &first, "--depth", "quick"])
        .await;
    let second = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    // Then latest-verified is the older one, though a newer one exists
    let report = cli
        .json(&["verify", "--backup-id", "latest-verified", "--depth", "quick"])
        .await;
    assert_eq!(report["backupId"], first.as_str());
    // And latest is the newest
    assert_eq!(
        cli.json(&["verify", "--backup-id", "latest", "--depth", "quick"])
            .await["backupId"],
        second.as_str()
    );
    // Once the newest is verified too, latest-verified moves to it
    let report = cli
        .json(&["verify", "--backup-id", "latest-verified", "--depth", "quick"])
        .await;
    assert_eq!(report["backupId"], second.as_str());

    let unknown = cli
        .run(&["restore", "--backup-id", "backup-1-00000000", "--yes"])
        .await;
    assert!(!unknown.status.success());
    assert!(
        cause_of(&unknown).contains("no backup backup-1-00000000"),
        "{}",
        stderr_of(&unknown)
    );
    // Malformed requests are refused as usage errors, before anything runs
    let malformed = cli.run(&["verify", "--backup-id", "../../etc/passwd"]).await;
    assert_eq!(malformed.status.code(), Some(2), "{}", stderr_of(&malformed));
    assert!(stderr_of(&malformed).contains("is not a backup id"));
    let unknown_table = cli
        .run(&["restore", "--backup-id", &second, "--tables", "Bookings", "--yes"])
        .await;
    assert!(
        cause_of(&unknown_table).contains("no table named Bookings"),
        "{}",
        stderr_of(&unknown_table)
    );
    // A retention of 0 days would delete all but the kept verified backups:
    // refused, as the Lambda handler refuses it, and nothing is deleted
    let everything = cli.run(&["prune", "--retention-days", "0"]).await;
    assert_eq!(everything.status.code(), Some(2), "{}", stderr_of(&everything));
    assert!(
        stderr_of(&everything).contains("at least 1"),
        "{}",
        stderr_of(&everything)
    );
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    for (flag, value, says) in [
        ("--trigger", "schedule", "reserved for the EventBridge schedule"),
        ("--tables", "Booking,,User", "empty table"),
    ] {
        let refused = cli.run(&["create", flag, value]).await;
        assert_eq!(refused.status.code(), Some(2), "{flag} {value}");
        assert!(stderr_of(&refused).contains(says), "{}", stderr_of(&refused));
    }
}

#[tokio::test]
async fn a_partial_restore_reads_only_its_tables_byte_ranges() {
    // Given a backup whose Booking section is damaged on disk
    let database = TestDatabase::create("cli_ranges").await;
    let client = database.client().await;
    load_carwash(&client, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let created = cli.json(&["create"]).await;
    let id = created["id"].as_str().unwrap();
    let section = |name: &str| {
        created["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    let booking = section("Booking");
    let object = dir.path().join(format!("{id}.backup"));
    let mut bytes = std::fs::read(&object).unwrap();
    let inside = booking["offset"].as_u64().unwrap() + booking["length"].as_u64().unwrap() / 2;
    bytes[inside as usize] ^= 0x10;
    std::fs::write(&object, &bytes).unwrap();
    let expected = table_digests(&client).await;
    client.batch_execute("DELETE FROM \"Holiday\"").await.unwrap();

    // When only Holiday is restored
    cli.json(&[
        "restore",
        "--backup-id",
        id,
        "--tables",
        "Holiday",
        "--yes",
        "--no-safety-backup",
    ])
    .await;
    // Then it succeeds, so the damaged range was never read
    let restored = table_digests(&client).await;
    assert_eq!(restored["public.Holiday"], expected["public.Holiday"]);
    // And the damage is real: restoring Booking fails on it
    let booking_restore = cli
        .run(&[
            "restore",
            "--backup-id",
            id,
            "--tables",
            "Booking",
            "--yes",
            "--no-safety-backup",
        ])
        .await;
    assert!(!booking_restore.status.success());
    assert!(
        cause_of(&booking_restore).contains("integrity check failed"),
        "{}",
        stderr_of(&booking_restore)
    );
}

#[tokio::test]
async fn a_failed_backup_publishes_nothing_and_reports_the_failure() {
    let database = TestDatabase::create("cli_fail").await;
    load_carwash(&database.client().await, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(vec![]).await;

    // An unknown table fails after the upload has started; a bad URL before
    let mut cli = Backupctl::new(&database, dir.path());
    cli.webhook = Some((receiver.url.clone(), String::new()));
    let unknown_table = cli.run(&["create", "--tables", "Nope"]).await;
    assert!(!unknown_table.status.success());
    assert!(
        cause_of(&unknown_table).contains("no table named Nope"),
        "{}",
        stderr_of(&unknown_table)
    );
    cli.database_url = format!("{}_missing", database.url);
    let unreachable = cli.run(&["create"]).await;
    assert!(!unreachable.status.success());
    assert!(
        cause_of(&unreachable).contains("could not connect to PostgreSQL"),
        "{}",
        stderr_of(&unreachable)
    );

    // Nothing was published; the failure was notified and audited
    let files = files_in(dir.path());
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".json") && !f.contains("metadata")),
        "{files:?}"
    );
    assert_eq!(cli.json(&["list"]).await, serde_json::json!([]));
    let failures: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.body["type"] == "backup_failure")
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(failures[0].body["error"].as_str().unwrap().contains("Nope"));
    assert!(
        !failures[0].headers.contains_key("x-backup-signature"),
        "unsigned without a secret"
    );
    let audit = audit_records(dir.path());
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["operation"] == "create" && r["outcome"] == "failure")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_failing_webhook_is_retried_and_never_fails_the_backup() {
    let database = TestDatabase::create("cli_hook").await;
    load_carwash(&database.client().await, 100).await;
    let dir = tempfile::tempdir().unwrap();

    // A webhook that fails twice with 503, then accepts
    let flaky = WebhookReceiver::start(vec![503, 503]).await;
    let mut cli = Backupctl::new(&database, dir.path());
    cli.webhook = Some((flaky.url.clone(), "s".into()));
    let created = cli.run(&["create"]).await;
    assert!(created.status.success(), "{}", stderr_of(&created));
    assert_eq!(
        flaky.events(),
        ["backup_created", "backup_created", "backup_created"]
    );

    // A webhook nobody listens on: the backup still succeeds
    cli.webhook = Some(("http://127.0.0.1:9/unreachable".into(), "s".into()));
    let created = cli.run(&["create"]).await;
    assert!(created.status.success(), "{}", stderr_of(&created));
    assert!(stderr_of(&created).contains("webhook notification dropped"));
}

#[tokio::test]
async fn keys_generate_prints_a_fresh_64_hex_key() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_backupctl"))
        .args(["keys", "generate"])
        .output()
        .await
        .unwrap();
    let first = String::from_utf8(output.stdout).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_backupctl"))
        .args(["keys", "generate"])
        .output()
        .await
        .unwrap();
    let second = String::from_utf8(output.stdout).unwrap();
    assert_eq!(first.trim().len(), 64);
    assert!(first.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(first, second);
}

async fn create_list_verify_restore(cli: &Backupctl, client: &tokio_postgres::Client) -> Value {
    let original = table_digests(client).await;
    let created = cli.json(&["create", "--reason", "cloud"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(cli.json(&["list"]).await[0]["id"], id.as_str());
    assert_eq!(
        cli.json(&["verify", "--backup-id", &id, "--depth", "full"]).await["status"],
        "passed"
    );
    client
        .batch_execute("UPDATE \"Booking\" SET \"notes\" = 'lost'; DELETE FROM \"Holiday\";")
        .await
        .unwrap();
    cli.json(&["restore", "--backup-id", &id, "--yes", "--no-safety-backup"])
        .await;
    assert_eq!(table_digests(client).await, original);
    // a partial restore reads only its tables' byte ranges, and works remotely too
    cli.json(&[
        "restore",
        "--backup-id",
        &id,
        "--tables",
        "Holiday",
        "--yes",
        "--no-safety-backup",
    ])
    .await;
    created
}

#[tokio::test]
async fn backupctl_on_s3_round_trips_and_boto3_sees_the_objects() {
    let database = TestDatabase::create("cli_s3").await;
    let client = database.client().await;
    load_carwash(&client, 2_000).await;
    let (_, bucket) = s3_test_bucket("cli", false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = cloud_env(&[
        ("BACKUP_STORAGE_TYPE", "s3"),
        ("S3_BACKUP_BUCKET", &bucket),
        ("S3_SSE", "AES256"),
    ]);

    let created = create_list_verify_restore(&cli, &client).await;
    let id = created["id"].as_str().unwrap();

    // Checked with boto3, a client we did not write
    let seen = python_json(
        r#"
import boto3, hashlib, json, sys
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:5000", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
bucket, backup_id = sys.argv[1], sys.argv[2]
keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
body = s3.get_object(Bucket=bucket, Key=f"backups/{backup_id}.backup")["Body"].read()
meta = json.loads(s3.get_object(Bucket=bucket, Key=f"metadata/{backup_id}.json")["Body"].read())
head = s3.head_object(Bucket=bucket, Key=f"backups/{backup_id}.backup")
print(json.dumps({"keys": keys, "sha256": hashlib.sha256(body).hexdigest(), "checksum": meta["checksum"],
                  "size": len(body), "sse": head.get("ServerSideEncryption"),
                  "uploads": len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))}))
"#,
        &[&bucket, id],
    )
    .await;
    assert_eq!(seen["sha256"], created["checksum"]);
    assert_eq!(seen["checksum"], created["checksum"]);
    assert_eq!(seen["size"], created["sizeBytes"]);
    assert_eq!(seen["sse"], "AES256");
    assert_eq!(seen["uploads"], 0);
    let keys: Vec<&str> = seen["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(keys.contains(&format!("backups/{id}.backup").as_str()));
    assert!(keys.contains(&format!("verification/{id}.json").as_str()));
    assert!(keys.iter().any(|k| k.starts_with("audit/")));
}

#[tokio::test]
async fn backupctl_on_azure_round_trips_and_the_azure_sdk_sees_the_blobs() {
    let database = TestDatabase::create("cli_az").await;
    let client = database.client().await;
    load_carwash(&client, 2_000).await;
    let settings = azure_test_settings("cli");
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.global_args = vec!["--storage".into(), "azure".into()];
    cli.extra_env = cloud_env(&[
        ("AZURE_STORAGE_ACCOUNT", &settings.account),
        ("AZURE_STORAGE_KEY", &settings.access_key),
        ("AZURE_CONTAINER", &settings.container),
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURE_PREFIX", &settings.prefix),
    ]);

    let created = create_list_verify_restore(&cli, &client).await;
    let id = created["id"].as_str().unwrap();

    // Checked with the Azure SDK for Python, a client we did not write
    let seen = python_json(
        r#"
import hashlib, json, sys
from azure.storage.blob import BlobServiceClient
account, key, container, prefix, backup_id = sys.argv[1:6]
conn = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:10000/{account};")
box = BlobServiceClient.from_connection_string(conn).get_container_client(container)
names = sorted(b.name for b in box.list_blobs(name_starts_with=prefix + "/"))
body = box.download_blob(f"{prefix}/backups/{backup_id}.backup").readall()
meta = json.loads(box.download_blob(f"{prefix}/metadata/{backup_id}.json").readall())
print(json.dumps({"names": names, "sha256": hashlib.sha256(body).hexdigest(), "checksum": meta["checksum"]}))
"#,
        &[
            &settings.account,
            &settings.access_key,
            &settings.container,
            &settings.prefix,
            id,
        ],
    )
    .await;
    assert_eq!(seen["sha256"], created["checksum"]);
    assert_eq!(seen["checksum"], created["checksum"]);
    let names: Vec<&str> = seen["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&format!("{}/backups/{id}.backup", settings.prefix).as_str()),
        "{names:?}"
    );
}

/// Runs `backupctl` inside a pseudo-terminal (`script`), as a person at a
/// terminal runs it; returns everything the terminal was sent.
fn on_a_terminal(cli: &Backupctl, args: &[&str]) -> String {
    let (succeeded, seen) = at_the_terminal(cli, args, &[]);
    assert!(succeeded, "{args:?} failed on a terminal: {seen}");
    seen
}

/// Runs backupctl under script(1), so stderr is a terminal; returns whether
/// it succeeded and everything the terminal received.
fn at_the_terminal(cli: &Backupctl, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let command = std::iter::once(env!("CARGO_BIN_EXE_backupctl"))
        .chain(args.iter().copied())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let output = std::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm-256color")
        .env("DATABASE_URL", &cli.database_url)
        .env("BACKUP_DIR", &cli.backup_dir)
        .env("BACKUP_ENCRYPTION_KEY", &cli.key)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Each redraw the terminal received, without its escape sequences.
fn drawn_lines(seen: &str) -> Vec<String> {
    seen.split(['\r', '\n'])
        .map(without_escapes)
        .filter(|line| !line.trim().is_empty())
        .collect()
}

fn without_escapes(text: &str) -> String {
    let mut plain = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters… final letter
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// What is left on the screen at the end: a small terminal that knows what
/// indicatif sends (carriage return, erase line, cursor up).
fn final_screen(seen: &str) -> Vec<String> {
    let mut screen: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut column) = (0usize, 0usize);
    let mut chars = seen.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => column = 0,
            '\n' => {
                row += 1;
                column = 0;
                if screen.len() <= row {
                    screen.push(Vec::new());
                }
            }
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    continue;
                }
                chars.next();
                let mut parameter = String::new();
                let mut command = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        command = c;
                        break;
                    }
                    parameter.push(c);
                }
                let n: usize = parameter.parse().unwrap_or(1);
                match (command, parameter.as_str()) {
                    ('K', "2") => screen[row].clear(),
                    ('K', _) => screen[row].truncate(column),
                    ('A', _) => row = row.saturating_sub(n),
                    ('J', _) => {
                        screen[row].truncate(column);
                        screen.truncate(row + 1);
                    }
                    _ => {}
                }
            }
            c => {
                let line = &mut screen[row];
                while line.len() < column {
                    line.push(' ');
                }
                if column < line.len() {
                    line[column] = c;
                } else {
                    line.push(c);
                }
                column += 1;
            }
        }
    }
    screen
        .into_iter()
        .map(|line| line.into_iter().collect::<String>())
        .filter(|line| !line.trim().is_empty())
        .collect()
}

/// A progress bar or spinner: indicatif's spinner characters, a rate, or the empty `0/0` bar.
fn is_a_bar(line: &str) -> bool {
    line.chars().any(|c| ('\u{2800}'..='\u{28ff}').contains(&c))
        || line.contains("B/s")
        || line.contains("0/0")
}

#[tokio::test]
async fn a_person_at_a_terminal_sees_progress_for_create_and_restore() {
    // Given a database big enough for the bar to be drawn (it ticks every 200 ms)
    let database = TestDatabase::create("cli_terminal").await;
    load_carwash(&database.client().await, 150_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());

    // When a backup is made at a terminal
    let create = on_a_terminal(&cli, &["create"]);
    // Then a bar names the table being exported and its rows and rate
    let bar_lines = |seen: &str| -> Vec<String> {
        seen.split(['\r', '\n'])
            .filter(|line| line.contains("Booking") && line.contains(" rows") && line.contains("/s"))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        !bar_lines(&create).is_empty(),
        "no progress bar for create: {create:?}"
    );
    assert!(create.contains("created backup-"), "{create:?}");

    // When it is restored in place at a terminal
    let restore = on_a_terminal(
        &cli,
        &["restore", "--backup-id", "latest", "--yes", "--no-safety-backup"],
    );
    // Then the load shows a bar, and the steps after it are named
    assert!(
        !bar_lines(&restore).is_empty(),
        "no progress bar for restore: {restore:?}"
    );
    assert!(restore.contains("checking foreign keys"), "{restore:?}");
    assert!(restore.contains("restored backup-"), "{restore:?}");
}

#[tokio::test]
async fn a_backup_that_would_lose_objects_is_refused_by_name_until_the_loss_is_accepted() {
    // Given a database with a comment in a catalog the capture does not
    // know (a kind a future server might add: a comment on a column
    // default, written into pg_description by a superuser)
    let database = TestDatabase::create("cli_loss").await;
    let client = database.client().await;
    load_carwash(&client, 50).await;
    client
        .batch_execute(
            "CREATE TABLE noted (id int, note text DEFAULT 'none'); \
             INSERT INTO pg_description (objoid, classoid, objsubid, description) \
             SELECT oid, 'pg_attrdef'::regclass, 0, 'synthetic' FROM pg_attrdef WHERE adrelid = 'noted'::regclass",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    // When a backup is taken, Then it fails naming the object and the setting
    let refused = cli.run(&["create"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    let cause = cause_of(&refused);
    assert!(
        cause.contains("comment on default value for column note of table public.noted"),
        "{cause}"
    );
    assert!(cause.contains("--allow-schema-loss comment"), "{cause}");
    assert_eq!(
        cli.json(&["list"]).await,
        serde_json::json!([]),
        "nothing published"
    );
    // When the loss is accepted, Then the backup is taken and says what it lacks
    let created = cli.json(&["create", "--allow-schema-loss", "comment"]).await;
    assert_eq!(created["acceptedSchemaLoss"][0]["kind"], "comment", "{created}");
    let listed = cli.run(&["list"]).await;
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("lacks (accepted): comment"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    // And an unknown kind is a usage error
    let unknown = cli.run(&["create", "--allow-schema-loss", "comments"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr_of(&unknown).contains("is not a kind of schema loss"),
        "{}",
        stderr_of(&unknown)
    );
}

#[tokio::test]
async fn a_restore_refuses_an_object_or_metadata_that_is_not_the_backup_asked_for() {
    // Given two backups, A then B, of a database that changed in between
    let database = TestDatabase::create("cli_bound").await;
    let client = database.client().await;
    load_carwash(&client, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let a = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    client
        .batch_execute("UPDATE \"User\" SET \"name\" = 'after A'")
        .await
        .unwrap();
    let b = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    client.batch_execute("DELETE FROM \"Holiday\"").await.unwrap();
    let current = table_digests(&client).await;
    let object = |id: &str| dir.path().join(format!("{id}.backup"));
    let metadata = |id: &str| dir.path().join(format!("metadata/{id}.json"));
    let original_a = std::fs::read(object(&a)).unwrap();

    // When B's object is copied over A's, and A is restored
    std::fs::copy(object(&b), object(&a)).unwrap();
    let swapped = cli
        .run(&["restore", "--backup-id", &a, "--yes", "--no-safety-backup"])
        .await;
    // Then it is refused, naming both, and the database is untouched
    assert!(!swapped.status.success());
    let cause = cause_of(&swapped);
    assert!(
        cause.contains(&format!(
            "the stored object for backup {a} is not that backup (it holds {b})"
        )),
        "{cause}"
    );
    assert_eq!(table_digests(&client).await, current);

    // When instead B's metadata is copied over A's
    std::fs::write(object(&a), &original_a).unwrap();
    std::fs::copy(metadata(&b), metadata(&a)).unwrap();
    // Then restoring A, or the latest, is refused as moved metadata
    for selector in [a.as_str(), "latest"] {
        let moved = cli
            .run(&["restore", "--backup-id", selector, "--yes", "--no-safety-backup"])
            .await;
        assert!(!moved.status.success(), "{selector}");
        assert!(
            cause_of(&moved).contains(&format!("describes backup {b}, not the backup its name says")),
            "{selector}: {}",
            stderr_of(&moved)
        );
    }
    assert_eq!(table_digests(&client).await, current);
}

#[tokio::test]
async fn the_create_bar_counts_rows_and_bytes_while_a_table_streams() {
    // Given a table of at least 200 MB (as the issue asks: a table that
    // takes a while to export), on one connection (so a table is one piece
    // and only streaming can move the count mid-table)
    let database = TestDatabase::create("cli_terminal_moves").await;
    let client = database.client().await;
    load_carwash(&client, 1_200_000).await;
    let table_bytes: i64 = client
        .query_one("SELECT pg_table_size('\"Booking\"')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(table_bytes >= 200_000_000, "Booking is {table_bytes} bytes");
    let bookings: i64 = client
        .query_one("SELECT count(*) FROM \"Booking\"", &[])
        .await
        .unwrap()
        .get(0);
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());

    // When a backup is made at a terminal
    let (succeeded, seen) = at_the_terminal(&cli, &["create"], &[("BACKUP_EXPORT_CONNECTIONS", "1")]);
    assert!(succeeded, "{seen:?}");

    // Then, before the table ends, the bar shows some of its rows and bytes
    let rows_of = |line: &str| -> Option<i64> {
        let before = line.split(" rows").next()?;
        before.rsplit(' ').next()?.parse().ok()
    };
    let booking_lines: Vec<String> = drawn_lines(&seen)
        .into_iter()
        .filter(|line| line.contains("Booking") && line.contains(" rows"))
        .collect();
    let midway: Vec<&String> = booking_lines
        .iter()
        .filter(|line| rows_of(line).is_some_and(|rows| rows > 0 && rows < bookings))
        .collect();
    assert!(
        !midway.is_empty(),
        "no bar drawn mid-table (of {bookings} rows): {booking_lines:#?}"
    );
    let line = midway[0];
    assert!(!line.contains(" 0 B/"), "bytes move with the rows: {line}");
    // And it says which table of how many, and how far the whole run is
    assert!(line.contains("table ") && line.contains('%'), "{line}");
    assert!(line.contains("ETA"), "{line}");
    // And nothing is left on the screen but the result
    let screen = final_screen(&seen);
    assert!(!screen.iter().any(|line| is_a_bar(line)), "{screen:#?}");
    assert!(seen.contains("created backup-"), "{seen:?}");
}

#[tokio::test]
async fn commands_with_nothing_to_show_draw_no_bar_and_an_error_leaves_none() {
    // Given a backup
    let database = TestDatabase::create("cli_terminal_quiet").await;
    let client = database.client().await;
    load_carwash(&client, 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let id = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // When it is listed and quickly verified at a terminal
    for args in [
        vec!["list"],
        vec!["verify", "--backup-id", "latest", "--depth", "quick"],
    ] {
        let (succeeded, seen) = at_the_terminal(&cli, &args, &[]);
        assert!(succeeded, "{args:?}: {seen:?}");
        // Then no bar is ever drawn
        let bars: Vec<String> = drawn_lines(&seen).into_iter().filter(|l| is_a_bar(l)).collect();
        assert!(bars.is_empty(), "{args:?} drew a bar: {bars:#?}");
    }

    // When a restore fails in the middle of loading (a flipped bit)
    let object = dir.path().join(format!("{id}.backup"));
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&object, &bytes).unwrap();
    let (succeeded, seen) = at_the_terminal(
        &cli,
        &["restore", "--backup-id", &id, "--yes", "--no-safety-backup"],
        &[],
    );
    // Then it fails, and what is left on the screen is the error, no bar
    assert!(!succeeded, "{seen:?}");
    let screen = final_screen(&seen);
    assert!(!screen.iter().any(|line| is_a_bar(line)), "{screen:#?}\n{seen:?}");
    assert!(!drawn_lines(&seen).iter().any(|l| l.contains("0/0")), "{seen:?}");
    assert!(seen.contains("integrity check failed"), "{seen:?}");
}

#[tokio::test]
async fn the_safety_backup_before_an_in_place_restore_is_shown_under_its_own_name() {
    // Given a backup of a database
    let database = TestDatabase::create("cli_terminal_safety").await;
    load_carwash(&database.client().await, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    cli.json(&["create"]).await;

    // When it is restored in place at a terminal, with a safety backup first
    let seen = on_a_terminal(&cli, &["restore", "--backup-id", "latest", "--yes"]);

    // Then the safety backup is named as such while it runs
    let lines = drawn_lines(&seen);
    let step = format!("safety backup of {}", database.name);
    assert!(lines.iter().any(|l| l.contains(&step)), "{lines:#?}");
    // And none of its tables is shown as if it were the restore's
    let exported: Vec<&String> = lines.iter().filter(|l| l.contains(" table ")).collect();
    assert!(
        exported.iter().all(|l| l.contains(&step)),
        "an unlabelled export line: {exported:#?}"
    );
    assert!(seen.contains("restored backup-"), "{seen:?}");
}

#[tokio::test]
async fn after_the_last_rows_load_the_restore_bar_names_the_index_builds_instead_of_sitting_full() {
    // Given a backup of tables that all have keys and indexes
    let database = TestDatabase::create("cli_terminal_after_load").await;
    let client = database.client().await;
    load_carwash(&client, 5_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    assert!(cli.run(&["create"]).await.status.success());
    let target = TestDatabase::create("cli_terminal_after_load_target").await;

    // When it is restored into an empty database at a terminal
    let seen = on_a_terminal(
        &cli,
        &[
            "restore",
            "--backup-id",
            "latest",
            "--target-url",
            &target.url,
            "--yes",
        ],
    );

    // Then once every row is in, the terminal says what the wait is for
    let lines = drawn_lines(&seen);
    let after_load = lines
        .iter()
        .position(|line| line.contains("all rows loaded; adding keys, indexes and foreign keys ("));
    assert!(after_load.is_some(), "{lines:#?}");
    // And no byte bar is drawn after it
    assert!(
        !lines[after_load.unwrap_or(0)..]
            .iter()
            .any(|line| line.contains("all tables") && line.contains("B/")),
        "{lines:#?}"
    );
    assert!(seen.contains("restored backup-"), "{seen:?}");
}
