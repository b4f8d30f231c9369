//! `backupctl keys rotate`: a bare key or a keyring in, a keyring with a new
//! current key and every old key out; backups under each key stay
//! restorable.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Stdio;

use integration_tests::*;
use support::*;
use tokio::io::AsyncWriteExt;

/// Runs `keys rotate` with `keyring` on stdin.
async fn run_rotate(cli: &Backupctl, keyring: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["keys", "rotate"];
    args.extend_from_slice(extra);
    let mut child = cli
        .command(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(keyring.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// `keys rotate` that must succeed: (stdout, stderr).
async fn rotate(cli: &Backupctl, keyring: &str, extra: &[&str]) -> (String, String) {
    let output = run_rotate(cli, keyring, extra).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    let said = stderr_of(&output);
    (String::from_utf8(output.stdout).unwrap(), said)
}

#[tokio::test]
async fn two_rotations_keep_every_backup_restorable() {
    // Given a bare key and a backup under it
    let database = TestDatabase::create("cli_keys").await;
    let client = database.client().await;
    load_carwash(&client, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let mut backups = vec![(cli.json(&["create"]).await, table_digests(&client).await)];

    // When the key is rotated twice, a backup taken after each
    for round in 1..=2 {
        let (keyring, said) = rotate(&cli, &cli.key.clone(), &[]).await;
        // Then only the keyring is printed on stdout, and stderr names ids, never keys
        let parsed: serde_json::Value = serde_json::from_str(keyring.trim()).unwrap();
        assert_eq!(parsed["keys"].as_object().unwrap().len(), round + 1);
        assert!(said.contains("new current key k-"), "{said}");
        assert!(!said.contains(KEY), "{said}");
        for key in parsed["keys"].as_object().unwrap().values() {
            assert!(!said.contains(key.as_str().unwrap()));
        }
        cli.key = keyring.trim().to_owned();
        client
            .batch_execute(&format!("UPDATE \"Service\" SET \"price\" = {round}"))
            .await
            .unwrap();
        backups.push((cli.json(&["create"]).await, table_digests(&client).await));
    }
    let key_ids: Vec<&str> = backups
        .iter()
        .map(|(b, _)| b["keyId"].as_str().unwrap())
        .collect();
    assert_eq!(
        key_ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3,
        "{key_ids:?}"
    );

    // Then each backup restores, under the last keyring, to the state it was taken in
    for (backup, state) in &backups {
        cli.json(&[
            "restore",
            "--backup-id",
            backup["id"].as_str().unwrap(),
            "--yes",
            "--no-safety-backup",
        ])
        .await;
        assert_eq!(&table_digests(&client).await, state);
    }

    // An explicit id is used, and one already in the keyring is refused
    let (keyring, _) = rotate(&cli, &cli.key.clone(), &["--new-id", "q1-2027"]).await;
    assert!(keyring.contains("\"current\":\"q1-2027\""));
    let refused = run_rotate(&cli, &cli.key.clone(), &["--new-id", key_ids[1]]).await;
    assert!(!refused.status.success());
    assert!(cause_of(&refused).contains("twice"), "{}", stderr_of(&refused));
}

#[tokio::test]
async fn a_verify_with_a_key_missing_from_the_keyring_records_nothing_and_says_it_cannot_check() {
    // Given a backup under one key, verified once
    let database = TestDatabase::create("cli_keys_missing").await;
    let client = database.client().await;
    load_carwash(&client, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let backup = cli.json(&["create"]).await;
    let id = backup["id"].as_str().unwrap().to_owned();
    cli.json(&["verify", "--backup-id", &id, "--depth", "full"]).await;
    let before = cli.json(&["list"]).await;
    assert_eq!(before[0]["verification"]["status"], "passed", "{before}");

    // When it is verified with a keyring that lacks its key
    cli.key = OTHER_KEY.into();
    let output = cli.run(&["verify", "--backup-id", &id, "--depth", "full"]).await;

    // Then the run exits 3 and names the missing key id, not a bad backup
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    let cause = cause_of(&output);
    assert!(cause.contains("cannot check backup"), "{cause}");
    assert!(cause.contains(backup["keyId"].as_str().unwrap()), "{cause}");
    assert!(!cause.contains(KEY) && !cause.contains(OTHER_KEY), "{cause}");
    // And nothing was recorded: latest-verified still picks the backup
    cli.key = KEY.into();
    let after = cli.json(&["list"]).await;
    assert_eq!(after[0]["verification"], before[0]["verification"], "{after}");
    let again = cli
        .json(&["verify", "--backup-id", "latest-verified", "--depth", "quick"])
        .await;
    assert_eq!(again["backupId"], id.as_str());
}

#[tokio::test]
async fn a_backup_under_another_key_than_the_newest_is_warned_about_and_list_shows_each_key() {
    // Given a backup under one key
    let database = TestDatabase::create("cli_keys_change").await;
    let client = database.client().await;
    load_carwash(&client, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let first = cli.json(&["create"]).await;
    let first_key = first["keyId"].as_str().unwrap().to_owned();

    // When the next backup is taken with another key
    cli.key = OTHER_KEY.into();
    let output = cli.run(&["create"]).await;

    // Then it succeeds, and warns that the older backups need the other key
    assert!(output.status.success(), "{}", stderr_of(&output));
    let said = stderr_of(&output);
    assert!(said.contains("the newest backup before it"), "{said}");
    assert!(said.contains(&first_key), "{said}");
    // And a backup under the same key again is not warned about
    let output = cli.run(&["create"]).await;
    assert!(!stderr_of(&output).contains("the newest backup before it"));

    // And list names the key each backup needs
    let listed = String::from_utf8(cli.run(&["list"]).await.stdout).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].contains(" key "), "{listed}");
    let second_key = cli.json(&["list"]).await[0]["keyId"].as_str().unwrap().to_owned();
    assert_ne!(second_key, first_key);
    assert_eq!(
        lines.iter().filter(|l| l.contains(&second_key)).count(),
        2,
        "{listed}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(&first_key)).count(),
        1,
        "{listed}"
    );
}

#[tokio::test]
async fn keys_generate_tells_the_id_its_backups_will_record() {
    // Given a freshly generated key
    let database = TestDatabase::create("cli_keys_generate").await;
    let client = database.client().await;
    load_carwash(&client, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    let output = cli.run(&["keys", "generate"]).await;
    assert!(output.status.success(), "{}", stderr_of(&output));
    let said = stderr_of(&output);
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(!said.contains(&key), "the key itself is only on stdout");

    // When a backup is taken with it
    cli.key = key;
    let backup = cli.json(&["create"]).await;

    // Then the id generate announced is the one the backup records
    let key_id = backup["keyId"].as_str().unwrap();
    assert!(said.contains(&format!("has id {key_id}")), "{said}");
}
