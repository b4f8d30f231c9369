//! Someone who can write metadata documents but holds no key cannot make a
//! restore load an older backup than the one asked for: a foreign `keyId`,
//! a moved `timestamp` and an embedded `verification` are each refused or
//! passed over with a named reason (issue #26 item 2). Run as a process on
//! local storage, the documents rewritten behind the tool's back.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;

use integration_tests::*;
use serde_json::{Value, json};
use support::*;

/// Two backups: last month's data (`old`) and today's (`new`), with the
/// database's state at each.
struct TwoBackups {
    cli: Backupctl,
    client: tokio_postgres::Client,
    old_id: String,
    new_id: String,
    old_state: std::collections::BTreeMap<String, (i64, String)>,
    new_state: std::collections::BTreeMap<String, (i64, String)>,
    _database: TestDatabase,
    dir: tempfile::TempDir,
}

impl TwoBackups {
    async fn take(name: &str) -> Self {
        let database = TestDatabase::create(name).await;
        let client = database.client().await;
        load_carwash(&client, 100).await;
        let dir = tempfile::tempdir().unwrap();
        let cli = Backupctl::new(&database, dir.path());
        let old_state = table_digests(&client).await;
        let old = cli.json(&["create"]).await;
        client.batch_execute("DELETE FROM \"Testimonial\"").await.unwrap();
        let new_state = table_digests(&client).await;
        let new = cli.json(&["create"]).await;
        Self {
            cli,
            client,
            old_id: old["id"].as_str().unwrap().to_owned(),
            new_id: new["id"].as_str().unwrap().to_owned(),
            old_state,
            new_state,
            _database: database,
            dir,
        }
    }

    fn document_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("metadata/{id}.json"))
    }

    fn document(&self, id: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.document_path(id)).unwrap()).unwrap()
    }

    fn write(&self, id: &str, document: &Value) {
        std::fs::write(
            self.document_path(id),
            serde_json::to_vec_pretty(document).unwrap(),
        )
        .unwrap();
    }

    /// The new backup's timestamp plus an hour: where a writer moves the
    /// old one to make it the newest.
    fn after_new(&self) -> String {
        let new_at =
            chrono::DateTime::parse_from_rfc3339(self.document(&self.new_id)["timestamp"].as_str().unwrap())
                .unwrap();
        (new_at + chrono::Duration::hours(1))
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Changes the data, then restores `selector` in place (the process,
    /// failed or not).
    async fn restore(&self, selector: &str) -> std::process::Output {
        self.client
            .batch_execute("UPDATE \"Service\" SET \"price\" = 1")
            .await
            .unwrap();
        self.cli
            .run(&[
                "restore",
                "--backup-id",
                selector,
                "--yes",
                "--no-safety-backup",
                "--json",
            ])
            .await
    }

    fn listed(&self, listed: &Value, id: &str) -> Value {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap()
            .clone()
    }
}

fn stdout_json(output: &std::process::Output) -> Value {
    assert!(output.status.success(), "{}", stderr_of(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn a_foreign_key_id_in_the_metadata_does_not_make_restore_latest_load_an_older_backup() {
    // Given last month's backup and today's, and a writer without the key
    let backups = TwoBackups::take("meta_downgrade_key").await;
    let (old_id, new_id) = (backups.old_id.as_str(), backups.new_id.as_str());
    let sealed = backups.document(old_id);

    // When the writer names a key the keyring does not hold in last month's
    // metadata (so its MAC is not checked) and moves it after today's
    let mut forged = sealed.clone();
    forged["keyId"] = json!("attacker");
    forged["timestamp"] = json!(backups.after_new());
    backups.write(old_id, &forged);

    // Then `restore latest` loads today's backup and says it passed the forged one over, and why
    let restored = stdout_json(&backups.restore("latest").await);
    assert_eq!(restored["backupId"], new_id, "{restored}");
    let selection = restored["selection"].as_str().unwrap_or_default();
    assert!(
        selection.contains(old_id) && selection.contains("passed over"),
        "{restored}"
    );
    assert_eq!(table_digests(&backups.client).await, backups.new_state);

    // When only the key id is foreign (the timestamp left as it was)
    let mut foreign = sealed.clone();
    foreign["keyId"] = json!("attacker");
    backups.write(old_id, &foreign);

    // Then list marks it, `latest` passes it over by name, and restoring it by id refuses it,
    // naming both key ids: the object's header is sealed with the real one
    let listed = backups.cli.json(&["list"]).await;
    assert_eq!(
        backups.listed(&listed, old_id)["metadataIntegrity"],
        "unknown-key",
        "{listed}"
    );
    assert_eq!(
        backups.listed(&listed, new_id)["metadataIntegrity"],
        "authentic",
        "{listed}"
    );
    let text = backups.cli.run(&["list"]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("METADATA KEY NOT IN KEYRING"));
    let changed = {
        let refused = backups.restore(old_id).await;
        assert!(
            !refused.status.success(),
            "{}",
            String::from_utf8_lossy(&refused.stdout)
        );
        let cause = cause_of(&refused);
        assert!(
            cause.contains("was altered")
                && cause.contains("\"attacker\"")
                && cause.contains("sealed with key id"),
            "{}",
            stderr_of(&refused)
        );
        table_digests(&backups.client).await
    };
    assert_ne!(changed, backups.old_state, "nothing was restored");
    assert_ne!(changed, backups.new_state, "nothing was restored");

    // And full verification fails it the same way (a quick one only reads the bytes)
    let verified = backups
        .cli
        .run(&["verify", "--backup-id", old_id, "--depth", "full", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("sealed with key id"),
        "{report}"
    );

    // And with the real key id back, the backup is authentic and restorable again
    backups.write(old_id, &sealed);
    let restored = stdout_json(&backups.restore(old_id).await);
    assert_eq!(restored["backupId"], old_id);
    assert_eq!(table_digests(&backups.client).await, backups.old_state);
}

#[tokio::test]
async fn a_moved_timestamp_does_not_make_restore_latest_load_an_older_backup() {
    // Given last month's backup and today's, and a writer without the key
    let backups = TwoBackups::take("meta_downgrade_time").await;
    let (old_id, new_id) = (backups.old_id.as_str(), backups.new_id.as_str());

    // When the writer moves last month's timestamp after today's and drops its MAC
    // (as a document from before MACs would carry none)
    let mut moved = backups.document(old_id);
    moved["timestamp"] = json!(backups.after_new());
    moved.as_object_mut().unwrap().remove("metadataMac");
    backups.write(old_id, &moved);

    // Then `restore latest` loads today's backup, naming the moved one and why it was passed over
    let restored = stdout_json(&backups.restore("latest").await);
    assert_eq!(restored["backupId"], new_id, "{restored}");
    let selection = restored["selection"].as_str().unwrap_or_default();
    assert!(
        selection.contains(old_id) && selection.contains("timestamp differs"),
        "{restored}"
    );
    assert_eq!(table_digests(&backups.client).await, backups.new_state);

    // And list still orders by the time in the id and marks the moved one
    let listed = backups.cli.json(&["list"]).await;
    assert_eq!(listed[0]["id"], new_id, "{listed}");
    assert_eq!(
        backups.listed(&listed, old_id)["metadataIntegrity"],
        "misdated",
        "{listed}"
    );

    // And `before:` an instant after both does the same
    let after_both = format!("before:{}", backups.after_new());
    let restored = stdout_json(&backups.restore(&after_both).await);
    assert_eq!(restored["backupId"], new_id, "{restored}");

    // And restoring it by id is refused, naming the timestamp
    let refused = backups.restore(old_id).await;
    assert!(!refused.status.success());
    assert!(
        cause_of(&refused).contains("is not the time in its id"),
        "{}",
        stderr_of(&refused)
    );
}

#[tokio::test]
async fn an_embedded_verification_does_not_make_a_restore_prefer_an_older_backup() {
    // Given last month's backup and today's, neither verified
    let backups = TwoBackups::take("meta_downgrade_verified").await;
    let (old_id, new_id) = (backups.old_id.as_str(), backups.new_id.as_str());

    // When the writer embeds a passed verification in last month's metadata
    // (outside what its MAC covers) and a failed one in today's
    let verified_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut old = backups.document(old_id);
    old["verification"] =
        json!({"status": "passed", "depth": "deep", "durationMs": 1, "verifiedAt": verified_at});
    backups.write(old_id, &old);
    let mut new = backups.document(new_id);
    new["verification"] = json!({"status": "failed", "depth": "quick", "durationMs": 1, "verifiedAt": verified_at, "error": "forged"});
    backups.write(new_id, &new);

    // Then a restore of the newest backup before now loads today's, not the "verified" one
    let now = format!(
        "before:{}",
        (chrono::Utc::now() + chrono::Duration::minutes(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let restored = stdout_json(&backups.restore(&now).await);
    assert_eq!(restored["backupId"], new_id, "{restored}");
    assert!(
        restored["selection"]
            .as_str()
            .unwrap()
            .contains("not yet verified"),
        "{restored}"
    );
    assert_eq!(table_digests(&backups.client).await, backups.new_state);

    // And list shows neither as verified, and both documents still authentic
    let listed = backups.cli.json(&["list"]).await;
    for id in [old_id, new_id] {
        let backup = backups.listed(&listed, id);
        assert_eq!(backup["verification"], Value::Null, "{listed}");
        assert_eq!(backup["metadataIntegrity"], "authentic", "{listed}");
    }

    // And `latest-verified` finds no verified backup rather than last month's
    let refused = backups.restore("latest-verified").await;
    assert!(
        !refused.status.success(),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(
        cause_of(&refused).contains("no backups yet that passed verification"),
        "{}",
        stderr_of(&refused)
    );
}
