//! One conformance suite, the same test functions run against every
//! storage backend: local disk, S3 (moto's server) and Azure Blob (Azurite).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use backup_core::checksum::sha256_hex;
use backup_core::storage::{
    AzureStore, BackupStore, LocalStore, MultipartSettings, S3Settings, S3Store, S3WriteOptions, SharedStore,
    StorageError, get_bytes,
};
use bytes::Bytes;
use integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed % 31)) as u8
        })
        .collect()
}

async fn read_all(store: &dyn BackupStore, key: &str) -> Vec<u8> {
    let mut reader = store.get(key).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    out
}

async fn stream_upload(store: &dyn BackupStore, key: &str, data: &[u8]) {
    let mut upload = store.begin_upload(key).await.unwrap();
    for piece in data.chunks(1 << 20) {
        upload.write_all(piece).await.unwrap();
    }
    upload.shutdown().await.unwrap();
    let info = upload.complete().await.unwrap();
    assert_eq!(info.size, data.len() as u64, "{key}");
}

async fn round_trips_of_0_1_and_50_mib(store: &dyn BackupStore) {
    for (name, size) in [("empty", 0usize), ("one", 1), ("fifty-mib", 50 << 20)] {
        let data = pattern(size, size as u8);
        let key = format!("backups/backup-1-0000{:04x}.backup", size % 0xffff);
        stream_upload(store, &key, &data).await;
        assert_eq!(store.head(&key).await.unwrap().size, size as u64, "{name}");
        let back = read_all(store, &key).await;
        assert_eq!(back.len(), size, "{name}");
        assert_eq!(sha256_hex(&back), sha256_hex(&data), "{name}");
    }
}

async fn ranged_reads_return_exactly_the_range(store: &dyn BackupStore) {
    let data = pattern(3 << 20, 7);
    store
        .put("backups/ranged.backup", Bytes::from(data.clone()))
        .await
        .unwrap();
    for (offset, length) in [
        (0usize, 10usize),
        (1_000_000, 65_536),
        (data.len() - 5, 5),
        (17, 0),
    ] {
        let mut reader = store
            .get_range("backups/ranged.backup", offset as u64, length as u64)
            .await
            .unwrap();
        let mut piece = Vec::new();
        reader.read_to_end(&mut piece).await.unwrap();
        assert_eq!(piece, &data[offset..offset + length], "range {offset}+{length}");
    }
}

async fn missing_objects_are_a_typed_not_found(store: &dyn BackupStore) {
    assert!(matches!(
        store.head("metadata/missing.json").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.get("metadata/missing.json").await.map(|_| ()),
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        get_bytes(store, "metadata/missing.json", 10).await,
        Err(StorageError::NotFound { .. })
    ));
    store.delete("metadata/missing.json").await.unwrap();
}

async fn listing_pages_past_1000_keys_and_respects_prefixes(store: &dyn BackupStore) {
    let mut writes = futures_util::stream::FuturesUnordered::new();
    for i in 0..1_050 {
        writes.push(store.put_owned(
            format!("audit/many/x-{i:04}.json"),
            Bytes::from(format!("{{\"n\":{i}}}")),
        ));
    }
    use futures_util::StreamExt;
    while let Some(done) = writes.next().await {
        done.unwrap();
    }
    let all = store.list("audit/many/").await.unwrap();
    assert_eq!(all.len(), 1_050);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted by key");
    assert_eq!(all[0].key, "audit/many/x-0000.json");
    assert_eq!(store.list("audit/many/x-00").await.unwrap().len(), 100);
    assert!(
        store
            .list("metadata/")
            .await
            .unwrap()
            .iter()
            .all(|o| !o.key.starts_with("audit/"))
    );
}

/// Keys nest (`audit/2026/11/26/…`): a prefix lists everything under it,
/// at any depth, as S3 does.
async fn listing_reaches_nested_keys(store: &dyn BackupStore) {
    for key in [
        "audit/2026/11/26/a.json",
        "audit/2026/11/27/b.json",
        "audit/2026/12/01/c.json",
        "reports/audit-2026-Q4.md",
    ] {
        store.put(key, Bytes::from_static(b"{}")).await.unwrap();
    }
    let keys = |listed: Vec<backup_core::storage::ObjectInfo>| -> Vec<String> {
        listed
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !k.starts_with("audit/many/"))
            .collect()
    };
    assert_eq!(
        keys(store.list("audit/2026/").await.unwrap()),
        [
            "audit/2026/11/26/a.json",
            "audit/2026/11/27/b.json",
            "audit/2026/12/01/c.json"
        ]
    );
    assert_eq!(
        keys(store.list("audit/2026/11/").await.unwrap()),
        ["audit/2026/11/26/a.json", "audit/2026/11/27/b.json"]
    );
    assert_eq!(keys(store.list("audit/2026/11/2").await.unwrap()).len(), 2);
    assert_eq!(
        keys(store.list("reports/").await.unwrap()),
        ["reports/audit-2026-Q4.md"]
    );
}

async fn delete_removes(store: &dyn BackupStore) {
    store
        .put("metadata/to-delete.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        get_bytes(store, "metadata/to-delete.json", 10).await.unwrap(),
        b"{}"
    );
    store.delete("metadata/to-delete.json").await.unwrap();
    assert!(matches!(
        store.head("metadata/to-delete.json").await,
        Err(StorageError::NotFound { .. })
    ));
}

async fn an_aborted_or_dropped_upload_leaves_nothing(store: &dyn BackupStore) {
    let data = pattern(20 << 20, 3);
    let mut upload = store.begin_upload("backups/aborted.backup").await.unwrap();
    upload.write_all(&data).await.unwrap();
    upload.abort().await.unwrap();
    let mut dropped = store.begin_upload("backups/dropped.backup").await.unwrap();
    dropped.write_all(&data).await.unwrap();
    drop(dropped);
    // The dropped upload is aborted in the background. Checked repeatedly
    // over a second: the data never appears under either key (a backend
    // that published on drop would show it within that time). Azure's abort
    // may show an empty blob for an instant: it discards staged blocks by
    // writing an empty blob and deleting it.
    for _ in 0..20 {
        for key in ["backups/aborted.backup", "backups/dropped.backup"] {
            match store.head(key).await {
                Err(StorageError::NotFound { .. }) => {}
                Ok(info) => assert_eq!(info.size, 0, "{key} was published"),
                Err(other) => panic!("{key}: {other}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for key in ["backups/aborted.backup", "backups/dropped.backup"] {
        assert!(
            matches!(store.head(key).await, Err(StorageError::NotFound { .. })),
            "{key} exists"
        );
    }
}

async fn concurrent_writers_to_different_keys(store: &dyn BackupStore) {
    let datas: Vec<Vec<u8>> = (0..4).map(|i| pattern(12 << 20, 40 + i)).collect();
    let uploads = datas.iter().enumerate().map(|(i, data)| async move {
        stream_upload(store, &format!("backups/concurrent-{i}.backup"), data).await
    });
    futures_util::future::join_all(uploads).await;
    for (i, data) in datas.iter().enumerate() {
        assert_eq!(
            sha256_hex(&read_all(store, &format!("backups/concurrent-{i}.backup")).await),
            sha256_hex(data)
        );
    }
}

/// Given eight writers racing to create one key, when each writes it only
/// if absent, then exactly one succeeds, the others are told the key is
/// taken, and the object holds the winner's bytes whole.
async fn create_only_writes_let_exactly_one_racer_win(store: &dyn BackupStore) {
    let key = "racing/repository.json";
    let racers = (0..8u8).map(|i| async move {
        (
            i,
            store
                .put_if_absent(key, Bytes::from(pattern(64 << 10, 90 + i)))
                .await,
        )
    });
    let results = futures_util::future::join_all(racers).await;
    let winners: Vec<u8> = results
        .iter()
        .filter(|(_, result)| result.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (_, result) in &results {
        if let Err(error) = result {
            assert!(error.is_already_exists(), "{error:?}");
        }
    }
    assert_eq!(
        sha256_hex(&read_all(store, key).await),
        sha256_hex(&pattern(64 << 10, 90 + winners[0]))
    );
    // and a later create-only write of a taken key changes nothing
    let again = store.put_if_absent(key, Bytes::from_static(b"late")).await;
    assert!(again.unwrap_err().is_already_exists());
    assert_eq!(read_all(store, key).await.len(), 64 << 10);
    store.delete(key).await.unwrap();
}

async fn conformance(store: SharedStore) {
    let store = store.as_ref();
    round_trips_of_0_1_and_50_mib(store).await;
    ranged_reads_return_exactly_the_range(store).await;
    missing_objects_are_a_typed_not_found(store).await;
    listing_pages_past_1000_keys_and_respects_prefixes(store).await;
    listing_reaches_nested_keys(store).await;
    delete_removes(store).await;
    an_aborted_or_dropped_upload_leaves_nothing(store).await;
    concurrent_writers_to_different_keys(store).await;
    create_only_writes_let_exactly_one_racer_win(store).await;
}

/// Lets a suite function start many puts without borrowing keys.
trait PutOwned {
    fn put_owned(
        &self,
        key: String,
        bytes: Bytes,
    ) -> futures_util::future::BoxFuture<'_, Result<(), StorageError>>;
}

impl PutOwned for dyn BackupStore + '_ {
    fn put_owned(
        &self,
        key: String,
        bytes: Bytes,
    ) -> futures_util::future::BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move { self.put(&key, bytes).await.map(|_| ()) })
    }
}

fn s3_store(client: aws_sdk_s3::Client, bucket: &str, write: S3WriteOptions) -> S3Store {
    S3Store::with_client(
        client,
        S3Settings {
            bucket: bucket.to_owned(),
            prefix: "carwash".into(),
            force_path_style: Some(true),
            write,
            multipart: MultipartSettings::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conforms_and_leaves_no_multipart_upload_behind() {
    let (client, bucket) = s3_test_bucket("conform", false).await;
    conformance(Arc::new(s3_store(
        client.clone(),
        &bucket,
        S3WriteOptions::default(),
    )))
    .await;
    // checked from outside our code: no in-progress multipart upload remains
    let uploads = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    // keys live under the configured prefix
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("carwash/backups/")
        .send()
        .await
        .unwrap();
    assert!(listed.key_count().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_conforms() {
    conformance(Arc::new(
        AzureStore::connect(azure_test_settings("conform")).unwrap(),
    ))
    .await;
}

/// Every blob under `prefix`, committed or only staged (uncommitted
/// blocks), as the Azure SDK for Python lists them.
fn azure_blobs_including_uncommitted(settings: &backup_core::storage::AzureSettings) -> Vec<String> {
    let script = r#"
import json, sys
from azure.storage.blob import BlobServiceClient
account, key, container, prefix = sys.argv[1:5]
conn = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:10000/{account};")
box = BlobServiceClient.from_connection_string(conn).get_container_client(container)
print(json.dumps(sorted(b.name for b in box.list_blobs(name_starts_with=prefix + "/", include=["uncommittedblobs"]))))
"#;
    let output = std::process::Command::new(python())
        .args([
            "-c",
            script,
            &settings.account,
            &settings.access_key,
            &settings.container,
            &settings.prefix,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_or_dropped_azure_upload_leaves_no_staged_blocks() {
    // Given uploads that staged 20 MiB of blocks, one aborted, one dropped
    let settings = azure_test_settings("abort");
    let store = AzureStore::connect(settings.clone()).unwrap();
    let data = pattern(20 << 20, 5);
    let mut aborted = store.begin_upload("backups/aborted.backup").await.unwrap();
    aborted.write_all(&data).await.unwrap();
    let mut dropped = store.begin_upload("backups/dropped.backup").await.unwrap();
    dropped.write_all(&data).await.unwrap();
    // Staged, not committed: listed only with uncommitted blobs included
    // (a part may still be in flight when write_all returns)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while azure_blobs_including_uncommitted(&settings).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the blocks were never staged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // When one is aborted and the other dropped
    aborted.abort().await.unwrap();
    drop(dropped);
    // Then (the drop aborts in the background) no block stays behind
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = azure_blobs_including_uncommitted(&settings);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "staged blocks left behind: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn s3_sse_kms_with_a_customer_key_is_requested_on_both_upload_paths() {
    // Given a store configured for SSE-KMS with the customer's key
    let (client, bucket) = s3_test_bucket("kms", false).await;
    let key_arn = "arn:aws:kms:us-east-1:123456789012:key/0c3e1b0d-8a51-4c8e-9e4a-2f4a6d1c9b7e";
    let write = S3WriteOptions {
        server_side_encryption: Some("aws:kms".into()),
        kms_key_id: Some(key_arn.into()),
        object_lock: None,
    };
    let store = s3_store(client.clone(), &bucket, write);
    // When a small object and a multipart object are written
    store
        .put("metadata/kms.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    stream_upload(&store, "backups/kms.backup", &pattern(11 << 20, 11)).await;
    // Then S3 reports aws:kms with that key on each
    for key in ["carwash/metadata/kms.json", "carwash/backups/kms.backup"] {
        let head = client
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("aws:kms"),
            "{key}"
        );
        assert_eq!(head.ssekms_key_id(), Some(key_arn), "{key}");
    }
}

#[tokio::test]
async fn s3_server_side_encryption_and_object_lock_are_applied_and_a_delete_keeps_the_locked_version() {
    // Given a bucket with Object Lock and a store writing COMPLIANCE-locked, SSE objects
    let (client, bucket) = s3_test_bucket("lock", true).await;
    let write = S3WriteOptions {
        server_side_encryption: Some("AES256".into()),
        kms_key_id: None,
        object_lock: Some(("COMPLIANCE".into(), 1)),
    };
    let store = s3_store(client.clone(), &bucket, write);
    store
        .put("metadata/locked.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    stream_upload(&store, "backups/locked.backup", &pattern(9 << 20, 9)).await;

    // Then S3 reports the encryption and retention on both upload paths
    for key in ["carwash/metadata/locked.json", "carwash/backups/locked.backup"] {
        let head = client
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("AES256"),
            "{key}"
        );
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE"),
            "{key}"
        );
    }
    // When the store deletes a locked backup (as prune does)
    store.delete("backups/locked.backup").await.unwrap();
    // Then it is gone from listings and reads, behind a delete marker
    assert!(store.list("backups/").await.unwrap().is_empty());
    assert!(matches!(
        store.get("backups/locked.backup").await,
        Err(StorageError::NotFound { .. })
    ));
    // but the locked version itself is untouched: recoverable until the
    // lifecycle expires it after the lock
    let versions = client
        .list_object_versions()
        .bucket(&bucket)
        .prefix("carwash/backups/locked.backup")
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1, "{versions:?}");
    assert_eq!(versions.delete_markers().len(), 1, "{versions:?}");
    let kept = versions.versions()[0].version_id().unwrap();
    let old = client
        .get_object()
        .bucket(&bucket)
        .key("carwash/backups/locked.backup")
        .version_id(kept)
        .send()
        .await
        .unwrap();
    assert_eq!(old.content_length(), Some(9 << 20));
}
