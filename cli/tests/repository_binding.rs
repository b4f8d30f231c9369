//! A backup and its metadata copied from another repository that shares
//! the keyring (prod and staging, one prefix per app) is refused: metadata
//! MACs are bound to a random repository id kept in `repository.json`
//! (issue #26 item 3). Backups sealed before the id existed stay readable,
//! and only those may carry the old, unbound MAC.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::Path;

use backup_core::envelope::MetadataKey;
use backup_core::keyring::Keyring;
use backup_core::metadata::canonical_document;
use integration_tests::*;
use serde_json::Value;
use support::*;

fn listed<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

async fn restore(cli: &Backupctl, id: &str) -> std::process::Output {
    cli.run(&["restore", "--backup-id", id, "--yes", "--no-safety-backup"])
        .await
}

/// Rewrites a backup's metadata as a release before the repository id
/// sealed it: no `repositoryId`, the MAC under the unbound key.
fn seal_as_before_the_id(dir: &Path, id: &str) {
    let path = metadata_path(dir, id);
    let mut document: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let map = document.as_object_mut().unwrap();
    map.remove("repositoryId");
    map.remove("metadataMac");
    let keyring = Keyring::from_secret_string(KEY, "test").unwrap();
    let tag = MetadataKey::derive(keyring.current()).tag(&canonical_document(&document));
    document["metadataMac"] = Value::from(hex::encode(tag));
    std::fs::write(&path, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
}

fn copy_backup(from: &Path, to: &Path, id: &str) {
    for file in [metadata_path(from, id), object_path(from, id)] {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, target).unwrap();
    }
}

fn metadata_path(dir: &Path, id: &str) -> std::path::PathBuf {
    let mut found = paths_under(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy() == format!("{id}.json"));
    found
        .next()
        .unwrap_or_else(|| panic!("no metadata for {id} under {}", dir.display()))
}

fn object_path(dir: &Path, id: &str) -> std::path::PathBuf {
    let mut found = paths_under(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy() == format!("{id}.backup"));
    found
        .next()
        .unwrap_or_else(|| panic!("no object for {id} under {}", dir.display()))
}

#[tokio::test]
async fn a_backup_copied_from_another_repository_sharing_the_keyring_is_refused() {
    // Given prod and staging, one keyring, a backup in each
    let database = TestDatabase::create("binding_copy").await;
    load_carwash(&database.client().await, 20).await;
    let (prod_dir, staging_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prod = Backupctl::new(&database, prod_dir.path());
    let staging = Backupctl::new(&database, staging_dir.path());
    prod.json(&["create"]).await;
    let foreign = staging.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // When staging's backup and its metadata are copied into prod
    copy_backup(staging_dir.path(), prod_dir.path(), &foreign);

    // Then prod lists it as failing its MAC, and will not restore it
    let list = prod.json(&["list"]).await;
    assert_eq!(listed(&list, &foreign)["metadataIntegrity"], "failed", "{list}");
    let before = table_digests(&database.client().await).await;
    let refused = restore(&prod, &foreign).await;
    assert!(!refused.status.success(), "restored: {}", stderr_of(&refused));
    assert!(
        cause_of(&refused).contains("fails its MAC"),
        "{}",
        stderr_of(&refused)
    );
    assert_eq!(table_digests(&database.client().await).await, before);
}

#[tokio::test]
async fn backups_sealed_before_the_repository_id_stay_readable_and_only_they() {
    // Given a repository from before the id: a backup sealed the old way, no repository.json
    let database = TestDatabase::create("binding_migrate").await;
    load_carwash(&database.client().await, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Backupctl::new(&database, dir.path());
    let old = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();
    seal_as_before_the_id(dir.path(), &old);
    let _ = std::fs::remove_file(dir.path().join("repository.json"));
    assert_eq!(
        listed(&cli.json(&["list"]).await, &old)["metadataIntegrity"],
        "authentic"
    );

    // When the upgraded release takes its first backup
    let new = cli.json(&["create"]).await["id"].as_str().unwrap().to_owned();

    // Then the repository has an id, listing the old backup as sealed before it
    let identity: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("repository.json")).unwrap()).unwrap();
    assert_eq!(identity["legacyBackups"], serde_json::json!([old]), "{identity}");
    // And both backups read as authentic and restore
    let list = cli.json(&["list"]).await;
    for id in [&old, &new] {
        assert_eq!(listed(&list, id)["metadataIntegrity"], "authentic", "{list}");
        let output = restore(&cli, id).await;
        assert!(output.status.success(), "{id}: {}", stderr_of(&output));
    }

    // But a newer backup re-sealed the old way (by someone with the key of
    // another repository, or a document copied from one) is refused
    seal_as_before_the_id(dir.path(), &new);
    let refused = restore(&cli, &new).await;
    assert!(!refused.status.success(), "restored: {}", stderr_of(&refused));
    assert!(
        cause_of(&refused).contains("fails its MAC"),
        "{}",
        stderr_of(&refused)
    );
}
