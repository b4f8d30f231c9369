//! The restore into new tables over several connections: what comes back,
//! what the erasure ledger removes, and what a failed restore leaves (nothing
//! it created).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use backup_core::erasure::Erasure;
use backup_core::postgres::restore::LoadMode;
use backup_core::postgres::{PostgresError, QualifiedName, RestoreOptions, TableFilter};
use integration_tests::*;
use tokio_postgres::Client;

async fn user_objects(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relkind::text || ' ' || c.relname::text FROM pg_class c \
             WHERE c.relnamespace = 'public'::regnamespace \
             UNION ALL SELECT 'type ' || t.typname::text FROM pg_type t \
             WHERE t.typnamespace = 'public'::regnamespace AND t.typtype = 'e' \
             UNION ALL SELECT 'function ' || p.proname::text FROM pg_proc p \
             WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Restores `backup` into `target` over `client` and one more connection.
async fn restore_over_two(
    backup: &bytes::Bytes,
    target: &TestDatabase,
    client: &mut Client,
) -> Result<backup_core::postgres::RestoreReport, PostgresError> {
    restore_from_memory_over(
        backup,
        client,
        vec![target.client().await],
        &RestoreOptions::default(),
    )
    .await
}

/// The car-wash database with `bookings` bookings, and its backup.
async fn backed_up_carwash(label: &str, bookings: u32) -> (TestDatabase, Client, bytes::Bytes) {
    let source = TestDatabase::create(label).await;
    let mut client = source.client().await;
    load_carwash(&client, bookings).await;
    let (backup, _, _) = try_backup_to_memory(&mut client, &TableFilter::default())
        .await
        .unwrap();
    (source, client, backup)
}

#[tokio::test]
async fn a_restore_into_an_empty_database_loads_over_two_connections() {
    // Given the car-wash database backed up over two connections
    let source = TestDatabase::create("nt_src").await;
    let mut source_client = source.client().await;
    load_carwash(&source_client, 3_000).await;
    let (backup, _, _) = try_backup_with_helpers(
        &mut source_client,
        vec![source.client().await],
        &TableFilter::default(),
    )
    .await
    .unwrap();

    // When it is restored into an empty database over two connections
    let target = TestDatabase::create("nt_dst").await;
    let mut target_client = target.client().await;
    let report = restore_over_two(&backup, &target, &mut target_client)
        .await
        .unwrap();

    // Then it took the new-tables path, and every table is back
    assert_eq!(report.mode, LoadMode::NewTables { connections: 2 });
    assert!(report.tables.iter().all(|t| t.created));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(
        table_digests(&target_client).await,
        table_digests(&source_client).await
    );
    // with every constraint validated, and the same tables, types and functions
    let definitions = "SELECT conrelid::regclass::text || ' ' || conname::text || ' ' || convalidated::text \
                       || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                       WHERE connamespace = 'public'::regnamespace ORDER BY 1";
    let of = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    assert_eq!(
        of(target_client.query(definitions, &[]).await.unwrap()),
        of(source_client.query(definitions, &[]).await.unwrap())
    );
    assert_eq!(
        user_objects(&target_client).await,
        user_objects(&source_client).await
    );
    // and the rows were written frozen (PostgreSQL 14 and later mark such
    // pages all-visible, and the index builds record the count), so the
    // first reads after the restore do not rewrite every page
    let server: i32 = target_client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    if server >= 140_000 {
        let pages = target_client
            .query_one(
                "SELECT relpages, relallvisible FROM pg_class WHERE oid = '\"Booking\"'::regclass",
                &[],
            )
            .await
            .unwrap();
        let (pages, all_visible): (i32, i32) = (pages.get(0), pages.get(1));
        assert!(
            pages > 0 && all_visible == pages,
            "{all_visible} of {pages} pages all-visible"
        );
    }
}

#[tokio::test]
async fn a_restore_that_must_apply_an_erasure_stays_one_transaction_so_erased_rows_never_show() {
    // Given a backup of the car-wash database
    let (_source, source_client, backup) = backed_up_carwash("nter_src", 1_000).await;
    // and a ledger erasing a booking that has e-mails (they cascade away with it)
    let booking: i32 = source_client
        .query_one(r#"SELECT min("bookingId") FROM "EmailNotification""#, &[])
        .await
        .unwrap()
        .get(0);
    let erasure = Erasure {
        id: "erasure-1795658400000-0000beef".into(),
        time: chrono::Utc::now(),
        table: QualifiedName::new("public", "Booking"),
        key: BTreeMap::from([("id".to_owned(), booking.to_string())]),
    };

    // When it is restored into an empty database with a second connection offered
    let target = TestDatabase::create("nter_dst").await;
    let mut target_client = target.client().await;
    let options = RestoreOptions {
        erasures: vec![erasure],
        ..RestoreOptions::default()
    };
    let report = restore_from_memory_over(&backup, &mut target_client, vec![target.client().await], &options)
        .await
        .unwrap();

    // Then the load and the erasure were one transaction (never committed apart)
    assert_eq!(report.mode, LoadMode::ReplicationRole);
    assert_eq!(report.erased.len(), 1);
    assert_eq!(report.erased[0].rows, 1);
    // and the booking and its e-mails are gone, the rest is the source's
    source_client
        .execute(r#"DELETE FROM "Booking" WHERE id = $1"#, &[&booking])
        .await
        .unwrap();
    assert_eq!(
        table_digests(&target_client).await,
        table_digests(&source_client).await
    );
}

#[tokio::test]
async fn a_failed_restore_into_new_tables_removes_what_it_created_and_nothing_else() {
    // Given a backup of the car-wash database
    let (_source, source_client, backup) = backed_up_carwash("ntf_src", 500).await;
    // and a target that already has its own "BookingStatus" type, which
    // knows the column's default but not the other statuses of the data
    let target = TestDatabase::create("ntf_dst").await;
    let mut target_client = target.client().await;
    target_client
        .batch_execute(r#"CREATE TYPE "BookingStatus" AS ENUM ('PENDING')"#)
        .await
        .unwrap();
    let before = user_objects(&target_client).await;

    // When it is restored over two connections (the tables are created and
    // committed, then the bookings cannot load)
    let error = restore_over_two(&backup, &target, &mut target_client)
        .await
        .unwrap_err();

    // Then the restore fails on the bookings' data
    assert!(
        matches!(&error, PostgresError::TableQuery { table, .. } if table == "Booking"),
        "{error}"
    );
    assert_eq!(
        error.database_error().map(|e| e.code().clone()),
        Some(backup_core::postgres::SqlState::INVALID_TEXT_REPRESENTATION),
        "{error}"
    );
    // and the target holds exactly what it held before: no table, type or
    // function of the backup, and its own type untouched
    assert_eq!(user_objects(&target_client).await, before);

    // When the conflicting type is dropped and the restore runs again
    target_client
        .batch_execute(r#"DROP TYPE "BookingStatus""#)
        .await
        .unwrap();
    let report = restore_over_two(&backup, &target, &mut target_client)
        .await
        .unwrap();

    // Then nothing left over from the failed attempt is in its way
    assert_eq!(report.mode, LoadMode::NewTables { connections: 2 });
    assert_eq!(
        table_digests(&target_client).await,
        table_digests(&source_client).await
    );
}

#[tokio::test]
async fn a_failed_restore_interrupts_a_long_step_on_the_other_connection_instead_of_waiting_for_it() {
    // Given a backup of two tables: `visit`, whose last row holds a mood the
    // target's own type lacks, and `slow`, indexed on a function
    let source = TestDatabase::create("ntc_src").await;
    let mut source_client = source.client().await;
    source_client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('calm', 'angry');
             CREATE FUNCTION slowly(x int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT x';
             CREATE TABLE slow (x int);
             CREATE INDEX slow_slowly ON slow (slowly(x));
             INSERT INTO slow SELECT generate_series(1, 400);
             CREATE TABLE visit (id int, feeling mood, note text);
             INSERT INTO visit SELECT i, 'calm', repeat(md5(i::text), 4) FROM generate_series(1, 200000) AS i;
             INSERT INTO visit VALUES (200001, 'angry', 'the last one');",
        )
        .await
        .unwrap();
    let (backup, _, _) = try_backup_to_memory(&mut source_client, &TableFilter::default())
        .await
        .unwrap();
    // and a target with its own `mood` (calm only), and its own `slowly`,
    // which takes 50 ms a row: building `slow`'s index there takes 20 s
    let target = TestDatabase::create("ntc_dst").await;
    let mut target_client = target.client().await;
    target_client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('calm');
             CREATE FUNCTION slowly(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql
               AS 'BEGIN PERFORM pg_sleep(0.05); RETURN x; END';",
        )
        .await
        .unwrap();
    let before = user_objects(&target_client).await;

    // When it is restored over two connections: one loads `visit` (the
    // larger) while the other loads `slow` and starts its index, then the
    // last visit fails to load
    let started = std::time::Instant::now();
    let error = restore_over_two(&backup, &target, &mut target_client)
        .await
        .unwrap_err();
    let took = started.elapsed();

    // Then the restore fails on the visits
    assert!(
        matches!(&error, PostgresError::TableQuery { table, .. } if table == "visit"),
        "{error}"
    );
    // without waiting out the index build, which was interrupted
    assert!(
        took < std::time::Duration::from_secs(10),
        "the failed restore took {took:?}"
    );
    // and the target holds what it held before, its own function included
    assert_eq!(user_objects(&target_client).await, before);
    let busy: i64 = target_client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(busy, 0, "a restore statement is still running");
}

#[tokio::test]
async fn a_restore_over_existing_tables_stays_one_transaction_even_with_more_connections() {
    // Given a backup of the car-wash database, and a target holding its tables already
    let (_source, source_client, backup) = backed_up_carwash("nte_src", 300).await;
    let target = TestDatabase::create("nte_dst").await;
    let mut target_client = target.client().await;
    load_carwash(&target_client, 100).await;

    // When it is restored with a second connection offered
    let report = restore_from_memory_over(
        &backup,
        &mut target_client,
        vec![target.client().await],
        &confirmed(&target, &[]),
    )
    .await
    .unwrap();

    // Then the all-or-nothing path replaced the data
    assert_eq!(report.mode, LoadMode::ReplicationRole);
    assert!(report.tables.iter().all(|t| !t.created));
    assert_eq!(
        table_digests(&target_client).await,
        table_digests(&source_client).await
    );
}
