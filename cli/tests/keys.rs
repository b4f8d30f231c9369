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
