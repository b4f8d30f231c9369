//! The quarterly audit report reads its records several at a time: a
//! quarter holds thousands of small objects, and one round trip after
//! another ran into the prune function's deadline.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backup_core::config::Settings;
use backup_core::metrics::MetricsSink;
use backup_core::operations::{
    AuditReportRequest, PruneRequest, Services, build_audit_report, prune_backups,
};
use backup_core::request::PruneOrder;
use backup_core::storage::{
    BackupStore, LocalStore, ObjectInfo, ObjectReader, ObjectUpload, SharedStore, StorageError,
};
use bytes::Bytes;
use chrono::{Duration, Utc};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

/// Local storage whose reads take a cloud round trip, counting how many
/// are under way at once.
#[derive(Debug)]
struct DistantStore {
    inner: LocalStore,
    reading: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl BackupStore for DistantStore {
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
        async move {
            let now = self.reading.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.reading.fetch_sub(1, Ordering::SeqCst);
            self.inner.get(key).await
        }
        .boxed()
    }
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo, StorageError>> {
        self.inner.head(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, StorageError>> {
        self.inner.list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.delete(key)
    }
}

#[tokio::test]
async fn the_audit_report_reads_its_records_several_at_a_time_and_keeps_their_order() {
    // Given 40 audit records (one per prune run that had nothing to do)
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::from_lookup(|_| None).unwrap();
    let local: SharedStore = Arc::new(LocalStore::new(dir.path().to_owned()));
    let services = Services::new(local, &settings, "tests", MetricsSink::Disabled);
    let order: PruneOrder = serde_json::from_value(serde_json::json!({"retentionDays": 30})).unwrap();
    for _ in 0..40 {
        prune_backups(&services, &PruneRequest::new(order, settings.retention))
            .await
            .unwrap();
    }
    // When the report is built over a store where each read takes 50 ms
    let store = Arc::new(DistantStore {
        inner: LocalStore::new(dir.path().to_owned()),
        reading: AtomicUsize::new(0),
        most_at_once: AtomicUsize::new(0),
    });
    let services = Services::new(
        store.clone() as SharedStore,
        &settings,
        "tests",
        MetricsSink::Disabled,
    );
    let now = Utc::now() + Duration::minutes(1);
    let request = AuditReportRequest {
        from: now - Duration::days(1),
        to: now,
        rpo: Duration::hours(1),
        policy: settings.retention,
        now,
    };
    let report = build_audit_report(&services, &request).await.unwrap();
    // Then every record is in it, in time order
    assert_eq!(report.operations.len(), 40);
    let times: Vec<_> = report.operations.iter().map(|o| o.record.time).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    // And the reads overlapped instead of waiting for one another
    let most = store.most_at_once.load(Ordering::SeqCst);
    assert!(most > 1, "the records were read one at a time");
}
