//! prune reports what really happened: deletions storage refused (Object
//! Lock, a deny policy) make the run a failure in its report, its audit
//! record and its webhook; a listing that fails is audited too.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use backup_core::BackupId;
use backup_core::config::Settings;
use backup_core::metadata::BackupMetadata;
use backup_core::metrics::MetricsSink;
use backup_core::operations::{PruneRequest, Services, prune_backups};
use backup_core::request::PruneOrder;
use backup_core::storage::{
    BackupStore, LocalStore, ObjectInfo, ObjectReader, ObjectUpload, SharedStore, StorageError,
};
use bytes::Bytes;
use chrono::{Duration, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;

/// Local storage whose deletes of `locked` keys are refused as Object
/// Lock refuses them, and whose listing can be made to fail.
#[derive(Debug)]
struct GuardedStore {
    inner: LocalStore,
    locked: Vec<String>,
    listing_fails: AtomicBool,
}

impl BackupStore for GuardedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn begin_upload<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn ObjectUpload>, StorageError>> {
        self.inner.begin_upload(key)
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        self.inner.put(key, bytes)
    }
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        self.inner.put_if_absent(key, bytes)
    }
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        length: u64,
    ) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        self.inner.get_range(key, offset, length)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        self.inner.get(key)
    }
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        self.inner.head(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        if self.listing_fails.load(Ordering::SeqCst) {
            return async { Err(StorageError::Unavailable("listing refused".into())) }.boxed();
        }
        self.inner.list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        if self.locked.iter().any(|locked| locked == key) {
            return async move { Err(StorageError::Locked { key: key.to_owned() }) }.boxed();
        }
        self.inner.delete(key)
    }
}

/// A published backup taken `days` ago (metadata from the golden fixture).
async fn old_backup(store: &dyn BackupStore, days: i64) -> BackupId {
    let mut metadata: BackupMetadata = serde_json::from_str(include_str!("fixtures/golden-v1.json")).unwrap();
    let taken = Utc::now() - Duration::days(days);
    metadata.id = BackupId::new(taken).unwrap();
    metadata.timestamp = taken;
    store
        .put(&metadata.id.object_key(), Bytes::from_static(b"object"))
        .await
        .unwrap();
    store
        .put(
            &metadata.id.metadata_key(),
            Bytes::from(metadata.to_json_pretty()),
        )
        .await
        .unwrap();
    metadata.id
}

/// Every audit record under `root/audit/` (kept in dated folders).
fn audit_records(root: &std::path::Path) -> Vec<Value> {
    let mut records = Vec::new();
    let mut folders = vec![root.join("audit")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                folders.push(entry.path());
            } else {
                records.push(serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap());
            }
        }
    }
    records
}

/// Local settings that keep no backup just for being the newest, so the
/// age rule alone decides.
fn settings() -> Settings {
    Settings::from_lookup(|name| (name == "BACKUP_KEEP_VERIFIED").then(|| "0".to_owned())).unwrap()
}

fn order(days: u32) -> PruneOrder {
    serde_json::from_value(serde_json::json!({"retentionDays": days})).unwrap()
}

#[tokio::test]
async fn a_deletion_storage_refuses_makes_the_prune_a_failure_everywhere_it_reports() {
    // Given two expired backups, one of them under Object Lock, and a
    // recent one (the newest is always kept)
    let dir = tempfile::tempdir().unwrap();
    let plain = LocalStore::new(dir.path().to_owned());
    old_backup(&plain, 1).await;
    let locked_id = old_backup(&plain, 60).await;
    let free_id = old_backup(&plain, 50).await;
    let store = Arc::new(GuardedStore {
        inner: plain,
        locked: vec![locked_id.metadata_key()],
        listing_fails: AtomicBool::new(false),
    });
    let settings = settings();
    let services = Services::new(
        store.clone() as SharedStore,
        &settings,
        "tests",
        MetricsSink::Disabled,
    );

    // When prune runs
    let outcome = prune_backups(&services, &PruneRequest::new(order(30), settings.retention))
        .await
        .unwrap();

    // Then the free one is deleted, the locked one is listed as a failure
    assert_eq!(outcome.deleted.len(), 1);
    assert_eq!(outcome.deleted[0].backup_id, free_id);
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].key, locked_id.metadata_key());
    assert!(
        store.head(&locked_id.object_key()).await.is_ok(),
        "the locked backup stays whole"
    );
    // And the run's audit record says failure and why; the deletion that
    // happened has its own success record
    let records = audit_records(dir.path());
    let summary: Vec<&Value> = records.iter().filter(|r| r["backupId"].is_null()).collect();
    assert_eq!(summary.len(), 1, "{records:?}");
    assert_eq!(summary[0]["operation"], "prune");
    assert_eq!(summary[0]["outcome"], "failure", "{}", summary[0]);
    assert!(
        summary[0]["error"]
            .as_str()
            .unwrap()
            .contains("could not delete 1"),
        "{}",
        summary[0]
    );
    assert_eq!(
        summary[0]["details"]["failures"][0]["key"],
        locked_id.metadata_key().as_str()
    );
    let deletion = records
        .iter()
        .find(|r| r["backupId"] == free_id.to_string().as_str())
        .unwrap();
    assert_eq!(deletion["outcome"], "success");
}

#[tokio::test]
async fn a_prune_that_cannot_list_is_audited_as_a_failure() {
    // Given storage whose listing fails
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GuardedStore {
        inner: LocalStore::new(dir.path().to_owned()),
        locked: Vec::new(),
        listing_fails: AtomicBool::new(true),
    });
    let settings = settings();
    let services = Services::new(
        store.clone() as SharedStore,
        &settings,
        "tests",
        MetricsSink::Disabled,
    );
    // When prune runs, Then it fails, and the failure is in the audit trail
    let error = prune_backups(
        &services,
        &PruneRequest::new(PruneOrder::default(), settings.retention),
    )
    .await
    .unwrap_err();
    assert!(error.chain().contains("listing refused"), "{}", error.chain());
    let records = audit_records(dir.path());
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["operation"], "prune");
    assert_eq!(records[0]["outcome"], "failure");
    assert!(records[0]["error"].as_str().unwrap().contains("listing refused"));
}

#[tokio::test]
async fn a_dry_run_deletes_and_audits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(LocalStore::new(dir.path().to_owned()));
    let id = old_backup(store.as_ref(), 90).await;
    old_backup(store.as_ref(), 1).await;
    let settings = settings();
    let services = Services::new(store.clone(), &settings, "tests", MetricsSink::Disabled);
    let dry: PruneOrder = serde_json::from_value(serde_json::json!({"dryRun": true})).unwrap();
    let outcome = prune_backups(&services, &PruneRequest::new(dry, settings.retention))
        .await
        .unwrap();
    assert_eq!(outcome.deleted[0].backup_id, id);
    assert!(store.head(&id.metadata_key()).await.is_ok());
    assert!(audit_records(dir.path()).is_empty());
}
