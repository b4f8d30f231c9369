//! A deep verification stopped part-way (as at a Lambda deadline) still
//! drops its scratch database.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::Duration;

use backup_core::config::Settings;
use backup_core::metadata::{Trigger, VerificationDepth};
use backup_core::metrics::MetricsSink;
use backup_core::operations::{self, CreateRequest, Services, VerifyRequest};
use backup_core::repository::BackupSelector;
use backup_core::storage::LocalStore;
use backup_core::{BackupRequest, ContainerOptions};
use integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_deep_verification_drops_its_scratch_database() {
    // Given a backup of a database big enough that its restore takes a moment
    let database = TestDatabase::create("cancel_src").await;
    load_carwash(&database.client().await, 40_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::from_lookup(|_| None).unwrap();
    settings.keyring = Some(test_keyring());
    let services = Arc::new(Services::new(
        Arc::new(LocalStore::new(dir.path())),
        &settings,
        "test",
        MetricsSink::Disabled,
    ));
    let request = CreateRequest {
        database_url: database.url.clone(),
        tables: backup_core::request::TableList::all(),
        request: BackupRequest {
            trigger: Trigger::Manual,
            reason: None,
            requested_by: None,
        },
        accepted_loss: Default::default(),
        container: ContainerOptions::default(),
    };
    let metadata = operations::create_backup(&services, &request).await.unwrap();
    let pattern = format!("pgbackup_verify_{}%", metadata.id.to_string().replace('-', "_"));

    // When a deep verification is cancelled while its scratch database exists
    let verifying = {
        let services = services.clone();
        tokio::spawn(async move {
            let request = VerifyRequest {
                selector: BackupSelector::Id(metadata.id.clone()),
                depth: VerificationDepth::Deep,
                scratch_url: Some(admin_url()),
                checks: Vec::new(),
            };
            operations::verify_backup(&services, &request).await
        })
    };
    let admin = backup_core::postgres::connect(&admin_url()).await.unwrap();
    let scratch_count = async || -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
                &[&pattern],
            )
            .await
            .unwrap()
            .get(0)
    };
    let mut seen = false;
    for _ in 0..2_000 {
        if scratch_count().await > 0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(seen, "the scratch database never appeared");
    verifying.abort();
    assert!(verifying.await.unwrap_err().is_cancelled());

    // Then the scratch database is dropped shortly after
    let mut gone = false;
    for _ in 0..100 {
        if scratch_count().await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the scratch database was left behind");
}
