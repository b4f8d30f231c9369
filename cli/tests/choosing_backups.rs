//! Choosing a backup by time (`before:<instant>`) and at random (`random`),
//! with `backupctl` run as a process against the real PostgreSQL and local
//! storage.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeSet;

use integration_tests::*;
use support::*;

#[tokio::test]
async fn before_an_instant_picks_the_newest_backup_taken_before_it_and_prefers_a_verified_one() {
    // Given three backups of three states of the car-wash database
    let database = TestDatabase::create("cli_before").await;
    let client = database.client().await;
    load_carwash(&client, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let first_state = table_digests(&client).await;
    let first = cli.json(&["create"]).await;
    client.batch_execute("DELETE FROM \"Testimonial\"").await.unwrap();
    let second_state = table_digests(&client).await;
    let second = cli.json(&["create"]).await;
    client
        .batch_execute("UPDATE \"Service\" SET \"price\" = 1")
        .await
        .unwrap();
    let third = cli.json(&["create"]).await;
    let (first_id, second_id) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
    let before_third = format!("before:{}", third["timestamp"].as_str().unwrap());

    // When none is verified, the newest one before the instant is chosen, and said to be unverified
    let report = cli
        .json(&["verify", "--backup-id", &before_third, "--depth", "quick"])
        .await;
    assert_eq!(report["backupId"], second_id, "{report}");
    let selection = report["selection"].as_str().unwrap();
    assert!(
        selection.contains(second_id) && selection.contains("not yet verified"),
        "{selection}"
    );

    // When only the oldest passed verification (the quick check above is undone), it is
    // preferred, and the newer one is named
    std::fs::remove_file(dir.path().join(format!("verification/{second_id}.json"))).unwrap();
    cli.json(&["verify", "--backup-id", first_id, "--depth", "full"])
        .await;
    let restored = cli
        .json(&[
            "restore",
            "--backup-id",
            &before_third,
            "--yes",
            "--no-safety-backup",
        ])
        .await;
    assert_eq!(restored["backupId"], first_id, "{restored}");
    let selection = restored["selection"].as_str().unwrap();
    assert!(selection.contains("verified"), "{selection}");
    assert!(
        selection.contains(&format!("the newer but unverified {second_id}")),
        "{selection}"
    );
    // Then the database holds the chosen backup's state
    assert_eq!(table_digests(&client).await, first_state);

    // A backup that failed verification is never chosen
    let failed = serde_json::json!({"status": "failed", "depth": "full", "verifiedAt": "2026-01-01T00:00:00.000Z",
                                    "durationMs": 1, "error": "broken"});
    std::fs::write(
        dir.path().join(format!("verification/{first_id}.json")),
        failed.to_string(),
    )
    .unwrap();
    let restored = cli
        .json(&[
            "restore",
            "--backup-id",
            &before_third,
            "--yes",
            "--no-safety-backup",
        ])
        .await;
    assert_eq!(restored["backupId"], second_id, "{restored}");
    assert_eq!(table_digests(&client).await, second_state);

    // An instant before every backup, or a malformed one, is refused with a clear message
    let too_early = format!("before:{}", first["timestamp"].as_str().unwrap());
    let refused = cli.run(&["restore", "--backup-id", &too_early, "--yes"]).await;
    assert!(!refused.status.success());
    assert!(
        cause_of(&refused).contains("no backup was taken before"),
        "{}",
        stderr_of(&refused)
    );
    let malformed = cli
        .run(&["restore", "--backup-id", "before:yesterday", "--yes"])
        .await;
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr_of(&malformed).contains("is not an instant"),
        "{}",
        stderr_of(&malformed)
    );
    // An offset other than Z is understood
    let third_at = chrono::DateTime::parse_from_rfc3339(third["timestamp"].as_str().unwrap()).unwrap();
    let in_paris = third_at.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
    let report = cli
        .json(&[
            "verify",
            "--backup-id",
            &format!("before:{}", in_paris.to_rfc3339()),
            "--depth",
            "quick",
        ])
        .await;
    assert_eq!(report["backupId"], second_id, "{report}");
}

#[tokio::test]
async fn random_verification_draws_any_backup_and_restores_it_deeply() {
    // Given three backups, the oldest under an older key
    let database = TestDatabase::create("cli_random").await;
    let client = database.client().await;
    load_carwash(&client, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let keyring = |current: &str| {
        serde_json::json!({"current": current, "keys": {"q1": KEY, "q2": OTHER_KEY}}).to_string()
    };
    cli.key = keyring("q1");
    let mut ids = BTreeSet::new();
    ids.insert(cli.json(&["create"]).await["id"].as_str().unwrap().to_owned());
    cli.key = keyring("q2");
    for _ in 0..2 {
        ids.insert(cli.json(&["create"]).await["id"].as_str().unwrap().to_owned());
    }

    // When a random backup is verified deeply, again and again
    let mut drawn = BTreeSet::new();
    for _ in 0..40 {
        let report = cli
            .json(&["verify", "--backup-id", "random", "--depth", "deep"])
            .await;
        // Then each draw is one of the backups, restored and compared, and says how it was chosen
        let id = report["backupId"].as_str().unwrap().to_owned();
        assert!(ids.contains(&id), "{id}");
        assert_eq!(report["status"], "passed", "{report}");
        assert!(report["restoreDurationMs"].as_u64().is_some());
        let selection = report["selection"].as_str().unwrap();
        assert!(selection.contains("at random from 3 backups"), "{selection}");
        drawn.insert(id);
        if drawn.len() == ids.len() {
            break;
        }
    }
    // Every backup can be drawn (40 draws miss one of three with p < 1e-6;
    // 20 draws, p ≈ 0.0009, missed one in a CI run)
    assert_eq!(drawn, ids);
    // An empty store has nothing to draw
    let empty = tempfile::tempdir().unwrap();
    let none = Backupctl::new(&database, empty.path())
        .run(&["verify", "--backup-id", "random"])
        .await;
    assert!(cause_of(&none).contains("no backups yet"), "{}", stderr_of(&none));
}

#[tokio::test]
async fn latest_never_picks_the_safety_backup_of_an_in_place_restore_unless_asked() {
    // Given a backup, then a change, then an in-place restore of that backup
    // (which first takes a safety backup of the changed state)
    let database = TestDatabase::create("cli_safety").await;
    let client = database.client().await;
    load_carwash(&client, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let good = cli.json(&["create"]).await;
    let good_id = good["id"].as_str().unwrap();
    client.batch_execute("DELETE FROM \"Testimonial\"").await.unwrap();
    let restored = cli.json(&["restore", "--backup-id", good_id, "--yes"]).await;
    let safety_id = restored["safetyBackupId"].as_str().unwrap().to_owned();

    // Then list marks the safety backup with its own trigger
    let listed = cli.json(&["list"]).await;
    assert_eq!(listed[0]["id"], safety_id.as_str());
    assert_eq!(listed[0]["trigger"], "safety", "{listed}");
    let text = String::from_utf8(cli.run(&["list"]).await.stdout).unwrap();
    let safety_line = text.lines().find(|l| l.contains(&safety_id)).unwrap();
    assert!(safety_line.contains("safety"), "{text}");

    // And latest, latest-verified and random choose the backup that was restored, not the safety one
    assert_eq!(
        cli.json(&["verify", "--backup-id", "latest", "--depth", "quick"])
            .await["backupId"],
        good_id
    );
    assert_eq!(
        cli.json(&["verify", "--backup-id", "latest-verified", "--depth", "quick"])
            .await["backupId"],
        good_id
    );
    for _ in 0..5 {
        assert_eq!(
            cli.json(&["verify", "--backup-id", "random", "--depth", "quick"])
                .await["backupId"],
            good_id
        );
    }
    // Unless asked: --include-safety lets latest choose it
    let asked = cli
        .json(&[
            "verify",
            "--backup-id",
            "latest",
            "--include-safety",
            "--depth",
            "quick",
        ])
        .await;
    assert_eq!(asked["backupId"], safety_id.as_str());
    // And a safety trigger cannot be given by hand
    let refused = cli.run(&["create", "--trigger", "safety"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr_of(&refused));
}

#[tokio::test]
async fn a_unique_start_of_an_id_selects_its_backup() {
    // Given two backups
    let database = TestDatabase::create("cli_prefix").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let first = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    let second = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // When each is named by the 8 hex digits of its random part, or by the start of its id
    for id in [&first, &second] {
        let random_part = id.rsplit('-').next().unwrap();
        let chosen = cli
            .json(&["verify", "--backup-id", random_part, "--depth", "quick"])
            .await;
        // Then that backup is verified
        assert_eq!(chosen["backupId"], id.as_str());
        let head = &id[..id.len() - 4];
        assert_eq!(
            cli.json(&["verify", "--backup-id", head, "--depth", "quick"])
                .await["backupId"],
            id.as_str()
        );
    }
    // And a start both ids share is refused, naming both; an unknown one says there is none
    let shared: String = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    // (taken seconds apart, their millisecond times share the leading digits)
    assert!(shared.len() >= "backup-".len() + 8, "{shared}");
    let ambiguous = cli
        .run(&["verify", "--backup-id", &shared, "--depth", "quick"])
        .await;
    assert!(!ambiguous.status.success());
    let cause = cause_of(&ambiguous);
    assert!(cause.contains(&first) && cause.contains(&second), "{cause}");
    let unknown = cli
        .run(&["verify", "--backup-id", "ffffffff", "--depth", "quick"])
        .await;
    assert!(
        cause_of(&unknown).contains("no backup ffffffff"),
        "{}",
        stderr_of(&unknown)
    );
    // And fewer than 8 hex digits is not an id at all
    let short = cli
        .run(&["verify", "--backup-id", "abc123", "--depth", "quick"])
        .await;
    assert_eq!(short.status.code(), Some(2), "{}", stderr_of(&short));
}
