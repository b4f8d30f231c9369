//! A partial restore downloads what it restores and little else: restoring
//! one small table reads the header, footer, trailer, schema and that
//! table's section, under 5 % of the object, counted as ranged bytes read.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::atomic::{AtomicU64, Ordering};

use backup_core::postgres::{RestoreOptions, TableFilter};
use backup_core::{BackupReader, ObjectSource};
use bytes::Bytes;
use integration_tests::*;

/// An in-memory object that counts the bytes of every range asked for.
struct CountingSource {
    object: Bytes,
    bytes_read: AtomicU64,
}

impl ObjectSource for CountingSource {
    type Reader = std::io::Cursor<Bytes>;

    fn size(&self) -> u64 {
        self.object.len() as u64
    }

    async fn read_range(&self, offset: u64, length: u64) -> std::io::Result<Self::Reader> {
        self.bytes_read.fetch_add(length, Ordering::Relaxed);
        self.object.read_range(offset, length).await
    }
}

#[tokio::test]
async fn restoring_one_small_table_reads_under_five_percent_of_the_backup() {
    // Given a backup of the car-wash database with 20,000 bookings
    let source = TestDatabase::create("partial_reads_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 20_000).await;
    let (object, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let counting = CountingSource {
        object,
        bytes_read: AtomicU64::new(0),
    };

    // When only the Service table is restored into an empty database
    let target = TestDatabase::create("partial_reads_dst").await;
    let reader = BackupReader::open(&counting, &test_keyring()).await.unwrap();
    let options = RestoreOptions {
        tables: vec!["Service".into()],
        ..RestoreOptions::default()
    };
    let report = backup_core::postgres::restore_backup(
        &reader,
        &mut target.client().await,
        &options,
        &backup_core::progress::Silent,
    )
    .await
    .unwrap();

    // Then Service is back whole, and under 5 % of the object was read
    assert_eq!(report.tables.len(), 1);
    let services: i64 = source_client
        .query_one("SELECT count(*) FROM \"Service\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(report.tables[0].rows, services as u64);
    let read = counting.bytes_read.load(Ordering::Relaxed);
    let size = counting.object.len() as u64;
    assert!(read * 20 < size, "read {read} of {size} bytes");
}
