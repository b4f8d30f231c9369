//! Retention, verification, listing and audit of change segments (issue
//! #29 item 6; docs/PITR.md), against the private PostgreSQL 15 cluster
//! with `wal_level = logical` (`infra/pg-logical.sh`, port 54400) and real
//! storage: a local folder, and S3 (moto's server) for the listing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use backup_core::changes::{self, CaptureOutcome, CaptureRequest, Lsn, PitrNames, SegmentMetadata};
use backup_core::metadata::{Trigger, VerificationStatus};
use backup_core::metrics::MetricsSink;
use backup_core::operations::{
    self, AuditReportRequest, CreateRequest, PruneRequest, Services, VerifyChangesRequest,
};
use backup_core::retention::RetentionPolicy;
use backup_core::storage::{
    BackupStore, LocalStore, MultipartSettings, S3Settings, S3Store, S3WriteOptions, SharedStore,
};
use backup_core::{BackupMetadata, BackupRequest, ContainerOptions};
use bytes::Bytes;
use integration_tests::pitr::{InterruptedCaptureStore, PitrDatabase, pitr_services};
use integration_tests::{s3_test_bucket, test_keyring};
use tokio_postgres::Client;

/// A database under capture (Booking and Service), with a slot of its own.
struct Source {
    pitr: PitrDatabase,
    client: Client,
}

impl Source {
    async fn create(label: &str) -> Self {
        let pitr = PitrDatabase::create(label).await;
        let client = pitr.client().await;
        client
            .batch_execute(
                "CREATE TABLE \"Booking\" (id serial PRIMARY KEY, note text);
                 CREATE TABLE \"Service\" (id int PRIMARY KEY, name text);",
            )
            .await
            .unwrap();
        changes::enable_pitr(pitr.url(), &pitr.names, &[]).await.unwrap();
        Self { pitr, client }
    }

    /// `n` single-row transactions into Booking.
    async fn commit(&self, n: usize) {
        for _ in 0..n {
            self.client
                .batch_execute("INSERT INTO \"Booking\" (note) VALUES ('x')")
                .await
                .unwrap();
        }
    }

    async fn capture(&self, store: &dyn BackupStore) -> SegmentMetadata {
        let request = CaptureRequest::new(self.pitr.database.url.clone(), self.pitr.names.clone());
        match changes::capture_changes(store, &test_keyring(), &request)
            .await
            .unwrap()
        {
            CaptureOutcome::Captured { segment, .. } => *segment,
            CaptureOutcome::NoChanges { .. } => panic!("nothing was captured"),
        }
    }

    /// A capture killed after its segment and document are stored and
    /// before the slot advances: the next run repeats its transactions.
    async fn capture_killed(&self, store: SharedStore) {
        let killing = InterruptedCaptureStore::new(store);
        killing.kill_next_capture();
        let request = CaptureRequest::new(self.pitr.database.url.clone(), self.pitr.names.clone());
        assert!(
            changes::capture_changes(&killing, &test_keyring(), &request)
                .await
                .is_err()
        );
    }

    async fn base_backup(&self, services: &Services) -> BackupMetadata {
        let request = CreateRequest {
            database_url: self.pitr.database.url.clone(),
            tables: backup_core::request::TableList::all(),
            request: BackupRequest {
                trigger: Trigger::Manual,
                reason: None,
                requested_by: None,
            },
            accepted_loss: Default::default(),
            container: ContainerOptions::default(),
        };
        let metadata = operations::create_backup(services, &request).await.unwrap();
        assert!(metadata.change_stream.is_some(), "the base records its position");
        metadata
    }
}

fn services(store: SharedStore, names: &PitrNames, keyring: bool) -> Services {
    pitr_services(store, names, keyring, MetricsSink::Disabled)
}

async fn delete_segment(store: &dyn BackupStore, segment: &SegmentMetadata) {
    store.delete(&segment.id.metadata_key()).await.unwrap();
    store.delete(&segment.id.object_key()).await.unwrap();
}

/// Three captures, listed in LSN order with their facts; then the middle
/// one removed, and the gap named by its LSN range.
async fn list_changes_on(store: SharedStore) {
    // Given three captures of 2, 3 and 4 transactions
    let source = Source::create("retain_list").await;
    let mut captured = Vec::new();
    for n in [2, 3, 4] {
        source.commit(n).await;
        captured.push(source.capture(store.as_ref()).await);
    }

    // When the segments are listed
    let listing = changes::list_chain(store.as_ref(), Some(&test_keyring()))
        .await
        .unwrap();

    // Then they come in LSN order, each starting where the one before ended,
    // with their commit times, counts, size and tables, and no gap
    let ids: Vec<&str> = listing.segments.iter().map(|s| s.id.as_str()).collect();
    let expected: Vec<String> = captured.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, expected);
    assert!(listing.gaps.is_empty(), "{:?}", listing.gaps);
    for (position, (listed, segment)) in listing.segments.iter().zip(&captured).enumerate() {
        assert_eq!(listed.transactions, [2, 3, 4][position]);
        assert_eq!(listed.changes, [2, 3, 4][position]);
        assert_eq!(listed.start_lsn, Some(segment.start_lsn));
        assert_eq!(listed.end_lsn, Some(segment.end_lsn));
        // (documents keep times to the millisecond)
        assert_eq!(
            listed.first_commit_time.map(|t| t.timestamp_millis()),
            Some(segment.first_commit_time.timestamp_millis())
        );
        assert!(listed.first_commit_time <= listed.last_commit_time);
        assert!(listed.size_bytes > 0);
        assert_eq!(listed.tables, vec!["public.Booking"]);
        assert_eq!(
            listed.document,
            backup_core::changes::chain::DocumentIntegrity::Authentic
        );
        assert!(!listed.repeat);
        if position > 0 {
            assert_eq!(listed.start_lsn, Some(captured[position - 1].end_lsn));
        }
    }

    // When the middle segment is lost
    delete_segment(store.as_ref(), &captured[1]).await;
    let listing = changes::list_chain(store.as_ref(), Some(&test_keyring()))
        .await
        .unwrap();

    // Then the gap is named with its LSN range and the segments around it
    assert_eq!(listing.segments.len(), 2);
    assert_eq!(listing.gaps.len(), 1, "{:?}", listing.gaps);
    let gap = &listing.gaps[0];
    assert_eq!((gap.from, gap.to), (captured[0].end_lsn, captured[2].start_lsn));
    assert_eq!(gap.after.as_ref(), Some(&captured[0].id));
    assert_eq!(gap.before, captured[2].id);
    // And the JSON (`list --changes --json`) says the same
    let json = serde_json::to_value(&listing).unwrap();
    assert_eq!(json["gaps"][0]["from"], captured[0].end_lsn.to_string());
    assert_eq!(json["gaps"][0]["to"], captured[2].start_lsn.to_string());
    assert_eq!(json["segments"][1]["transactions"], 4);

    // And without the key the listing still works, marked unchecked
    let unchecked = changes::list_chain(store.as_ref(), None).await.unwrap();
    assert_eq!(unchecked.segments.len(), 2);
    assert!(
        unchecked
            .segments
            .iter()
            .all(|s| s.document == backup_core::changes::chain::DocumentIntegrity::Unchecked)
    );
}

#[tokio::test]
async fn list_changes_on_local_disk_shows_segments_in_lsn_order_and_marks_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    list_changes_on(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test]
async fn list_changes_on_s3_shows_segments_in_lsn_order_and_marks_a_gap() {
    let (client, bucket) = s3_test_bucket("retain-list", false).await;
    let store = S3Store::with_client(
        client,
        S3Settings {
            bucket,
            prefix: "carwash".into(),
            force_path_style: Some(true),
            write: S3WriteOptions::default(),
            multipart: MultipartSettings::default(),
        },
    );
    list_changes_on(Arc::new(store)).await;
}

#[tokio::test]
async fn verify_changes_passes_a_repeated_capture_and_names_a_tampered_and_a_missing_segment() {
    // Given a segment, a base backup, a capture killed before it advanced
    // the slot, the capture that repeats it, and one more segment
    let source = Source::create("retain_verify").await;
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(LocalStore::new(dir.path()));
    let services = services(store.clone(), &source.pitr.names, true);
    source.commit(2).await;
    let first = source.capture(store.as_ref()).await;
    let base = source.base_backup(&services).await;
    source.commit(3).await;
    source.capture_killed(store.clone()).await;
    let repeat = source.capture(store.as_ref()).await;
    source.commit(2).await;
    let last = source.capture(store.as_ref()).await;
    let listing = changes::list_chain(store.as_ref(), Some(&test_keyring()))
        .await
        .unwrap();
    assert_eq!(listing.segments.len(), 4, "{listing:?}");
    assert!(listing.segments.iter().any(|s| s.repeat));

    // When the changes are verified
    let report = operations::verify_changes(&services, &VerifyChangesRequest::default())
        .await
        .unwrap();

    // Then they pass: every segment read through, the repeat is not a gap,
    // and the base's chain is covered
    assert_eq!(report.status, VerificationStatus::Passed, "{report:#?}");
    assert_eq!((report.segments, report.segments_read, report.repeats), (4, 4, 1));
    assert_eq!(report.transactions, 2 + 3 + 3 + 2);
    assert!(report.gaps.is_empty());
    assert_eq!(report.bases.len(), 1);
    assert!(report.bases[0].covered);
    assert_eq!(
        report.bases[0].start_lsn,
        base.change_stream.as_ref().unwrap().start_lsn
    );
    assert_eq!(base.change_stream.as_ref().unwrap().start_lsn, first.end_lsn);

    // When one byte of the last segment's object is changed
    let object = dir.path().join(last.id.object_key());
    let original = std::fs::read(&object).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(&object, &damaged).unwrap();
    let report = operations::verify_changes(&services, &VerifyChangesRequest::default())
        .await
        .unwrap();

    // Then verification fails naming that segment, and the base's chain
    // as needing it
    assert_eq!(report.status, VerificationStatus::Failed);
    assert_eq!(report.failures.len(), 1, "{report:#?}");
    assert_eq!(report.failures[0].segment, last.id.to_string());
    assert!(report.failures[0].error.contains("SHA-256"), "{report:#?}");
    assert!(!report.bases[0].covered);
    assert!(
        report.bases[0]
            .error
            .as_deref()
            .unwrap()
            .contains(&format!("damaged segment {}", last.id))
    );
    // And the new segment's own check (the S3 event's) fails it too
    let one = operations::verify_changes(
        &services,
        &VerifyChangesRequest {
            segment: Some(last.id.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(one.status, VerificationStatus::Failed);
    assert!(one.error.as_deref().unwrap().contains(last.id.as_str()));

    // When the document is altered instead (its bytes put back)
    std::fs::write(&object, &original).unwrap();
    let document = dir.path().join(last.id.metadata_key());
    let text = std::fs::read_to_string(&document).unwrap();
    let mut altered: serde_json::Value = serde_json::from_str(&text).unwrap();
    altered["changes"] = serde_json::json!(20);
    std::fs::write(&document, serde_json::to_vec(&altered).unwrap()).unwrap();
    let report = operations::verify_changes(&services, &VerifyChangesRequest::default())
        .await
        .unwrap();
    // Then it fails its MAC, named
    assert_eq!(report.status, VerificationStatus::Failed, "{text}");
    assert!(report.failures[0].error.contains("fails its MAC"), "{report:#?}");
    std::fs::write(&document, &text).unwrap();

    // When the segment after the base (and its repeat) is deleted
    let killed = listing
        .segments
        .iter()
        .find(|s| {
            s.id != first.id.to_string() && s.id != repeat.id.to_string() && s.id != last.id.to_string()
        })
        .unwrap()
        .id
        .clone();
    delete_segment(store.as_ref(), &repeat).await;
    store.delete(&format!("changes/{killed}.json")).await.unwrap();
    store.delete(&format!("changes/{killed}.segment")).await.unwrap();
    let report = operations::verify_changes(&services, &VerifyChangesRequest::default())
        .await
        .unwrap();

    // Then the gap is named by its LSN range, and the base's chain is broken there
    assert_eq!(report.status, VerificationStatus::Failed);
    assert_eq!(report.gaps.len(), 1);
    let error = report.error.clone().unwrap();
    let range = format!("from LSN {} to {}", first.end_lsn, last.start_lsn);
    assert!(error.contains(&range), "{error}");
    assert!(!report.bases[0].covered);
    assert!(report.bases[0].error.as_deref().unwrap().contains(&range));
    // And the last segment's own check names the gap before it
    let one = operations::verify_changes(
        &services,
        &VerifyChangesRequest {
            segment: Some(last.id.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(one.status, VerificationStatus::Failed);
    assert!(one.error.as_deref().unwrap().contains(&range), "{one:#?}");
}

#[tokio::test]
async fn prune_deletes_only_the_segments_no_retained_base_backup_needs() {
    // Given a segment, base backup A, a segment, base backup B, a segment,
    // and a segment object whose document never arrived
    let source = Source::create("retain_prune").await;
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(LocalStore::new(dir.path()));
    let services = services(store.clone(), &source.pitr.names, true);
    source.commit(2).await;
    let before_a = source.capture(store.as_ref()).await;
    let base_a = source.base_backup(&services).await;
    source.commit(2).await;
    let between = source.capture(store.as_ref()).await;
    let base_b = source.base_backup(&services).await;
    source.commit(2).await;
    let after_b = source.capture(store.as_ref()).await;
    let orphan = "changes/00000000000000AA-1.segment";
    store
        .put(orphan, Bytes::from_static(b"a segment whose document never came"))
        .await
        .unwrap();
    // And a prune 40 days on, with 30 days' retention and one backup kept:
    // A goes, B stays
    let request = |dry_run| PruneRequest {
        policy: RetentionPolicy {
            retention_days: 30,
            keep_newest: 1,
            hourly_retention_hours: 48,
        },
        dry_run,
        now: chrono::Utc::now() + chrono::Duration::days(40),
        orphan_grace: chrono::Duration::days(1),
    };

    // When it is a dry run
    let planned = operations::prune_backups(&services, &request(true))
        .await
        .unwrap();

    // Then it shows the segments before B going, the one after B staying,
    // and deletes nothing
    let ids = |decisions: &[backup_core::retention::SegmentDecision]| {
        decisions.iter().map(|d| d.segment_id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(planned.deleted.len(), 1);
    assert_eq!(planned.deleted[0].backup_id, base_a.id);
    assert_eq!(
        ids(&planned.segments_deleted),
        vec![before_a.id.to_string(), between.id.to_string()]
    );
    assert_eq!(ids(&planned.segments_kept), vec![after_b.id.to_string()]);
    assert!(planned.segments_kept[0].reason.contains(&base_b.id.to_string()));
    assert!(planned.orphans_deleted.contains(&orphan.to_owned()));
    for segment in [&before_a, &between, &after_b] {
        assert!(dir.path().join(segment.id.object_key()).exists());
    }

    // When it runs
    let pruned = operations::prune_backups(&services, &request(false))
        .await
        .unwrap();

    // Then exactly those are gone, document and object, and the orphan too
    assert!(pruned.failures.is_empty(), "{:?}", pruned.failures);
    assert_eq!(ids(&pruned.segments_deleted), ids(&planned.segments_deleted));
    for segment in [&before_a, &between] {
        assert!(!dir.path().join(segment.id.object_key()).exists());
        assert!(!dir.path().join(segment.id.metadata_key()).exists());
    }
    assert!(dir.path().join(after_b.id.object_key()).exists());
    assert!(!dir.path().join(orphan).exists());
    // And the chain B needs still verifies whole
    let report = operations::verify_changes(&services, &VerifyChangesRequest::default())
        .await
        .unwrap();
    assert_eq!(report.status, VerificationStatus::Passed, "{report:#?}");
    assert_eq!(report.bases.len(), 1);
    assert!(report.bases[0].covered);

    // When B is the only base and a new segment follows, a prune without
    // the key (as the prune function runs) deletes nothing B needs
    source.commit(1).await;
    source.capture(store.as_ref()).await;
    let keyless = services_without_key(store.clone(), &source.pitr.names);
    let again = operations::prune_backups(&keyless, &request(false))
        .await
        .unwrap();
    assert!(again.segments_deleted.is_empty(), "{:?}", again.segments_deleted);
    assert_eq!(again.segments_kept.len(), 2);
    assert_eq!(base_b.change_stream.as_ref().unwrap().start_lsn, between.end_lsn);
}

fn services_without_key(store: SharedStore, names: &PitrNames) -> Services {
    services(store, names, false)
}

#[tokio::test]
async fn the_audit_report_gives_the_achieved_rpo_per_day_and_the_gaps() {
    // Given three captures, the middle one lost
    let source = Source::create("retain_audit").await;
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(LocalStore::new(dir.path()));
    let services = services(store.clone(), &source.pitr.names, true);
    let started = chrono::Utc::now();
    let mut captured = Vec::new();
    for n in [1, 2, 3] {
        source.commit(n).await;
        captured.push(source.capture(store.as_ref()).await);
    }
    let finished = chrono::Utc::now();
    delete_segment(store.as_ref(), &captured[1]).await;

    // When the audit report of today is built
    let today = started.date_naive();
    let request = AuditReportRequest {
        from: today.and_hms_opt(0, 0, 0).unwrap().and_utc(),
        to: today.and_hms_opt(0, 0, 0).unwrap().and_utc() + chrono::Duration::days(1),
        rpo: chrono::Duration::hours(1),
        policy: RetentionPolicy::default(),
        now: finished + chrono::Duration::seconds(1),
    };
    let report = operations::build_audit_report(&services, &request).await.unwrap();

    // Then it gives today's achieved RPO: the longest a commit waited to be
    // stored, no longer than the test took (stored times are whole seconds)
    let changes = report.change_capture.clone().expect("a change capture section");
    assert_eq!(changes.segments, 2);
    assert_eq!(changes.days.len(), 1);
    let day = &changes.days[0];
    assert_eq!(day.day, today);
    assert_eq!((day.segments, day.transactions, day.changes), (2, 4, 4));
    let longest = (finished - started).num_seconds() + 1;
    assert!(
        (0..=longest).contains(&day.achieved_rpo_seconds),
        "{} s, the test took {longest} s",
        day.achieved_rpo_seconds
    );
    // And the gap, by its LSN range
    assert_eq!(changes.gaps.len(), 1);
    let range = format!("from LSN {} to {}", captured[0].end_lsn, captured[2].start_lsn);
    assert!(changes.gaps[0].to_string().contains(&range));
    // And the Markdown has both, in the report's own format
    let markdown = report.to_markdown();
    assert!(
        markdown.contains("## Change capture (point-in-time recovery)"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!(
            "| {today} | 2 | 4 | 4 | {} s |",
            day.achieved_rpo_seconds
        )),
        "{markdown}"
    );
    assert!(markdown.contains("Gaps in the chain: **1**"), "{markdown}");
    assert!(markdown.contains(&range), "{markdown}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["changeCapture"]["days"][0]["segments"], 2);
    let _: Lsn = json["changeCapture"]["gaps"][0]["from"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
}
