//! The PostgreSQL engine against the real server: consistent export,
//! exact restore, partial restore, and failures that change nothing.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use backup_core::postgres::restore::LoadMode;
use backup_core::postgres::{PostgresError, RestoreOptions, TableFilter};
use backup_core::{BackupReader, ContainerError, ObjectSource};
use bytes::Bytes;
use integration_tests::*;
use tokio::io::{AsyncRead, ReadBuf};

fn all_tables() -> RestoreOptions {
    RestoreOptions::default()
}

async fn copy_of(source_backup: &Bytes, label: &str) -> TestDatabase {
    let copy = TestDatabase::create(label).await;
    restore_from_memory(source_backup, &mut copy.client().await, &all_tables())
        .await
        .unwrap();
    copy
}

#[tokio::test]
async fn the_fixture_round_trips_into_an_empty_database() {
    // Given the car-wash database with generated data
    let source = TestDatabase::create("rt_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 3_000).await;
    let before = table_digests(&source_client).await;

    // When it is backed up and restored into an empty database
    let (backup, report, summary) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = TestDatabase::create("rt_dst").await;
    let mut target_client = target.client().await;
    let restored = restore_from_memory(&backup, &mut target_client, &all_tables())
        .await
        .unwrap();

    // Then every table is identical, row for row
    assert_eq!(table_digests(&target_client).await, before);
    assert_eq!(
        report.tables.len(),
        10,
        "nine application tables plus _prisma_migrations"
    );
    assert_eq!(restored.record_count(), report.record_count());
    assert!(restored.tables.iter().all(|t| t.created));
    assert_eq!(restored.mode, LoadMode::ReplicationRole);
    assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
    assert_eq!(summary.sections.len(), 11, "schema + ten tables");
    let booking = report.tables.iter().find(|t| t.name.name == "Booking").unwrap();
    assert_eq!(booking.rows, 3_000);

    // and the application's queries answer the same
    assert_eq!(
        run_named_queries(&target_client, "carwash-queries.sql").await,
        run_named_queries(&source_client, "carwash-queries.sql").await
    );

    // and sequences continue where the source's do
    for sequence in ["Booking_id_seq", "Service_id_seq", "EmailNotification_id_seq"] {
        let sql = format!("SELECT nextval('\"{sequence}\"')");
        let next_source: i64 = source_client.query_one(sql.as_str(), &[]).await.unwrap().get(0);
        let next_target: i64 = target_client.query_one(sql.as_str(), &[]).await.unwrap().get(0);
        assert_eq!(next_target, next_source, "{sequence}");
    }
    // and the restored constraints, indexes and trigger are in place
    let objects = "SELECT (SELECT count(*) FROM pg_constraint WHERE connamespace = 'public'::regnamespace), \
                   (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'), \
                   (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal)";
    let count = |row: tokio_postgres::Row| (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2));
    assert_eq!(
        count(target_client.query_one(objects, &[]).await.unwrap()),
        count(source_client.query_one(objects, &[]).await.unwrap())
    );
    let duplicate_email = target_client
        .execute(
            "INSERT INTO \"User\" (\"id\", \"email\", \"updatedAt\") SELECT 'dup', \"email\", now() FROM \"User\" LIMIT 1",
            &[],
        )
        .await;
    assert!(duplicate_email.is_err(), "unique index on User.email restored");
}

#[tokio::test]
async fn every_awkward_value_and_shape_survives() {
    // Given tables with every awkward value, identifier, type and shape
    let source = TestDatabase::create("awk_src").await;
    let mut source_client = source.client().await;
    source_client
        .batch_execute(&fixture("awkward.sql"))
        .await
        .unwrap();
    let before = table_digests(&source_client).await;

    // When backed up and restored into an empty database
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = TestDatabase::create("awk_dst").await;
    let mut target_client = target.client().await;
    let report = restore_from_memory(&backup, &mut target_client, &all_tables())
        .await
        .unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // Then every row of every table (and every partition) is identical
    assert_eq!(table_digests(&target_client).await, before);
    let partitions = "SELECT tableoid::regclass::text, count(*) FROM \"Measurement\" GROUP BY 1 ORDER BY 1";
    let rows = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, i64)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    assert_eq!(
        rows(target_client.query(partitions, &[]).await.unwrap()),
        rows(source_client.query(partitions, &[]).await.unwrap())
    );
    // generated columns are recomputed, identities and sequences continue
    for sql in [
        "INSERT INTO \"Odd Schema\".\"Weird \"\"Quoted\"\" Table\" (\"price\") VALUES (8) RETURNING \"id\"::text || ':' || \"price_with_tax\"::text",
        "INSERT INTO \"EdgeValues\" (\"flag\") VALUES (true) RETURNING \"id\"::text",
        "INSERT INTO \"EmptyTable\" (\"note\") VALUES ('x') RETURNING \"id\"::text",
        "SELECT nextval('\"standalone_counter\"')::text",
        "INSERT INTO \"Measurement\" (\"takenAt\", \"sensor\") VALUES ('2026-12-01', 'north') RETURNING \"id\"::text",
        "SELECT count(*)::text || '/' || sum(n)::text FROM \"SensorTotals\"",
        "SELECT string_agg(\"id\" || '=' || \"name\", ',' ORDER BY \"id\") FROM \"ChildWithParent\"",
    ] {
        let on_source: String = source_client.query_one(sql, &[]).await.unwrap().get(0);
        let on_target: String = target_client.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(on_target, on_source, "{sql}");
    }
    // domains and enums still constrain
    assert!(
        target_client
            .batch_execute(
                "INSERT INTO \"Odd Schema\".\"Weird \"\"Quoted\"\" Table\" (\"price\") VALUES (-1)"
            )
            .await
            .is_err()
    );
    assert!(target_client.batch_execute("INSERT INTO \"Odd Schema\".\"Weird \"\"Quoted\"\" Table\" (\"price\", \"mood\") VALUES (1, 'angry')").await.is_err());
}

#[tokio::test]
async fn a_backup_taken_during_writes_is_one_consistent_snapshot() {
    // Given a database where a writer keeps adding a user, then (in a later
    // transaction) a booking for that user
    let source = TestDatabase::create("snap_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 2_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, url) = (stop.clone(), written.clone(), source.url.clone());
        tokio::spawn(async move {
            let client = backup_core::postgres::connect(&url).await.unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let id = format!("writer-{i}");
                client
                    .execute(
                        "INSERT INTO \"User\" (\"id\", \"email\", \"updatedAt\") VALUES ($1, $1 || '@example.com', now())",
                        &[&id],
                    )
                    .await
                    .unwrap();
                client
                    .execute(
                        "INSERT INTO \"Booking\" (\"userId\", \"serviceId\", \"scheduledAt\", \"totalPrice\", \"updatedAt\") \
                         VALUES ($1, 1, now(), 9.90, now())",
                        &[&id],
                    )
                    .await
                    .unwrap();
                written.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // When a backup runs meanwhile, its first write to storage held back
    // until the writer has committed 20 more pairs inside its snapshot's
    // lifetime (however loaded the machine is)
    let written_at_start = written.load(Ordering::SeqCst);
    let gate = {
        let written = written.clone();
        Arc::new(move || written.load(Ordering::SeqCst) >= written_at_start + 20)
    };
    let (backup, report, _) = backup_gated(
        &mut source_client,
        &TableFilter::default(),
        Duration::from_millis(5),
        gate,
    )
    .await;
    let written_during = written.load(Ordering::SeqCst) - written_at_start;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(written_during >= 20, "{written_during} pairs during the backup");

    // Then the restored copy satisfies every foreign key (they are re-added
    // and validated) and holds exactly the snapshot's rows
    let target = TestDatabase::create("snap_dst").await;
    let mut target_client = target.client().await;
    let restored = restore_from_memory(&backup, &mut target_client, &all_tables())
        .await
        .unwrap();
    let count = |table: &str| {
        let client = &target_client;
        let sql = format!("SELECT count(*) FROM \"{table}\"");
        async move {
            client
                .query_one(sql.as_str(), &[])
                .await
                .unwrap()
                .get::<_, i64>(0) as u64
        }
    };
    let rows_in = |name: &str| report.tables.iter().find(|t| t.name.name == name).unwrap().rows;
    assert_eq!(count("User").await, rows_in("User"));
    assert_eq!(count("Booking").await, rows_in("Booking"));
    // A user committed just before the snapshot may still await its booking.
    let (writer_users, writer_bookings) = (rows_in("User") - 250, rows_in("Booking") - 2_000);
    assert!(
        writer_users - writer_bookings <= 1,
        "{writer_users} users, {writer_bookings} bookings"
    );
    let orphans: i64 = target_client
        .query_one("SELECT count(*) FROM \"Booking\" b LEFT JOIN \"User\" u ON u.\"id\" = b.\"userId\" WHERE u.\"id\" IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
    let source_bookings: i64 = source_client
        .query_one("SELECT count(*) FROM \"Booking\"", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        source_bookings as u64 > rows_in("Booking"),
        "later writes are not in the backup"
    );
    assert!(restored.tables.iter().any(|t| t.name.name == "Booking"));
}

#[tokio::test]
async fn a_partial_restore_replaces_only_the_chosen_tables() {
    // Given a backup, and a copy of the database that has since changed
    let source = TestDatabase::create("part_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 1_000).await;
    let at_backup = table_digests(&source_client).await;
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = copy_of(&backup, "part_dst").await;
    let mut target_client = target.client().await;
    target_client
        .batch_execute(
            "UPDATE \"Booking\" SET \"notes\" = 'changed after the backup' WHERE \"id\" % 3 = 0;
             DELETE FROM \"Booking\" WHERE \"id\" % 7 = 0;
             INSERT INTO \"User\" (\"id\", \"email\", \"updatedAt\") VALUES ('late', 'late@example.com', now());
             UPDATE \"Service\" SET \"price\" = \"price\" + 1;
             UPDATE \"Setting\" SET \"value\" = '\"changed\"' WHERE \"key\" = 'payments.currency';",
        )
        .await
        .unwrap();
    let changed = table_digests(&target_client).await;

    // When only Booking and User are restored, in place
    let report = restore_from_memory(
        &backup,
        &mut target_client,
        &confirmed(&target, &["Booking", "User"]),
    )
    .await
    .unwrap();

    // Then those two are back to the backup and every other table is untouched
    let after = table_digests(&target_client).await;
    assert_eq!(
        report
            .tables
            .iter()
            .map(|t| t.name.name.as_str())
            .collect::<Vec<_>>(),
        ["User", "Booking"]
    );
    assert!(report.tables.iter().all(|t| !t.created));
    for (table, digest) in &after {
        if table == "public.Booking" || table == "public.User" {
            assert_eq!(digest, &at_backup[table], "{table} restored");
        } else {
            assert_eq!(digest, &changed[table], "{table} untouched");
        }
    }
    let next: i64 = target_client
        .query_one("SELECT nextval('\"Booking_id_seq\"')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 1_001);
}

#[tokio::test]
async fn a_conflicting_row_mid_restore_leaves_the_target_unchanged() {
    // Given a copy whose Booking table is defined as in the backup, but
    // whose CHECK calls a function that now refuses some backed-up rows (a
    // table defined otherwise is refused before anything runs: see
    // cli/tests/interruption.rs)
    let source = TestDatabase::create("conf_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 2_000).await;
    source_client
        .batch_execute(
            "CREATE FUNCTION price_ok(price numeric) RETURNS boolean IMMUTABLE LANGUAGE sql AS 'SELECT true';
             ALTER TABLE \"Booking\" ADD CONSTRAINT \"cheap_only\" CHECK (price_ok(\"totalPrice\"));",
        )
        .await
        .unwrap();
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = copy_of(&backup, "conf_dst").await;
    let mut target_client = target.client().await;
    target_client
        .batch_execute(
            "DELETE FROM \"EmailNotification\"; DELETE FROM \"Booking\" WHERE \"totalPrice\" >= 100;
             CREATE OR REPLACE FUNCTION public.price_ok(price numeric) RETURNS boolean IMMUTABLE LANGUAGE sql
               AS 'SELECT price < 100';
             UPDATE \"User\" SET \"name\" = 'renamed';",
        )
        .await
        .unwrap();
    let before = table_digests(&target_client).await;

    // When a full in-place restore hits a conflicting row part-way through Booking
    let error = restore_from_memory(&backup, &mut target_client, &confirmed(&target, &[]))
        .await
        .unwrap_err();

    // Then it fails with the table named and nothing changed, User included
    assert!(
        matches!(&error, PostgresError::TableQuery { table, .. } if table == "Booking"),
        "{error}"
    );
    assert!(error.database_error().unwrap().message().contains("cheap_only"));
    assert_eq!(table_digests(&target_client).await, before);
}

/// An object source whose reads trickle, so a restore takes a while.
struct SlowSource(Bytes);

struct SlowReader {
    inner: std::io::Cursor<Bytes>,
    sleeping: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for SlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let sleep = self
            .sleeping
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleeping = None;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl ObjectSource for SlowSource {
    type Reader = SlowReader;

    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    async fn read_range(&self, offset: u64, length: u64) -> std::io::Result<SlowReader> {
        Ok(SlowReader {
            inner: self.0.read_range(offset, length).await?,
            sleeping: None,
        })
    }
}

#[tokio::test]
async fn a_killed_connection_mid_restore_leaves_the_target_unchanged() {
    // Given a changed copy of a database and a slow-to-read backup of it
    let source = TestDatabase::create("kill_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 20_000).await;
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = copy_of(&backup, "kill_dst").await;
    let target_client = target.client().await;
    target_client
        .batch_execute("UPDATE \"Booking\" SET \"notes\" = 'kept'")
        .await
        .unwrap();
    let before = table_digests(&target_client).await;

    // When the restoring connection is killed while COPY is loading
    let mut restoring = target.client().await;
    let pid: i32 = restoring
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let slow = SlowSource(backup.clone());
    let options = confirmed(&target, &[]);
    let restore = async {
        let keyring = test_keyring();
        let reader = BackupReader::open(&slow, &keyring).await.unwrap();
        backup_core::postgres::restore_backup(
            &reader,
            &mut restoring,
            &options,
            &backup_core::progress::Silent,
        )
        .await
    };
    let killer = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the restore never reached COPY in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            let copying: bool = target_client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'COPY%FROM STDIN')",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            if copying {
                target_client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .unwrap();
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(restore, killer);

    // Then the restore reports the failure and the target is exactly as before
    assert!(result.is_err());
    // once the server has ended the killed backend (bounded wait)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let alive: bool = target_client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed backend never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(table_digests(&target_client).await, before);
}

#[tokio::test]
async fn a_tampered_backup_fails_mid_load_and_changes_nothing() {
    let source = TestDatabase::create("tamp_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 3_000).await;
    let (backup, _, summary) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = copy_of(&backup, "tamp_dst").await;
    let mut target_client = target.client().await;
    target_client
        .batch_execute("DELETE FROM \"Testimonial\"")
        .await
        .unwrap();
    let before = table_digests(&target_client).await;

    // A flipped byte near the end of the Booking section: earlier chunks load first
    let booking = summary.sections.iter().find(|s| s.name == "Booking").unwrap();
    let mut damaged = backup.to_vec();
    damaged[(booking.offset + booking.length - 100) as usize] ^= 0x20;
    let error = restore_from_memory(
        &Bytes::from(damaged),
        &mut target_client,
        &confirmed(&target, &[]),
    )
    .await
    .unwrap_err();

    assert!(
        matches!(error, PostgresError::Container(ContainerError::Integrity)),
        "{error}"
    );
    assert_eq!(table_digests(&target_client).await, before);
}

#[tokio::test]
async fn unknown_tables_and_unconfirmed_overwrites_are_refused_before_any_change() {
    let source = TestDatabase::create("ref_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 200).await;
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = copy_of(&backup, "ref_dst").await;
    let mut target_client = target.client().await;
    target_client
        .batch_execute("UPDATE \"User\" SET \"name\" = NULL")
        .await
        .unwrap();
    let before = table_digests(&target_client).await;

    let unknown = RestoreOptions {
        tables: vec!["Booking".into(), "Bookings".into()],
        confirm_database: Some(target.name.clone()),
        ..RestoreOptions::default()
    };
    let error = restore_from_memory(&backup, &mut target_client, &unknown)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PostgresError::UnknownTables { names, .. } if names == &["Bookings"]),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("tables available: _prisma_migrations, User, Service"),
        "{error}"
    );

    let unconfirmed = RestoreOptions {
        tables: vec!["User".into()],
        confirm_database: None,
        ..RestoreOptions::default()
    };
    let error = restore_from_memory(&backup, &mut target_client, &unconfirmed)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PostgresError::ConfirmationRequired { .. }),
        "{error}"
    );

    let wrong_name = RestoreOptions {
        tables: vec!["User".into()],
        confirm_database: Some("postgres".into()),
        ..RestoreOptions::default()
    };
    let error = restore_from_memory(&backup, &mut target_client, &wrong_name)
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&target.name), "{error}");

    assert_eq!(table_digests(&target_client).await, before);
}

#[tokio::test]
async fn a_backup_of_chosen_tables_holds_only_them_and_restores_alone() {
    let source = TestDatabase::create("sub_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 300).await;
    let filter = TableFilter {
        include: vec!["Booking".into(), "User".into(), "Setting".into()],
        exclude: vec!["Setting".into()],
        schemas: vec![],
        ..TableFilter::default()
    };
    let (backup, report, _) = backup_to_memory(&mut source_client, &filter).await;
    let names: Vec<&str> = report.tables.iter().map(|t| t.name.name.as_str()).collect();
    assert_eq!(names, ["User", "Booking"]);

    let target = TestDatabase::create("sub_dst").await;
    let mut target_client = target.client().await;
    let restored = restore_from_memory(&backup, &mut target_client, &all_tables())
        .await
        .unwrap();
    assert_eq!(restored.record_count(), report.record_count());
    // Foreign keys to tables outside the backup are reported, not invented
    assert_eq!(restored.warnings.len(), 2, "{:?}", restored.warnings);
    assert!(
        restored
            .warnings
            .iter()
            .any(|w| w.contains("Booking_serviceId_fkey"))
    );
    let source_digests = table_digests(&source_client).await;
    let target_digests = table_digests(&target_client).await;
    assert_eq!(target_digests.len(), 2);
    for (table, digest) in target_digests {
        assert_eq!(digest, source_digests[&table], "{table}");
    }
}

#[tokio::test]
async fn a_role_without_replication_privileges_restores_with_live_constraints() {
    // Given a backup, and a target database owned by an ordinary role
    let source = TestDatabase::create("live_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 500).await;
    let at_backup = table_digests(&source_client).await;
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = TestDatabase::create_owned_by("live_dst", "pgbackup_test_owner").await;
    let mut target_client = target.client().await;

    // When that role restores everything into its empty database
    let report = restore_from_memory(&backup, &mut target_client, &all_tables())
        .await
        .unwrap();

    // Then the data is identical, loaded with foreign keys enforced live
    assert_eq!(report.mode, LoadMode::LiveConstraints);
    assert_eq!(table_digests(&target_client).await, at_backup);

    // A table other tables reference cannot be replaced alone without
    // touching them: refused, nothing changed
    target_client
        .batch_execute("UPDATE \"Booking\" SET \"notes\" = 'edited'")
        .await
        .unwrap();
    let edited = table_digests(&target_client).await;
    let error = restore_from_memory(&backup, &mut target_client, &confirmed(&target, &["Booking"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PostgresError::ForeignKeyViolation { table, .. } if table == "EmailNotification"),
        "{error}"
    );
    assert_eq!(table_digests(&target_client).await, edited);

    // but Booking together with the table that references it works, and
    // the user trigger on Booking is enabled again afterwards
    let report = restore_from_memory(
        &backup,
        &mut target_client,
        &confirmed(&target, &["Booking", "EmailNotification"]),
    )
    .await
    .unwrap();
    assert_eq!(report.mode, LoadMode::LiveConstraints);
    assert_eq!(table_digests(&target_client).await, at_backup);
    let enabled: String = target_client
        .query_one(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'Booking_touch_updated_at'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enabled, "O");
}

/// Rewrites a backup with its schema section changed by `edit` (table
/// sections copied as they are), as a backup from another server would be.
async fn with_edited_schema(backup: &Bytes, edit: impl Fn(&mut serde_json::Value)) -> Bytes {
    let keyring = test_keyring();
    let reader = BackupReader::open(backup, &keyring).await.unwrap();
    let mut stored = Vec::new();
    let mut writer = backup_core::ContainerWriter::create(
        &mut stored,
        &test_key(),
        "backup-1795658400000-0000beef",
        backup_core::ContainerOptions::default(),
    )
    .await
    .unwrap();
    for entry in reader.sections() {
        let mut section = reader.open_section(entry).await.unwrap();
        let mut data = Vec::new();
        while let Some(block) = section.next_block().await.unwrap() {
            data.extend_from_slice(&block);
        }
        if entry.kind == backup_core::SectionKind::Schema {
            let mut schema: serde_json::Value = serde_json::from_slice(&data).unwrap();
            edit(&mut schema);
            data = serde_json::to_vec(&schema).unwrap();
        }
        let mut out = writer
            .begin_section(entry.kind, entry.schema.as_deref(), &entry.name)
            .unwrap();
        out.write(&data).await.unwrap();
        out.finish(entry.rows).await.unwrap();
    }
    writer.finish().await.unwrap();
    Bytes::from(stored)
}

#[tokio::test]
async fn a_backup_from_a_newer_server_or_schema_format_is_refused_before_any_change() {
    let source = TestDatabase::create("ver_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 100).await;
    let (backup, _, _) = backup_to_memory(&mut source_client, &TableFilter::default()).await;
    let target = TestDatabase::create("ver_dst").await;
    let mut target_client = target.client().await;

    let from_the_future = with_edited_schema(&backup, |s| s["serverVersionNum"] = 990_001.into()).await;
    let error = restore_from_memory(&from_the_future, &mut target_client, &all_tables())
        .await
        .unwrap_err();
    assert!(
        matches!(error, PostgresError::IncompatibleServer { backup_major: 99, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("restore into PostgreSQL 99 or newer"));

    let next = backup_core::postgres::schema::SCHEMA_FORMAT_VERSION + 1;
    let newer_format = with_edited_schema(&backup, |s| s["formatVersion"] = next.into()).await;
    let error = restore_from_memory(&newer_format, &mut target_client, &all_tables())
        .await
        .unwrap_err();
    assert!(
        matches!(error, PostgresError::UnsupportedSchemaVersion { found, .. } if found == next),
        "{error}"
    );

    assert!(
        table_digests(&target_client).await.is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn a_cancelled_export_or_restore_leaves_the_connection_usable_and_outside_any_transaction() {
    // Given a database and one connection to it, shared as the Lambda shares one
    let source = TestDatabase::create("cancel_src").await;
    let mut client = source.client().await;
    load_carwash(&client, 2_000).await;
    let (backup, _, _) = backup_to_memory(&mut client, &TableFilter::default()).await;
    let before = table_digests(&client).await;

    // When an export through a slow sink is cancelled midway
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        backup_through(&mut client, &TableFilter::default(), Duration::from_millis(50)),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the export finished before it could be cancelled"
    );
    // Then the connection is back outside the snapshot transaction
    let isolation: String = client
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(isolation, "read committed", "still inside the export's snapshot");

    // When an in-place restore is cancelled while COPY is loading
    let options = confirmed(&source, &[]);
    let slow = SlowSource(backup);
    let cancelled = tokio::time::timeout(Duration::from_millis(500), async {
        let keyring = test_keyring();
        let reader = BackupReader::open(&slow, &keyring).await.unwrap();
        backup_core::postgres::restore_backup(&reader, &mut client, &options, &backup_core::progress::Silent)
            .await
    })
    .await;
    assert!(
        cancelled.is_err(),
        "the restore finished before it could be cancelled"
    );
    // Then the same connection answers (not "current transaction is
    // aborted"), sees the data as it was, and its own writes commit
    assert_eq!(table_digests(&client).await, before);
    client
        .execute(
            "INSERT INTO \"Holiday\" (\"date\", \"name\") VALUES ('2031-12-25', 'after cancel')",
            &[],
        )
        .await
        .unwrap();
    let other = source.client().await;
    let seen: i64 = other
        .query_one(
            "SELECT count(*) FROM \"Holiday\" WHERE \"name\" = 'after cancel'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1, "the write after the cancelled restore was not committed");
}
