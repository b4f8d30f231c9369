//! The erasure ledger holds against someone who can write to the backup
//! store but holds neither the ledger head nor the current key (issue #26
//! items 1, 3 and 4): a deleted, overwritten or copied-in record, or one
//! sealed under a key that was rotated out, refuses the restore by name
//! instead of bringing an erased person back; a junk object can be set
//! aside, audited, without bricking every restore; a retired key is named
//! as the ledger's, not as the backup's.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};

use integration_tests::*;
use serde_json::Value;
use support::*;

const KEY_ONE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_TWO: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("erasures").join(format!("{id}.json"))
}

/// Records the erasure of one booking; returns the record's id.
async fn erase_booking(cli: &Backupctl, booking: u32) -> String {
    let recorded = cli
        .json(&[
            "erase",
            "--table",
            "Booking",
            "--key",
            &format!("id={booking}"),
            "--reason",
            "GDPR request",
        ])
        .await;
    recorded["id"].as_str().unwrap().to_owned()
}

async fn bookings(database: &TestDatabase) -> i64 {
    database
        .client()
        .await
        .query_one("SELECT count(*) FROM \"Booking\"", &[])
        .await
        .unwrap()
        .get(0)
}

async fn restore(cli: &Backupctl, id: &str) -> std::process::Output {
    cli.run(&["restore", "--backup-id", id, "--yes", "--no-safety-backup"])
        .await
}

/// The restore is refused with `expected` in its cause, and changes nothing.
async fn refused(cli: &Backupctl, database: &TestDatabase, id: &str, expected: &[&str]) -> String {
    let before = table_digests(&database.client().await).await;
    let output = restore(cli, id).await;
    assert!(
        !output.status.success(),
        "the restore passed: {}",
        stderr_of(&output)
    );
    let cause = cause_of(&output);
    for part in expected {
        assert!(cause.contains(part), "{part:?} not in: {}", stderr_of(&output));
    }
    assert_eq!(table_digests(&database.client().await).await, before);
    cause
}

#[tokio::test]
async fn a_deleted_overwritten_or_junk_erasure_record_is_noticed_and_junk_can_be_set_aside() {
    // Given a backup, a ledger head kept outside the backup store, and three erasures
    let database = TestDatabase::create("ledger_chain").await;
    load_carwash(&database.client().await, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let head_dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let head = head_dir.path().join("ledger-head.json");
    cli.extra_env = vec![("BACKUP_LEDGER_HEAD_FILE".into(), head.display().to_string())];
    let backup = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let total = bookings(&database).await;
    let first = erase_booking(&cli, 1).await;
    let second = erase_booking(&cli, 2).await;
    let third = erase_booking(&cli, 3).await;
    assert!(
        head.exists(),
        "the head is written beside the key, not in the store"
    );
    let saved: Vec<Vec<u8>> = [&first, &second, &third]
        .iter()
        .map(|id| std::fs::read(record_path(dir.path(), id)).unwrap())
        .collect();

    // When the newest record is deleted (a DeleteObject, allowed even under Object Lock)
    std::fs::remove_file(record_path(dir.path(), &third)).unwrap();
    // Then the restore is refused: the ledger is shorter than its head says
    refused(&cli, &database, &backup, &["erasure ledger", "2 records", "3"]).await;
    std::fs::write(record_path(dir.path(), &third), &saved[2]).unwrap();

    // When a record in the middle is deleted: refused, naming what is missing
    std::fs::remove_file(record_path(dir.path(), &second)).unwrap();
    refused(&cli, &database, &backup, &["erasure ledger", "record 2"]).await;
    std::fs::write(record_path(dir.path(), &second), &saved[1]).unwrap();

    // When another record is copied over the second's key: refused, naming the key
    std::fs::write(record_path(dir.path(), &second), &saved[0]).unwrap();
    refused(&cli, &database, &backup, &[&format!("erasures/{second}.json")]).await;
    std::fs::write(record_path(dir.path(), &second), &saved[1]).unwrap();

    // When junk lands under erasures/: refused, naming it and the way out
    std::fs::write(dir.path().join("erasures/junk.json"), b"{\"not\": \"a record\"}").unwrap();
    refused(
        &cli,
        &database,
        &backup,
        &["erasures/junk.json", "ledger set-aside"],
    )
    .await;

    // Then a real record cannot be set aside
    let real = format!("erasures/{first}.json");
    let denied = cli
        .run(&[
            "ledger",
            "set-aside",
            &real,
            "--reason",
            "trying to bring someone back",
        ])
        .await;
    assert!(!denied.status.success());
    assert!(cause_of(&denied).contains("authentic"), "{}", stderr_of(&denied));

    // And the junk can: audited with who and why, and every restore works again
    let set_aside = cli
        .json(&[
            "ledger",
            "set-aside",
            "erasures/junk.json",
            "--reason",
            "INC-7 junk object",
        ])
        .await;
    assert_eq!(set_aside["setAside"][0], "erasures/junk.json", "{set_aside}");
    let audit = audit_records(dir.path());
    let attempts: Vec<&Value> = audit
        .iter()
        .filter(|r| r["operation"] == "ledger-set-aside")
        .collect();
    assert_eq!(attempts.len(), 2, "the refused attempt is audited too");
    let done = attempts
        .iter()
        .find(|r| r["outcome"] == "success")
        .expect("the set-aside is audited");
    assert_eq!(done["reason"], "INC-7 junk object");
    assert_eq!(done["details"]["setAside"][0]["key"], "erasures/junk.json");
    let output = restore(&cli, &backup).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(bookings(&database).await, total - 3);

    // And junk that changes after being set aside is looked at again
    std::fs::write(dir.path().join("erasures/junk.json"), b"{\"other\": 1}").unwrap();
    refused(&cli, &database, &backup, &["erasures/junk.json"]).await;
}

#[tokio::test]
async fn a_record_copied_from_another_repository_sharing_the_keyring_is_refused() {
    // Given two repositories with one keyring (prod and staging), a backup in the first
    let database = TestDatabase::create("ledger_repo").await;
    load_carwash(&database.client().await, 20).await;
    let (prod_dir, staging_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prod = Backupctl::new(&database, prod_dir.path());
    let staging = Backupctl::new(&database, staging_dir.path());
    let backup = prod.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    staging.json(&["create"]).await;
    erase_booking(&prod, 1).await;
    // (and a repository identity each, created once and kept)
    let identity: Value =
        serde_json::from_slice(&std::fs::read(prod_dir.path().join("repository.json")).unwrap()).unwrap();
    assert_eq!(identity["repositoryId"].as_str().unwrap().len(), 32, "{identity}");

    // When an erasure recorded in staging is copied into prod's ledger
    let foreign = erase_booking(&staging, 2).await;
    std::fs::copy(
        record_path(staging_dir.path(), &foreign),
        record_path(prod_dir.path(), &foreign),
    )
    .unwrap();

    // Then prod's restore refuses it instead of deleting booking 2
    refused(&prod, &database, &backup, &[&format!("erasures/{foreign}.json")]).await;

    // And, the copy removed, prod's ledger goes on under its own repository id
    std::fs::remove_file(record_path(prod_dir.path(), &foreign)).unwrap();
    erase_booking(&prod, 3).await;
    let again: Value =
        serde_json::from_slice(&std::fs::read(prod_dir.path().join("repository.json")).unwrap()).unwrap();
    assert_eq!(again["repositoryId"], identity["repositoryId"]);
    let output = restore(&prod, &backup).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
}

#[tokio::test]
async fn a_ledger_from_before_the_chain_is_adopted_and_then_held_to_it() {
    // Given a repository whose ledger was written before chaining (the
    // fixture is a record the previous release wrote with the test key)
    let database = TestDatabase::create("ledger_migrate").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let head_dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = vec![(
        "BACKUP_LEDGER_HEAD_FILE".into(),
        head_dir.path().join("head.json").display().to_string(),
    )];
    let backup = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-erasure.json");
    let legacy: Value = serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
    let legacy_id = legacy["id"].as_str().unwrap().to_owned();
    std::fs::create_dir_all(dir.path().join("erasures")).unwrap();
    std::fs::copy(&fixture, record_path(dir.path(), &legacy_id)).unwrap();

    // When the first erasure after the upgrade is recorded, and the backup restored
    erase_booking(&cli, 2).await;
    let restored = cli
        .json(&["restore", "--backup-id", &backup, "--yes", "--no-safety-backup"])
        .await;
    // Then the old record still applies, beside the new one
    let applied: Vec<&str> = restored["erased"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(applied.contains(&legacy_id.as_str()), "{restored}");
    assert_eq!(applied.len(), 2, "{restored}");

    // And once adopted, deleting it is noticed like any other record
    std::fs::remove_file(record_path(dir.path(), &legacy_id)).unwrap();
    refused(&cli, &database, &backup, &["erasure ledger", "before the chain"]).await;
}

#[tokio::test]
async fn a_record_under_a_rotated_out_key_is_refused_and_a_retired_key_is_named_as_the_ledgers() {
    let ring_one = format!(r#"{{"current": "k1", "keys": {{"k1": "{KEY_ONE}"}}}}"#);
    let ring_two = format!(r#"{{"current": "k2", "keys": {{"k1": "{KEY_ONE}", "k2": "{KEY_TWO}"}}}}"#);
    let database = TestDatabase::create("ledger_rotation").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let head_dir = tempfile::tempdir().unwrap();
    let head = (
        "BACKUP_LEDGER_HEAD_FILE".to_owned(),
        head_dir.path().join("head.json").display().to_string(),
    );
    let mut operator = Backupctl::new(&database, dir.path());
    operator.extra_env = vec![head.clone()];

    // Given an erasure under k1, then a rotation to k2 and a backup under it
    operator.key = ring_one.clone();
    erase_booking(&operator, 1).await;
    operator.key = ring_two.clone();
    let backup = operator.json(&["create"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sealed_head = || -> Value {
        serde_json::from_slice(&std::fs::read(head_dir.path().join("head.json")).unwrap()).unwrap()
    };
    assert_eq!(sealed_head()["keyId"], "k1");
    // (the first restore after the rotation re-seals the head under k2, k2 current from record 2 on)
    let output = restore(&operator, &backup).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    let head_now = sealed_head();
    assert_eq!(head_now["keyId"], "k2", "{head_now}");
    assert_eq!(
        head_now["epochs"],
        serde_json::json!([{"keyId": "k1", "fromSeq": 1}, {"keyId": "k2", "fromSeq": 2}])
    );

    // When someone holding only the old key k1 and the bucket (not the head) appends a record
    let mut holder_of_old_key = Backupctl::new(&database, dir.path());
    holder_of_old_key.key = ring_one.clone();
    let forged = erase_booking(&holder_of_old_key, 2).await;

    // Then the restore refuses it: k1 was not the current key when it was added
    refused(
        &operator,
        &database,
        &backup,
        &[&format!("erasures/{forged}.json"), "k1", "k2"],
    )
    .await;
    std::fs::remove_file(record_path(dir.path(), &forged)).unwrap();
    let output = restore(&operator, &backup).await;
    assert!(output.status.success(), "{}", stderr_of(&output));

    // When k1 is retired from the keyring while the ledger still holds a record under it
    operator.key = format!(r#"{{"current": "k2", "keys": {{"k2": "{KEY_TWO}"}}}}"#);
    let cause = refused(&operator, &database, &backup, &["erasure ledger record", "k1"]).await;
    // Then the message is about the ledger, not about the backup (which k2 opens)
    assert!(!cause.contains("this backup was encrypted"), "{cause}");
}
