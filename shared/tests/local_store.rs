//! Local storage: the layout the user's runbook expects, atomic publishing,
//! and uploads that leave nothing behind unless completed.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use backup_core::storage::{BackupStore, LocalStore, StorageError, get_bytes};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        out.push(entry.strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

#[tokio::test]
async fn keys_map_to_the_runbooks_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    store
        .put("backups/backup-1-0000000a.backup", Bytes::from_static(b"data"))
        .await
        .unwrap();
    store
        .put("metadata/backup-1-0000000a.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    store
        .put("audit/2026/11/26/1-create-00.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        files(dir.path()),
        [
            "audit/2026/11/26/1-create-00.json",
            "backup-1-0000000a.backup",
            "metadata/backup-1-0000000a.json"
        ]
    );
    let listed: Vec<String> = store
        .list("backups/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(listed, ["backups/backup-1-0000000a.backup"]);
    let listed: Vec<String> = store
        .list("metadata/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(listed, ["metadata/backup-1-0000000a.json"]);
    assert!(store.list("verification/").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_upload_appears_only_when_completed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let key = "backups/backup-2-0000000b.backup";

    // Written but not completed: nothing under the final name
    let mut upload = store.begin_upload(key).await.unwrap();
    upload.write_all(&vec![7u8; 300_000]).await.unwrap();
    upload.shutdown().await.unwrap();
    assert!(matches!(
        store.head(key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(
        store.list("backups/").await.unwrap().is_empty(),
        "temporary files are never listed"
    );

    // Completed: there, whole
    let info = upload.complete().await.unwrap();
    assert_eq!(info.size, 300_000);
    let mut reader = store.get_range(key, 1000, 10).await.unwrap();
    let mut piece = Vec::new();
    reader.read_to_end(&mut piece).await.unwrap();
    assert_eq!(piece, vec![7u8; 10]);

    // Aborted or dropped: nothing, not even a temporary file
    let mut aborted = store
        .begin_upload("backups/backup-3-0000000c.backup")
        .await
        .unwrap();
    aborted.write_all(b"partial").await.unwrap();
    aborted.abort().await.unwrap();
    let mut dropped = store
        .begin_upload("backups/backup-4-0000000d.backup")
        .await
        .unwrap();
    dropped.write_all(b"partial").await.unwrap();
    drop(dropped);
    assert_eq!(files(dir.path()), ["backup-2-0000000b.backup"]);
}

#[tokio::test]
async fn missing_objects_and_hostile_keys_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("not-yet-created"));
    assert!(matches!(
        store.get("metadata/nope.json").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(store.list("metadata/").await.unwrap().is_empty());
    store.delete("metadata/nope.json").await.unwrap();
    for key in [
        "../escape",
        "metadata/../../escape",
        "/etc/passwd",
        "metadata/.tmp-x",
        "",
    ] {
        assert!(
            matches!(
                store.put(key, Bytes::new()).await,
                Err(StorageError::InvalidKey { .. })
            ),
            "{key}"
        );
    }
    store
        .put("metadata/x.json", Bytes::from_static(b"first"))
        .await
        .unwrap();
    store
        .put("metadata/x.json", Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(
        get_bytes(&store, "metadata/x.json", 100).await.unwrap(),
        b"second"
    );
}
